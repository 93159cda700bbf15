"""The run's record (`manifest.json`) and `cai status`'s reading of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai.errors import UserInputError
from cai.rounds.spec import DEFAULT_PIPELINE

MANIFEST = "manifest.json"


class RunManifest:
    """Per stage its status, key, config hash, outputs, timings and summary; saved atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / MANIFEST
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def update(self, name: str, **fields: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str), encoding="utf-8")
        tmp.replace(self.path)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        raise UserInputError(f"{run_dir}: no {MANIFEST}; not a cai run directory")
    return json.loads(path.read_text(encoding="utf-8"))


def run_status(run_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per stage of every round: name, status, seconds, output."""
    data = read_manifest(run_dir)
    rounds = int(data.get("rounds", 1))
    out = []
    for k in range(1, rounds + 1):
        for stage in pipeline_of(data, k):
            name = f"round-{k}/{stage}"
            rec = data["stages"].get(name, {})
            out.append({"stage": name, "status": rec.get("status", "pending"), "seconds": rec.get("seconds"),
                        "output": rec.get("output")})
    return out


def pipeline_of(manifest: dict[str, Any], k: int) -> list[str]:
    """Round k's stages as the run recorded them (``pipelines`` per round; older runs: one ``pipeline``)."""
    per_round = manifest.get("pipelines") or {}
    return list(per_round.get(str(k)) or manifest.get("pipeline") or DEFAULT_PIPELINE)


#: Version of the `cai status --json` contract; bumped when a key changes meaning or goes away.
STATUS_SCHEMA = 1


def status_json(run_dir: str | Path) -> dict[str, Any]:
    """`cai status RUN --json`: the stage table, ``final_policy`` and each round's metrics (stable keys)."""
    d = Path(run_dir)
    data = read_manifest(d)
    rounds = []
    for k in range(1, int(data.get("rounds", 1)) + 1):
        path = d / f"round-{k}" / "eval" / "metrics.json"
        rounds.append({"round": k, "metrics": json.loads(path.read_text(encoding="utf-8")) if path.exists() else None})
    final = data.get("final_policy")
    return {
        "schema": STATUS_SCHEMA,
        "run_dir": str(d),
        "name": data.get("name"),
        "pipeline": data.get("pipeline", list(DEFAULT_PIPELINE)),
        "complete": all(s["status"] == "complete" for s in run_status(d)),
        "final_policy": final,
        "stages": run_status(d),
        "rounds": rounds,
    }


__all__ = ["MANIFEST", "STATUS_SCHEMA", "RunManifest", "read_manifest", "run_status", "status_json"]
