"""``distill``: context distillation of the round's policy on both prompt sets (SFT rows)."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.spec import DEFAULT_USES, RoundStage, register_stage
from cai.stages.distill import DistillConfig


def check(cfg: Any, source: str) -> None:
    from cai.constitution import load_constitution
    from cai.stages.distill import check_constitution

    check_constitution(load_constitution(cfg.constitution), cfg.stages.distill, f"{source}: stages.distill")


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.rounds.stages._common import counts
    from cai.stages.distill import run_distill

    res = run_distill(ctx.prompts("red_team"), ctx.prompts("helpful"), ctx.out, ctx.res.constitution,
                      ctx.res.backend(ctx.policy), config=ctx.section, templates=ctx.res.templates(),
                      overwrite=ctx.fresh, progress=ctx.res.progress, chunk_size=ctx.cfg.chunk_size)
    return {**counts(res), "tallies": res["summary"].get("tallies", {})}


STAGE = register_stage(RoundStage(
    name="distill", run=run, config=DistillConfig, reads_policy=True, check=check,
    uses=DEFAULT_USES + ("constitution",), templates=("initial_response",),
    description="Context distillation: targets made with the constitution in context, trained without it.",
))
