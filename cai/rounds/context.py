"""What a stage's ``run`` is handed: the run's shared resources and this stage's place in it."""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cai.data import PromptRecord, load_prompts
from cai.errors import UserInputError
from cai.rounds.config import RunConfigBase


class RunResources:
    """Loaded once per run: the constitution, backends per model spec, the prompt split."""

    def __init__(self, cfg: RunConfigBase, run_dir: Path, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.dir = run_dir
        self.progress = progress
        self._constitution = None
        self._backends: dict[str, Any] = {}
        self._split: tuple[list[PromptRecord], ...] | None = None
        self._validation: tuple[list[PromptRecord], list[PromptRecord]] = ([], [])

    @property
    def constitution(self):
        if self._constitution is None:
            from cai.constitution import load_constitution

            self._constitution = load_constitution(self.cfg.constitution)
        return self._constitution

    def templates(self):
        from cai.templates import PromptTemplates

        return PromptTemplates(self.cfg.template_dir, constitution=self.constitution)

    def backend(self, spec: str):
        """One loaded backend per model spec, dropped when training needs the memory back."""
        if spec not in self._backends:
            from cai.backends import make_backend

            m = self.cfg.models
            self._backends[spec] = make_backend(spec, kind=m.backend, batch_size=m.batch_size, device=m.device,
                                                dtype=m.dtype, progress=self.progress)
        return self._backends[spec]

    def stage_summary(self, name: str) -> dict[str, Any]:
        """A finished stage's summary from the manifest (``round-k/stage``); empty if none."""
        from cai.rounds.manifest import RunManifest

        return RunManifest(self.dir).stage(name).get("summary") or {}

    def release_backends(self) -> None:
        from cai.backends.sampling import return_freed_memory

        self._backends.clear()
        gc.collect()
        return_freed_memory()

    def prompt_split(self) -> tuple[list[PromptRecord], list[PromptRecord], list[PromptRecord], list[PromptRecord]]:
        """(train red-team, train helpful, eval red-team, eval helpful), fixed by the seed."""
        if self._split is None:
            p = self.cfg.prompts
            out, val = [], []
            for train_path, eval_path in ((p.red_team, p.eval_red_team), (p.helpful, p.eval_helpful)):
                recs = load_prompts(train_path)
                if eval_path:
                    held, train = load_prompts(eval_path), recs
                else:
                    train = list(recs)
                    random.Random(self.cfg.seed).shuffle(train)
                    if len(train) <= p.held_out:
                        raise UserInputError(f"{train_path}: {len(train)} prompts, not more than held_out={p.held_out}; "
                                             "add prompts or lower prompts.held_out")
                    held, train = train[: p.held_out], train[p.held_out:]
                if p.validation:
                    # Its own seeded draw (seed + 1), so adding a validation slice leaves the eval split as it was.
                    if len(train) <= p.validation:
                        raise UserInputError(f"{train_path}: {len(train)} training prompts, not more than "
                                             f"validation={p.validation}; lower prompts.validation")
                    order = list(range(len(train)))
                    random.Random(self.cfg.seed + 1).shuffle(order)
                    cut = set(order[: p.validation])
                    val.append([r for i, r in enumerate(train) if i in cut])
                    train = [r for i, r in enumerate(train) if i not in cut]
                else:
                    val.append([])
                out.append((train, held))
            self._split = (out[0][0], out[1][0], out[0][1], out[1][1])
            self._validation = (val[0], val[1])
        return self._split

    def validation_split(self) -> tuple[list[PromptRecord], list[PromptRecord]]:
        """(validation red-team, validation helpful): held out of training to choose settings on; empty if off."""
        self.prompt_split()
        return self._validation

    def round_prompts(self, k: int, which: str) -> list[PromptRecord]:
        """Round k's training slice of ``red_team`` or ``helpful`` (a new slice each round)."""
        recs = self.prompt_split()[{"red_team": 0, "helpful": 1}[which]]
        n = self.cfg.prompts.per_round
        if not n or n >= len(recs):
            return recs
        start = ((k - 1) * n) % len(recs)
        return (recs + recs)[start : start + n]


@dataclass
class StageContext:
    """One stage of one round: where it writes, what it reads, and the shared resources."""

    res: RunResources
    stage: str
    k: int
    out: Path
    #: True when the stage starts clean; False when it resumes its own interrupted rows.
    fresh: bool
    #: The round's starting policy (model spec).
    policy: str
    #: This round's last model-producing stage before this one (None if there is none yet).
    new_policy_stage: str | None = None

    @property
    def cfg(self) -> RunConfigBase:
        return self.res.cfg

    @property
    def section(self) -> BaseModel:
        return self.cfg.section(self.stage, self.k)

    def input_dir(self, stage: str) -> Path:
        """The output directory of a stage of this round that this one declared as an input."""
        return self.res.dir / f"round-{self.k}" / stage

    def has_input(self, stage: str) -> bool:
        return stage in self.cfg.pipeline_of(self.k) and self.input_dir(stage).exists()

    def prompts(self, which: str) -> list[PromptRecord]:
        return self.res.round_prompts(self.k, which)

    @property
    def feedback_spec(self) -> str:
        """The feedback model of this round: its starting policy (``feedback: policy``), a fixed one, or round 0's."""
        return feedback_spec(self.cfg, self.policy)


#: ``models.feedback`` value that makes each round's feedback model the policy it starts from.
FOLLOW_POLICY = "policy"


def feedback_spec(cfg: RunConfigBase, round_policy: str) -> str:
    """The feedback model for a round that starts from ``round_policy``."""
    feedback = cfg.models.feedback
    if feedback == FOLLOW_POLICY:
        return round_policy
    return feedback or cfg.models.policy


__all__ = ["RunResources", "StageContext", "FOLLOW_POLICY", "feedback_spec"]
