"""``dpo``: DPO from the round's SFT model on the preference rows the label-source choice picks."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.label_source import OPTIONAL_INPUTS, LabelSourceChoice, choose, describe, provenance
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.stages._common import TrainSection, check_trainer, train_summary


class DPOSection(TrainSection, LabelSourceChoice):
    pass


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.training import train_dpo

    source, data, why = choose(ctx, ctx.section)
    s = ctx.section
    # From this round's SFT model when the round has one; else (an own-feedback round) from its policy.
    start = str(ctx.input_dir("sft")) if ctx.has_input("sft") else ctx.policy
    res = train_dpo(data, start, ctx.out, config=s.config, lora=s.lora, average_tail=s.average_tail)
    return {**train_summary(res.summary), **describe(source, data, why), "provenance": provenance(data)}


STAGE = register_stage(RoundStage(
    name="dpo", run=run, config=DPOSection, optional_inputs=("sft", *OPTIONAL_INPUTS), reads_policy=True, restart=True,
    produces_policy=True, uses=("seed",), check=check_trainer("dpo", "dpo"),
    description="DPO from the SFT model (else the round's policy) on judge, scored, contrastive or revision pairs "
                "(chosen by measurement).",
))
