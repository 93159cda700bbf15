"""``contrastive``: preference pairs labelled by construction from the round's ``distill`` rows (RLCD)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.data import DatasetWriter, read_rows
from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage


class ContrastiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    helpful_side: bool = Field(True, description="Also pair helpful answers over refusals (teaches not refusing).")


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.stages.contrastive import contrastive_pairs

    pairs, skipped, tallies = contrastive_pairs(read_rows(ctx.input_dir("distill")), ctx.res.constitution,
                                                helpful_side=ctx.section.helpful_side)
    writer = DatasetWriter(ctx.out, kind="preference", overwrite=True,
                           fingerprint={"stage": "contrastive", "round": ctx.k, **ctx.section.model_dump()},
                           provenance={"label_source": "contrastive", "derived_from": "../distill",
                                       "constitution": ctx.res.constitution.provenance()})
    writer.write_failures(skipped)
    writer.write(pairs)
    return writer.finalize({"pairs": len(pairs), "tallies": tallies},
                           title=f"cai round {ctx.k} contrastive pairs (labelled by construction)")["summary"]


STAGE = register_stage(RoundStage(
    name="contrastive", run=run, config=ContrastiveConfig, inputs=("distill",), restart=True,
    uses=("constitution",), description="Harmless-context vs empty-context pairs, labelled by construction.",
))
