"""``contrastive``: preference pairs labelled by construction from the round's ``distill`` rows (RLCD)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage


class ContrastiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    helpful_side: bool = Field(True, description="Also pair helpful answers over refusals (teaches not refusing).")


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.stages.contrastive import run_contrastive

    # A restarted stage: its directory was removed, so the pairs are always rebuilt from this round's distill rows.
    return run_contrastive(ctx.input_dir("distill"), ctx.out, ctx.res.constitution,
                           helpful_side=ctx.section.helpful_side)["summary"]


STAGE = register_stage(RoundStage(
    name="contrastive", run=run, config=ContrastiveConfig, inputs=("distill",), restart=True,
    uses=("constitution",), description="Harmless-context vs empty-context pairs, labelled by construction.",
))
