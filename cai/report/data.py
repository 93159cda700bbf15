"""What the report reads, from the run directory alone: the manifest, each stage's output
(``training_summary.json``, dataset cards, judge-labelled preference rows) and each
round's ``eval/metrics.json`` and ``eval/eval.json``.

Nothing here assumes a pipeline: a round holds whichever stages the manifest lists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.data import meta_path
from cai.errors import UserInputError

#: Judge-labelled rows read per stage for the slot-bias picture (enough for a scatter).
MAX_PAIR_ROWS = 5000


def load_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when the file is missing or unreadable (a report never fails on one file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def num(x: Any) -> float | None:
    """A finite float, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


@dataclass
class StageView:
    """One stage of one round: its manifest record and what it left in its output directory."""

    name: str  # "round-1/sft"
    stage: str  # "sft"
    round: int
    record: dict[str, Any]
    out_dir: Path | None
    training: dict[str, Any] = field(default_factory=dict)  # training_summary.json
    card: dict[str, Any] = field(default_factory=dict)  # the dataset card (cai_dataset.json)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # judge-labelled rows (p_first_order)

    @property
    def status(self) -> str:
        return str(self.record.get("status", "pending"))

    @property
    def summary(self) -> dict[str, Any]:
        s = self.record.get("summary")
        return s if isinstance(s, dict) else {}

    @property
    def labeller(self) -> dict[str, Any]:
        stats = (self.card.get("summary") or {}).get("labeller")
        return stats if isinstance(stats, dict) else {}


@dataclass
class RoundView:
    k: int
    stages: list[StageView]
    metrics: dict[str, Any]  # eval/metrics.json
    eval_models: dict[str, dict[str, Any]]  # eval/eval.json "models", per model (with samples when kept)

    def stage(self, name: str) -> StageView | None:
        return next((s for s in self.stages if s.stage == name), None)

    @property
    def evaluated(self) -> bool:
        return bool(self.metrics)


@dataclass
class RunData:
    dir: Path
    manifest: dict[str, Any]
    config_text: str
    pipeline: list[str]
    rounds: list[RoundView]

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.dir.name)

    def pipeline_of(self, k: int) -> list[str]:
        """Round k's stages (``pipeline_from`` runs differ per round)."""
        per_round = self.manifest.get("pipelines") or {}
        return [str(s) for s in per_round.get(str(k)) or self.pipeline]

    @property
    def planned_rounds(self) -> int:
        try:
            return int(self.manifest.get("rounds", len(self.rounds)))
        except (TypeError, ValueError):
            return len(self.rounds)


def _pairs(path: Path) -> list[dict[str, Any]]:
    """Rows that carry both orders' judge probabilities (judge-labelled pairs); [] for other rows."""
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if len(rows) >= MAX_PAIR_ROWS:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict) or num(row.get("p_first_order")) is None:
                    if not rows:
                        return []  # not a judge-labelled dataset: stop at the first row
                    continue
                rows.append({k: row.get(k) for k in ("p_chosen", "p_first_order", "p_second_order",
                                                     "position_consistent", "chosen_index", "pair")})
    except OSError:
        return []
    return rows


def _stage_view(d: Path, name: str, record: dict[str, Any]) -> StageView:
    rnd, _, stage = name.partition("/")
    k = int(rnd.split("-", 1)[1])
    out = record.get("output")
    out_dir = (Path(out) if Path(out).is_absolute() else d / out) if isinstance(out, str) and out else d / name
    view = StageView(name=name, stage=stage, round=k, record=record, out_dir=out_dir if out_dir.is_dir() else None)
    if view.out_dir is not None:
        view.training = load_json(view.out_dir / "training_summary.json")
        card = meta_path(view.out_dir)  # .cai/cai_dataset.json, or where older cai versions wrote it
        view.card = load_json(card) if card else {}
        if (view.out_dir / "data.jsonl").exists() and view.card.get("kind") in (None, "preference"):
            view.pairs = _pairs(view.out_dir / "data.jsonl")
    return view


def _round_number(name: str) -> int | None:
    head = name.split("/", 1)[0]
    if not head.startswith("round-"):
        return None
    try:
        return int(head[len("round-"):])
    except ValueError:
        return None


def collect(run_dir: str | Path) -> RunData:
    """Everything the report shows, per round, from the run directory."""
    d = Path(run_dir)
    manifest = load_json(d / "manifest.json")
    if not manifest:
        raise UserInputError(f"{d}: no readable manifest.json; not a cai run directory")
    records: dict[str, Any] = manifest.get("stages") or {}
    pipeline = [str(s) for s in manifest.get("pipeline") or []]
    if not pipeline:  # older manifests: the stage order as recorded
        for name in records:
            stage = name.partition("/")[2]
            if stage and stage not in pipeline:
                pipeline.append(stage)
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for name, rec in records.items():
        k = _round_number(name)
        if k is not None and "/" in name and isinstance(rec, dict):
            by_round.setdefault(k, {})[name.partition("/")[2]] = rec
    on_disk = {_round_number(p.name) for p in d.glob("round-*") if p.is_dir()} - {None}
    ks = sorted(set(by_round) | on_disk)
    rounds = []
    for k in ks:
        recs = by_round.get(k, {})
        mine = [str(s) for s in (manifest.get("pipelines") or {}).get(str(k)) or pipeline]
        order = [s for s in mine if s in recs] + [s for s in recs if s not in mine]
        stages = [_stage_view(d, f"round-{k}/{s}", recs[s]) for s in order]
        ev = d / f"round-{k}" / "eval"
        eval_full = load_json(ev / "eval.json")
        models = eval_full.get("models") if isinstance(eval_full.get("models"), dict) else {}
        rounds.append(RoundView(k=k, stages=stages, metrics=load_json(ev / "metrics.json"), eval_models=models))
    config = d / "config.yaml"
    return RunData(dir=d, manifest=manifest, config_text=config.read_text(encoding="utf-8", errors="replace")
                   if config.exists() else "", pipeline=pipeline, rounds=rounds)


__all__ = ["RunData", "RoundView", "StageView", "collect", "load_json", "num"]
