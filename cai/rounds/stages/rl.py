"""``rl``: the round's RL step from the SFT model: PPO (default), RLOO, GRPO, DPO or a plugin trainer -> the next policy.

``algorithm`` names any registered trainer (`cai.training.spec`; a package adds one with a
``cai.trainers`` entry point). What it is given follows its data kind: a ``preference``
trainer gets the pairs the label source picks (as DPO does); a ``prompts`` trainer gets the
round's prompts, plus the reward stage's model and the constitution judge where its options
take them (``reward_model``, ``judge``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cai.errors import UserInputError
from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.label_source import OPTIONAL_INPUTS, LabelSourceChoice, choose, describe
from cai.rounds.stages._common import TrainSection, check_trainer, train_summary


class RLSection(TrainSection, LabelSourceChoice):
    algorithm: str = Field("ppo", description="A registered trainer: ppo, rloo, grpo, dpo, or a plugin's name.")
    judge: bool = Field(False, description="rloo/grpo: add the constitution judge as a reward function.")


def check(cfg: Any, source: str) -> None:
    from cai.training import get_trainer

    s = cfg.stages.rl
    try:
        spec = get_trainer(s.algorithm)
    except UserInputError as e:
        raise UserInputError(f"{source}: stages.rl.algorithm: {e}") from None
    if spec.data_kind not in ("preference", "prompts"):
        raise UserInputError(f"{source}: stages.rl.algorithm {s.algorithm} trains on '{spec.data_kind}' rows; the rl "
                             "step takes a trainer of preference pairs or of prompts")
    check_trainer(s.algorithm, "rl")(cfg, source)
    wants_reward = spec.data_kind == "prompts" and "reward_model" in spec.options and not (
        s.judge and "judge" in spec.options)
    if wants_reward and any("reward" not in p for p in [cfg.pipeline, *cfg.pipeline_from.values()] if "rl" in p):
        raise UserInputError(f"{source}: stages.rl.algorithm {s.algorithm} trains against the reward stage; "
                             "add reward before rl in the pipeline, or use algorithm: dpo")
    if s.judge and "judge" not in spec.options:
        raise UserInputError(f"{source}: stages.rl.judge works with rloo or grpo only; set algorithm or drop judge")


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.training import get_trainer
    from cai.training.runner import train

    s = ctx.section
    spec = get_trainer(s.algorithm)
    sft_model = str(ctx.input_dir("sft"))
    options: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    if spec.data_kind == "preference":  # DPO and its kin read pairs: the label-source choice of the reward model
        source, data, why = choose(ctx, s)
        chosen = describe(source, data, why)
    else:
        data = ctx.prompts("red_team") + ctx.prompts("helpful")
        if "reward_model" in spec.options and "reward" in ctx.cfg.pipeline_of(ctx.k):
            options["reward_model"] = str(ctx.input_dir("reward"))
        if s.judge:
            from cai.judge import ConstitutionJudge

            options["judge"] = ConstitutionJudge(ctx.res.constitution, ctx.res.backend(ctx.feedback_spec),
                                                 templates=ctx.res.templates()).as_reward_func()
    res = train(spec, data, sft_model, ctx.out, config=s.config, lora=s.lora, average_tail=s.average_tail,
                resume=not ctx.fresh, **options)
    return {**train_summary(res.summary), **chosen}


STAGE = register_stage(RoundStage(
    name="rl", run=run, config=RLSection, inputs=("sft",), optional_inputs=("reward", *OPTIONAL_INPUTS),
    restart=True, checkpoints=True,
    produces_policy=True, uses=("seed", "prompts", "models.feedback", "constitution"), check=check,
    description="RL (or DPO) from the SFT model against the reward model.",
))
