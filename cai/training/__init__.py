"""Training on TRL: SFT, reward model, PPO, RLOO, GRPO, DPO. The only package that imports ``trl``.

A trainer is a declared `TrainerSpec` (``spec.py``) in a registry open to entry
points (group ``cai.trainers``); one ``train(spec_or_name, ...)`` (``runner.py``)
runs any of them. Each built-in trainer is one small module holding its spec and
its public ``train_<name>`` function; ``config.py`` layers and checks TRL config
fields (defaults < YAML < overrides), ``common.py`` holds data checks, models,
LoRA and saving. Names resolve lazily, so ``import cai.training`` does not
import trl until a trainer is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "TrainResult": "cai.training.common",
    "TrainingConfigError": "cai.training.config",
    "load_reward_model": "cai.training.common",
    "check_config_fields": "cai.training.spec",
    "TrainerSpec": "cai.training.spec",
    "TrainJob": "cai.training.spec",
    "register_trainer": "cai.training.spec",
    "trainer_registry": "cai.training.spec",
    "get_trainer": "cai.training.spec",
    "train": "cai.training.runner",
    "build_trainer": "cai.training.runner",
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
    """Resolve a public name on first use (so trl loads only when a trainer does)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cai.training' has no attribute '{name}'")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
