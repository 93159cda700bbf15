"""``reward``: a reward model on the round's preference rows (soft labels as targets)."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.stages._common import TrainSection, check_trainer, train_summary


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.training import train_reward

    s = ctx.section
    # The reward model starts from the round 0 policy's weights, as a fresh judge of the policy.
    res = train_reward(ctx.input_dir("preferences"), ctx.cfg.models.policy, ctx.out, config=s.config, lora=s.lora)
    return train_summary(res.summary)


STAGE = register_stage(RoundStage(
    name="reward", run=run, config=TrainSection, inputs=("preferences",), restart=True,
    check=check_trainer("reward", "reward"), description="Reward model on the preference labels.",
))
