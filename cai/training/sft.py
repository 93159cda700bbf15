"""Supervised fine-tuning on SFT rows (revisions, chain-of-thought) with TRL's SFTTrainer.

The loss covers the final assistant turn only. TRL's ``assistant_only_loss``
needs a chat template with ``{% generation %}`` tags, which SmolLM2's ChatML
template lacks; instead each conversation becomes a conversational
prompt/completion pair, and TRL trains prompt/completion rows on the completion
only (``completion_only_loss`` defaults to on for them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.errors import DataError
from cai.training.common import TrainResult, as_messages, policy_trainer
from cai.training.runner import train
from cai.training.spec import TrainerSpec, TrainJob, register_trainer


def sft_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """SFT rows -> conversational prompt/completion rows (the last assistant turn is the completion)."""
    out = []
    for i, row in enumerate(rows):
        at = f"{where}[row {i}]"
        if "messages" in row:
            msgs = as_messages(row["messages"], "user", at)
        elif "prompt" in row and "completion" in row:
            msgs = as_messages(row["prompt"], "user", at) + as_messages(row["completion"], "assistant", at)
        else:
            raise DataError(f"{at}: an SFT row needs 'messages' (or 'prompt' and 'completion')")
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise DataError(f"{at}: 'messages' must end with the assistant turn to train on")
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    if not out:
        raise DataError(f"{where}: no rows to train on; generate some with cai generate revisions")
    return out


def _build(job: TrainJob) -> Any:
    trainer = policy_trainer(job)
    kept = len(trainer.train_dataset)
    if kept == 0:  # TRL drops rows whose answer was cut off entirely by max_length
        raise DataError(f"{job.source}: no row keeps any answer tokens within max_length={job.config.max_length}; "
                        "raise --max-length")
    job.info["rows_trained"] = kept
    return trainer


SFT = register_trainer(TrainerSpec(
    name="sft", config_class="trl:SFTConfig", trainer_class="trl:SFTTrainer", data_kind="sft",
    defaults={"max_length": 512, "learning_rate": 2e-5}, rows=lambda raw, job: sft_rows(raw, job.where),
    build=_build, description="Supervised fine-tuning on SFT rows; the loss covers the assistant's answer only.",
))


def train_sft(data_dir: str | Path, model: str, out_dir: str | Path, *, config: dict[str, Any] | None = None,
              config_file: str | Path | None = None, lora: bool = False, **overrides: Any) -> TrainResult:
    """Fine-tune ``model`` on an SFT dataset directory; ``overrides`` are SFTConfig fields (``max_steps=3``...)."""
    return train(SFT, data_dir, model, out_dir, config=config, config_file=config_file, lora=lora, **overrides)
