"""Training on TRL: SFT, reward model, PPO, RLOO, GRPO, DPO. The only package that imports ``trl``.

One small adapter module per trainer; ``common.py`` holds config layering
(defaults < YAML < overrides), data checks, LoRA and saving. Names resolve lazily,
so ``import cai.training`` does not import trl until a trainer is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "TrainResult": "cai.training.common",
    "TrainingConfigError": "cai.training.common",
    "load_reward_model": "cai.training.common",
    "check_config_fields": "cai.training.common",
    "train_sft": "cai.training.sft",
    "train_reward": "cai.training.reward",
    "soft_preference_loss": "cai.training.reward",
    "train_dpo": "cai.training.dpo",
    "train_ppo": "cai.training.ppo",
    "train_rloo": "cai.training.rloo",
    "train_grpo": "cai.training.grpo",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cai.training' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
