"""``sft``: supervised fine-tuning of the round's policy (TRL's SFTTrainer) on ``distill`` or ``sft-data`` rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.stages._common import TrainSection, check_data_trainer, data_stage, train_summary

DATA_STAGES = ("distill", "sft-data")


class SFTSection(TrainSection):
    data: Literal["auto", "distill", "sft-data"] = Field(
        "auto", description="The stage whose rows SFT trains on; auto: distill if the pipeline has it, else sft-data.")
    decision_tokens: int = Field(0, ge=0, description="Weight the loss of each answer's first N tokens (where the "
                                                      "model opens an answer or a refusal); 0: off.")
    decision_weight: float = Field(1.0, ge=1.0, description="The weight of those first tokens (1: plain SFT).")


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.training import train_sft

    s = ctx.section
    data = ctx.input_dir(data_stage(ctx.cfg, "sft", DATA_STAGES, ctx.cfg.pipeline_of(ctx.k)))
    res = train_sft(data, ctx.policy, ctx.out, config=s.config, lora=s.lora,
                    decision_tokens=s.decision_tokens, decision_weight=s.decision_weight,
                    average_tail=s.average_tail, resume=not ctx.fresh)
    from cai.data import read_rows
    from cai.provenance import provenance_shares

    return {**train_summary(res.summary), "data": data.name, "provenance": provenance_shares(read_rows(data))}


STAGE = register_stage(RoundStage(
    name="sft", run=run, config=SFTSection, optional_inputs=DATA_STAGES, reads_policy=True, restart=True, checkpoints=True,
    produces_policy=True, check=check_data_trainer("sft", "sft", DATA_STAGES, "the rows"), description="SFT of the policy on the distilled rows or the SFT mix.",
))
