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
from cai.training.common import (
    TrainResult,
    as_messages,
    base_summary,
    build_config,
    data_provenance,
    load_policy,
    lora_config,
    require_kind,
    run_training,
    save_trained,
)

SFT_DEFAULTS: dict[str, Any] = {"max_length": 512, "learning_rate": 2e-5}


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


def build_sft_trainer(
    data_dir: str | Path,
    model: str,
    out_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    **overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    """The SFTTrainer, ready to train, and the context ``train_sft`` records (tests inspect it)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from cai.data import read_rows

    meta = require_kind(data_dir, "sft", "cai train sft")
    cfg, settings = build_config(SFTConfig, out_dir, defaults=SFT_DEFAULTS, config=config,
                                 config_file=config_file, overrides=overrides)
    rows = sft_rows(read_rows(data_dir), str(data_dir))
    policy, tok = load_policy(model)
    trainer = SFTTrainer(
        model=policy, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
        peft_config=lora_config("CAUSAL_LM") if lora else None,
    )
    kept = len(trainer.train_dataset)
    if kept == 0:  # TRL drops rows whose answer was cut off entirely by max_length
        raise DataError(f"{data_dir}: no row keeps any answer tokens within max_length={cfg.max_length}; "
                        "raise --max-length")
    data = {**data_provenance(data_dir, meta, len(rows)), "rows_trained": kept}
    ctx = {"cfg": cfg, "settings": settings, "data": data, "tokenizer": tok}
    return trainer, ctx


def train_sft(
    data_dir: str | Path,
    model: str,
    out_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Fine-tune ``model`` on an SFT dataset directory; save the result to ``out_dir``.

    ``overrides`` are SFTConfig fields (``max_steps=3``, ``learning_rate=1e-4``, ...).
    """
    trainer, ctx = build_sft_trainer(data_dir, model, out_dir, config=config, config_file=config_file,
                                     lora=lora, **overrides)
    seconds = run_training(trainer)
    summary = base_summary("sft", model=model, settings=ctx["settings"], config=ctx["cfg"], lora=lora,
                           data=ctx["data"], seconds=seconds, trainer=trainer)
    return save_trained(trainer.model, ctx["tokenizer"], out_dir, summary)
