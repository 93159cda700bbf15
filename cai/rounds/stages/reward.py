"""``reward``: a reward model on the round's preference rows (soft labels as targets), source chosen by measurement."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.label_source import OPTIONAL_INPUTS, LabelSourceChoice, choose, describe, provenance
from cai.rounds.stages._common import TrainSection, check_trainer, train_summary


class RewardSection(TrainSection, LabelSourceChoice):
    pass


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.training import train_reward

    s = ctx.section
    source, data, why = choose(ctx, s)
    # The reward model starts from the round 0 policy's weights, as a fresh judge of the policy.
    res = train_reward(data, ctx.cfg.models.policy, ctx.out, config=s.config, lora=s.lora, average_tail=s.average_tail, resume=not ctx.fresh)
    return {**train_summary(res.summary), **describe(source, data, why), "provenance": provenance(data)}


STAGE = register_stage(RoundStage(
    name="reward", run=run, config=RewardSection, optional_inputs=OPTIONAL_INPUTS, restart=True, checkpoints=True,
    check=check_trainer("reward", "reward"), description="Reward model on the preference labels.",
))
