"""``sft``: supervised fine-tuning of the round's policy on the ``sft-data`` mix (TRL's SFTTrainer)."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.stages._common import TrainSection, check_trainer, train_summary


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.training import train_sft

    s = ctx.section
    res = train_sft(ctx.input_dir("sft-data"), ctx.policy, ctx.out, config=s.config, lora=s.lora)
    return train_summary(res.summary)


STAGE = register_stage(RoundStage(
    name="sft", run=run, config=TrainSection, inputs=("sft-data",), reads_policy=True, restart=True,
    produces_policy=True, check=check_trainer("sft", "sft"), description="SFT of the policy on the SFT mix.",
))
