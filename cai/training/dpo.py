"""Direct preference optimisation on the same preference rows, with TRL's DPOTrainer.

DPO takes hard pairs: only prompt/chosen/rejected go in (p_chosen, principle ids
and the labeller's traces stay in the dataset, not in the trainer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.training.common import (
    TrainResult,
    base_summary,
    build_config,
    data_provenance,
    load_policy,
    lora_config,
    require_kind,
    run_training,
    save_trained,
)
from cai.training.reward import preference_rows

DPO_DEFAULTS: dict[str, Any] = {"max_length": 512, "learning_rate": 1e-6, "beta": 0.1}


def build_dpo_trainer(
    data_dir: str | Path,
    model: str,
    out_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    **overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from cai.data import read_rows

    meta = require_kind(data_dir, "preference", "cai train dpo")
    cfg, settings = build_config(DPOConfig, out_dir, defaults=DPO_DEFAULTS, config=config,
                                 config_file=config_file, overrides=overrides)
    rows = preference_rows(read_rows(data_dir), str(data_dir), keep_soft=False)
    policy, tok = load_policy(model)
    ref = None
    if not lora:  # with LoRA, TRL uses the adapter-disabled model as the reference
        ref, _ = load_policy(model)
        ref.eval()
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
        peft_config=lora_config("CAUSAL_LM") if lora else None,
    )
    ctx = {"cfg": cfg, "settings": settings, "tokenizer": tok, "data": data_provenance(data_dir, meta, len(rows))}
    return trainer, ctx


def train_dpo(
    data_dir: str | Path,
    model: str,
    out_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    **overrides: Any,
) -> TrainResult:
    """DPO-train ``model`` on a preference dataset directory (``overrides`` are DPOConfig fields)."""
    trainer, ctx = build_dpo_trainer(data_dir, model, out_dir, config=config, config_file=config_file,
                                     lora=lora, **overrides)
    seconds = run_training(trainer)
    summary = base_summary("dpo", model=model, settings=ctx["settings"], config=ctx["cfg"], lora=lora,
                           data=ctx["data"], seconds=seconds, trainer=trainer)
    return save_trained(trainer.model, ctx["tokenizer"], out_dir, summary)
