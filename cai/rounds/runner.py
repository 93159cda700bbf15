"""`cai run`: execute (or resume) every round's declared pipeline, stage by stage.

A stage's *key* hashes its own config section, the run-level settings it declares
(``uses``) and the keys of its declared inputs (plus, when it reads the round's
policy, the previous round's policy stage). So changing the revise settings reruns
what reads revisions, not ``helpful``. A finished stage whose config changed is
refused unless forced; a forced or rerun stage reruns everything that reads it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from cai.data import stable_hash
from cai.errors import UserInputError
from cai.rounds.config import RunConfigBase, load_run_config, lookup
from cai.rounds.context import FOLLOW_POLICY, RunResources, StageContext
from cai.rounds.manifest import MANIFEST, RunManifest
from cai.rounds.spec import RoundStage, get_stage


class Run:
    """One run directory; `execute` runs (or resumes) every round's stages in order."""

    def __init__(
        self,
        cfg: RunConfigBase,
        run_dir: str | Path,
        *,
        resume: bool = False,
        force: tuple[str, ...] = (),
        progress: bool = True,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.echo = echo
        self.force = set(force)
        for f in self.force:
            if f.split("/")[-1] not in cfg.all_stages():
                raise UserInputError(f"--force {f}: no such stage; use one of: {', '.join(cfg.all_stages())}")
        if (self.dir / MANIFEST).exists() and not resume:
            raise UserInputError(f"{self.dir}: a run is already here; add --resume to continue it, or use a new --out")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = RunManifest(self.dir)
        self.res = RunResources(cfg, self.dir, progress=progress)

    # --- the pipeline's shape -------------------------------------------------------------

    def policy_stage(self, k: int) -> str | None:
        """The last stage of round k's pipeline whose output is a model: the next round's policy."""
        made = [s for s in self.cfg.pipeline_of(k) if get_stage(s).produces_policy]
        return made[-1] if made else None

    def policy_source(self, k: int) -> str | None:
        """``round-j/stage`` that made policy_k: the latest earlier round that trained one (None: models.policy)."""
        for j in range(k - 1, 0, -1):
            stage = self.policy_stage(j)
            if stage:
                return f"round-{j}/{stage}"
        return None

    def policy_spec(self, k: int) -> str:
        """policy_k: the configured model for round 1, else the latest earlier round's policy stage output."""
        source = self.policy_source(k)
        return str(self.dir / source) if source else self.cfg.models.policy

    def final_policy(self) -> str:
        return self.policy_spec(self.cfg.rounds + 1)

    def new_policy_stage(self, k: int, stage: str) -> str | None:
        """The last model-producing stage before ``stage`` in round k's pipeline (this round's new policy)."""
        pipeline = self.cfg.pipeline_of(k)
        made = [s for s in pipeline[: pipeline.index(stage)] if get_stage(s).produces_policy]
        return made[-1] if made else None

    def _upstream(self, k: int, stage: RoundStage) -> list[str]:
        optional = [s for s in stage.optional_inputs if s in self.cfg.pipeline_of(k)]
        names = [f"round-{k}/{s}" for s in (*stage.inputs, *optional)]
        if stage.reads_new_policy:
            names.append(f"round-{k}/{self.new_policy_stage(k, stage.name)}")
        follows = "models.feedback" in stage.uses and self.cfg.models.feedback == FOLLOW_POLICY
        source = self.policy_source(k)
        if (stage.reads_policy or follows) and source:
            # feedback: policy makes round k's feedback model round k-1's output: an input like the policy.
            names.insert(0, source)
        return names

    def _key(self, k: int, stage: RoundStage) -> tuple[str, str]:
        own = {"section": self.cfg.section(stage.name, k).model_dump(mode="json"),
               "uses": {u: lookup(self.cfg, u) for u in stage.uses}}
        config_hash = stable_hash(own, length=64)
        upstream = [self.manifest.stage(n).get("key", "") for n in self._upstream(k, stage)]
        return config_hash, stable_hash(config_hash, upstream, length=64)

    def _forced(self, k: int, stage: str) -> bool:
        return stage in self.force or f"round-{k}/{stage}" in self.force

    def check_finished_stages(self) -> None:
        """Refuse a resume whose config changed for a finished stage (unless forced)."""
        for k in range(1, self.cfg.rounds + 1):
            for name in self.cfg.pipeline_of(k):
                full = f"round-{k}/{name}"
                rec = self.manifest.stage(full)
                if rec.get("status") != "complete" or self._forced(k, name):
                    continue
                if rec.get("config_hash") != self._key(k, get_stage(name))[0]:
                    raise UserInputError(
                        f"{self.dir}: stage {full} finished with another config; rerun with --force {name} "
                        f"to redo it (and everything after it), or use a new --out")

    # --- execution ------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        self.check_finished_stages()
        self.res.prompt_split()  # bad prompt files fail here, before any model loads
        # Only now, once the config is accepted, does it become the run's record.
        self.manifest.data.update(name=self.cfg.name, rounds=self.cfg.rounds, pipeline=list(self.cfg.pipeline),
                                  pipelines={str(k): self.cfg.pipeline_of(k) for k in range(1, self.cfg.rounds + 1)})
        self.manifest.save()
        (self.dir / "config.yaml").write_text(
            yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        rerun: set[str] = set()  # stages (round-k/name) run in this call: what reads them must run too
        for k in range(1, self.cfg.rounds + 1):
            for name in self.cfg.pipeline_of(k):
                self._run_one(k, get_stage(name), rerun)
        self.res.release_backends()
        self.manifest.data["final_policy"] = self.final_policy()
        self.manifest.save()
        return self.manifest.data

    def _run_one(self, k: int, stage: RoundStage, rerun: set[str]) -> None:
        full = f"round-{k}/{stage.name}"
        config_hash, key = self._key(k, stage)
        rec = self.manifest.stage(full)
        forced = self._forced(k, stage.name)
        stale = any(u in rerun for u in self._upstream(k, stage))
        if rec.get("status") == "complete" and rec.get("key") == key and not (stale or forced):
            self.echo(f"[{full}] done, skipping")
            return
        # An interrupted stage with the same inputs picks up its rows; anything else starts clean.
        resumable = (rec.get("status") == "running" and rec.get("key") == key and not forced and not stale
                     and (not stage.restart or stage.checkpoints))
        rerun.add(full)
        out = self.dir / f"round-{k}" / stage.name
        if not resumable and out.exists():
            shutil.rmtree(out)
        verb = "resuming" if resumable else ("restarting" if rec.get("status") == "running" else "running")
        self.echo(f"[{full}] {verb}")
        started = time.time()
        self.manifest.update(full, status="running", key=key, config_hash=config_hash, started=started,
                             output=str(out.relative_to(self.dir)))
        if stage.restart or stage.produces_policy or stage.checkpoints:
            self.res.release_backends()  # training needs the memory back
        ctx = StageContext(res=self.res, stage=stage.name, k=k, out=out, fresh=not resumable,
                           policy=self.policy_spec(k), new_policy_stage=self.new_policy_stage(k, stage.name))
        summary = stage.run(ctx)
        from cai.backends.sampling import peak_rss_gb

        # The process's high-water mark when the stage ended: the first stage to raise it is where memory went.
        self.manifest.update(full, status="complete", finished=time.time(),
                             seconds=round(time.time() - started, 1), peak_rss_gb=peak_rss_gb(), summary=summary)
        self.echo(f"[{full}] finished in {time.time() - started:.0f}s")


def run_rounds(
    config: str | Path | RunConfigBase,
    run_dir: str | Path | None = None,
    *,
    rounds: int | None = None,
    resume: bool = False,
    force: tuple[str, ...] = (),
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) self-improvement rounds; returns the manifest."""
    cfg = config if isinstance(config, RunConfigBase) else load_run_config(config)
    if rounds is not None:
        cfg = cfg.model_copy(update={"rounds": rounds})
    run = Run(cfg, run_dir or Path("runs") / cfg.name, resume=resume, force=force, progress=progress, echo=echo)
    return run.execute()


__all__ = ["Run", "run_rounds"]
