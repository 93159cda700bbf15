"""``rl``: the round's RL step from the SFT model: PPO (default), RLOO, GRPO or DPO -> the next policy."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cai.errors import UserInputError
from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.label_source import OPTIONAL_INPUTS, LabelSourceChoice, choose, describe
from cai.rounds.stages._common import TrainSection, check_trainer, train_summary


class RLSection(TrainSection, LabelSourceChoice):
    algorithm: Literal["ppo", "rloo", "grpo", "dpo"] = "ppo"
    judge: bool = Field(False, description="rloo/grpo: add the constitution judge as a reward function.")


def check(cfg: Any, source: str) -> None:
    s = cfg.stages.rl
    check_trainer(s.algorithm, "rl")(cfg, source)
    if s.algorithm != "dpo" and any("reward" not in p for p in [cfg.pipeline, *cfg.pipeline_from.values()] if "rl" in p):
        raise UserInputError(f"{source}: stages.rl.algorithm {s.algorithm} trains against the reward stage; "
                             "add reward before rl in the pipeline, or use algorithm: dpo")
    if s.judge and s.algorithm not in ("rloo", "grpo"):
        raise UserInputError(f"{source}: stages.rl.judge works with rloo or grpo only; set algorithm or drop judge")


def run(ctx: StageContext) -> dict[str, Any]:
    from cai import training

    s = ctx.section
    sft_model = str(ctx.input_dir("sft"))
    reward_model = str(ctx.input_dir("reward"))
    prompts = ctx.prompts("red_team") + ctx.prompts("helpful")
    chosen: dict[str, Any] = {}
    if s.algorithm == "dpo":  # DPO reads pairs: the same label-source choice as the reward model
        source, data, why = choose(ctx, s)
        chosen = describe(source, data, why)
        res = training.train_dpo(data, sft_model, ctx.out, config=s.config, lora=s.lora,
                                 average_tail=s.average_tail, resume=not ctx.fresh)
    elif s.algorithm == "ppo":
        res = training.train_ppo(prompts, sft_model, reward_model, ctx.out, config=s.config, lora=s.lora,
                                 average_tail=s.average_tail, resume=not ctx.fresh)
    else:
        judge = None
        if s.judge:
            from cai.judge import ConstitutionJudge

            judge = ConstitutionJudge(ctx.res.constitution, ctx.res.backend(ctx.feedback_spec),
                                      templates=ctx.res.templates()).as_reward_func()
        fn = training.train_rloo if s.algorithm == "rloo" else training.train_grpo
        res = fn(prompts, sft_model, ctx.out, reward_model=reward_model, judge=judge, config=s.config, lora=s.lora,
                 average_tail=s.average_tail, resume=not ctx.fresh)
    return {**train_summary(res.summary), **chosen}


STAGE = register_stage(RoundStage(
    name="rl", run=run, config=RLSection, inputs=("sft",), optional_inputs=("reward", *OPTIONAL_INPUTS),
    restart=True, checkpoints=True,
    produces_policy=True, uses=("seed", "prompts", "models.feedback", "constitution"), check=check,
    description="RL (or DPO) from the SFT model against the reward model.",
))
