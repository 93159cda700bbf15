"""RLOO (REINFORCE leave-one-out) with TRL's RLOOTrainer; same inputs as GRPO (see grpo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.training.common import TrainResult
from cai.training.grpo import GROUP_DEFAULTS, RewardFunc, build_group_trainer, finish_group_training

RLOO_DEFAULTS: dict[str, Any] = {**GROUP_DEFAULTS, "learning_rate": 1e-6}


def build_rloo_trainer(prompts: Any, policy: str, out_dir: str | Path, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    from trl import RLOOConfig, RLOOTrainer

    return build_group_trainer("rloo", RLOOConfig, RLOOTrainer, RLOO_DEFAULTS, prompts, policy, out_dir, **kwargs)


def train_rloo(
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
    """RLOO-train ``policy`` on a prompt set, rewarded by ``reward_model`` and/or ``judge``.

    ``overrides`` are RLOOConfig fields (``beta`` is the KL coefficient, TRL default 0.05).
    """
    trainer, ctx = build_rloo_trainer(prompts, policy, out_dir, reward_model=reward_model, judge=judge,
                                      config=config, config_file=config_file, lora=lora, limit=limit, **overrides)
    return finish_group_training("rloo", trainer, ctx, policy, lora, out_dir)
