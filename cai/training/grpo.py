"""GRPO with TRL's GRPOTrainer: our reward model and/or a judge as reward functions.

Shared with RLOO (``cai/training/rloo.py``), whose trainer takes the same inputs.
A reward function is TRL's: ``fn(prompts, completions, **kwargs) -> list[float]``;
``judge=`` takes any such callable (for example the constitution judge's
``as_reward_func()``), so this module needs nothing from the judge's internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cai.errors import UserInputError
from cai.training.common import (
    TrainResult,
    base_summary,
    build_config,
    load_policy,
    load_prompt_records,
    load_reward_model,
    lora_config,
    run_training,
    save_trained,
)

RewardFunc = Callable[..., list]

GROUP_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 4,  # completions per step: one prompt x num_generations
    "num_generations": 4,
    "max_completion_length": 48,
    "log_completions": False,
}
GRPO_DEFAULTS: dict[str, Any] = {**GROUP_DEFAULTS, "learning_rate": 1e-6}


def reward_functions(
    reward_model: str | None, judge: RewardFunc | list[RewardFunc] | None
) -> tuple[list[Any], list[Any], list[str]]:
    """(reward_funcs, reward_processing_classes, names) for TRL: the reward model first, then judges."""
    funcs: list[Any] = []
    procs: list[Any] = []
    names: list[str] = []
    if reward_model is not None:
        rm, rtok = load_reward_model(reward_model)
        rm.eval()
        funcs.append(rm)
        procs.append(rtok)
        names.append(f"reward_model:{reward_model}")
    judges = judge if isinstance(judge, (list, tuple)) else ([judge] if judge is not None else [])
    for j in judges:
        if not callable(j):
            raise UserInputError(f"judge {j!r} is not callable; pass fn(prompts, completions, **kwargs) -> list[float]")
        funcs.append(j)
        procs.append(None)
        names.append(f"judge:{getattr(j, '__name__', type(j).__name__)}")
    return funcs, procs, names


def build_group_trainer(
    name: str,
    config_cls: type,
    trainer_cls: type,
    defaults: dict[str, Any],
    prompts: Any,
    policy: str,
    out_dir: str | Path,
    *,
    reward_model: str | None = None,
    judge: RewardFunc | list[RewardFunc] | None = None,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    limit: int | None = None,
    **overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    """An RLOO or GRPO trainer on conversational prompt rows."""
    from datasets import Dataset

    if reward_model is None and judge is None:
        raise UserInputError(f"cai train {name} needs a reward: give --reward-model and/or a judge")
    records, provenance = load_prompt_records(prompts, limit=limit)
    cfg, settings = build_config(config_cls, out_dir, defaults=defaults, config=config,
                                 config_file=config_file, overrides=overrides)
    funcs, procs, names = reward_functions(reward_model, judge)
    model, tok = load_policy(policy)
    dataset = Dataset.from_list([{"prompt": r.messages} for r in records])
    trainer = trainer_cls(
        model=model, reward_funcs=funcs, args=cfg, train_dataset=dataset, processing_class=tok,
        reward_processing_classes=procs, peft_config=lora_config("CAUSAL_LM") if lora else None,
    )
    ctx = {"cfg": cfg, "settings": settings, "tokenizer": tok,
           "data": {**provenance, "reward_functions": names}}
    return trainer, ctx


def finish_group_training(name: str, trainer: Any, ctx: dict[str, Any], policy: str, lora: bool,
                          out_dir: str | Path) -> TrainResult:
    seconds = run_training(trainer)
    summary = base_summary(name, model=policy, settings=ctx["settings"], config=ctx["cfg"], lora=lora,
                           data=ctx["data"], seconds=seconds, trainer=trainer)
    summary["rewards"] = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    return save_trained(trainer.model, ctx["tokenizer"], out_dir, summary)


def build_grpo_trainer(prompts: Any, policy: str, out_dir: str | Path, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    from trl import GRPOConfig, GRPOTrainer

    return build_group_trainer("grpo", GRPOConfig, GRPOTrainer, GRPO_DEFAULTS, prompts, policy, out_dir, **kwargs)


def train_grpo(
    prompts: Any,
    policy: str,
    out_dir: str | Path,
    *,
    reward_model: str | None = None,
    judge: RewardFunc | list[RewardFunc] | None = None,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    limit: int | None = None,
    **overrides: Any,
) -> TrainResult:
    """GRPO-train ``policy`` on a prompt set, rewarded by ``reward_model`` and/or ``judge``.

    ``overrides`` are GRPOConfig fields (``beta`` is the KL coefficient; TRL's default 0 skips the reference model).
    """
    trainer, ctx = build_grpo_trainer(prompts, policy, out_dir, reward_model=reward_model, judge=judge,
                                      config=config, config_file=config_file, lora=lora, limit=limit, **overrides)
    return finish_group_training("grpo", trainer, ctx, policy, lora, out_dir)
