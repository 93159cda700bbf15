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
from cai.training.common import TrainResult, load_reward_model, policy_trainer
from cai.training.runner import train
from cai.training.spec import ClassRef, TrainerSpec, TrainJob, register_trainer

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


def _needs_reward(job: TrainJob) -> None:
    if job.options["reward_model"] is None and job.options["judge"] is None:
        raise UserInputError(f"{job.spec.command} needs a reward: give --reward-model and/or a judge")


def _build(job: TrainJob) -> Any:
    funcs, procs, names = reward_functions(job.options["reward_model"], job.options["judge"])
    job.info["reward_functions"] = names
    return policy_trainer(job, reward_funcs=funcs, reward_processing_classes=procs)


def group_spec(name: str, config_class: ClassRef, trainer_class: ClassRef, defaults: dict[str, Any],
               description: str) -> TrainerSpec:
    """An RLOO- or GRPO-like trainer: conversational prompt rows, rewarded by a reward model and/or judges."""
    return TrainerSpec(
        name=name, config_class=config_class, trainer_class=trainer_class, data_kind="prompts", defaults=defaults,
        rows=lambda records, job: [{"prompt": r.messages} for r in records], build=_build,
        summary=lambda trainer, job: {"rewards": [e["reward"] for e in trainer.state.log_history if "reward" in e]},
        options={"reward_model": None, "judge": None, "limit": None}, check=_needs_reward, description=description,
    )


GRPO = register_trainer(group_spec(
    "grpo", "trl:GRPOConfig", "trl:GRPOTrainer", GRPO_DEFAULTS,
    "GRPO of --model, rewarded by a reward model and/or the constitution judge."))


def train_grpo(prompts: Any, policy: str, out_dir: str | Path, *, reward_model: str | None = None,
               judge: RewardFunc | list[RewardFunc] | None = None, config: dict[str, Any] | None = None,
               config_file: str | Path | None = None, lora: bool = False, limit: int | None = None,
               **overrides: Any) -> TrainResult:
    """GRPO-train ``policy`` on a prompt set, rewarded by ``reward_model`` and/or ``judge``.

    ``overrides`` are GRPOConfig fields (``beta`` is the KL coefficient; TRL's default 0 skips the reference model).
    """
    return train(GRPO, prompts, policy, out_dir, reward_model=reward_model, judge=judge, config=config,
                 config_file=config_file, lora=lora, limit=limit, **overrides)
