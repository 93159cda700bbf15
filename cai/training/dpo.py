"""Direct preference optimisation on the same preference rows, with TRL's DPOTrainer.

DPO takes hard pairs: only prompt/chosen/rejected go in (p_chosen, principle ids
and the labeller's traces stay in the dataset, not in the trainer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.training.common import TrainResult, load_policy, policy_trainer
from cai.training.reward import preference_rows
from cai.training.runner import train
from cai.training.spec import TrainerSpec, TrainJob, register_trainer


def with_reference(job: TrainJob, **extra: Any) -> Any:
    """The spec's trainer with a frozen copy of the policy as reference (with LoRA, TRL disables the adapter)."""
    ref = None
    if not job.lora:
        ref, _ = load_policy(job.model)
        ref.eval()
    return policy_trainer(job, ref_model=ref, **extra)


DPO = register_trainer(TrainerSpec(
    name="dpo", config_class="trl:DPOConfig", trainer_class="trl:DPOTrainer", data_kind="preference",
    defaults={"max_length": 512, "learning_rate": 1e-6, "beta": 0.1},
    rows=lambda raw, job: preference_rows(raw, job.where, keep_soft=False), build=with_reference,
    description="Direct preference optimisation on preference rows.",
))


def train_dpo(data_dir: str | Path, model: str, out_dir: str | Path, *, config: dict[str, Any] | None = None,
              config_file: str | Path | None = None, lora: bool = False, **overrides: Any) -> TrainResult:
    """DPO-train ``model`` on a preference dataset directory (``overrides`` are DPOConfig fields)."""
    return train(DPO, data_dir, model, out_dir, config=config, config_file=config_file, lora=lora, **overrides)
