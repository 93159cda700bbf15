"""RLOO (REINFORCE leave-one-out) with TRL's RLOOTrainer; same inputs as GRPO (see grpo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.training.common import TrainResult
from cai.training.grpo import GROUP_DEFAULTS, RewardFunc, group_spec
from cai.training.runner import train
from cai.training.spec import register_trainer

RLOO = register_trainer(group_spec(
    "rloo", "trl:RLOOConfig", "trl:RLOOTrainer", {**GROUP_DEFAULTS, "learning_rate": 1e-6},
    "RLOO of --model, rewarded by a reward model and/or the constitution judge."))


def train_rloo(prompts: Any, policy: str, out_dir: str | Path, *, reward_model: str | None = None,
               judge: RewardFunc | list[RewardFunc] | None = None, config: dict[str, Any] | None = None,
               config_file: str | Path | None = None, lora: bool = False, limit: int | None = None,
               **overrides: Any) -> TrainResult:
    """RLOO-train ``policy`` on a prompt set, rewarded by ``reward_model`` and/or ``judge``.

    ``overrides`` are RLOOConfig fields (``beta`` is the KL coefficient, TRL default 0.05).
    """
    return train(RLOO, prompts, policy, out_dir, reward_model=reward_model, judge=judge, config=config,
                 config_file=config_file, lora=lora, limit=limit, **overrides)
