"""What every trainer shares: data checks, models, LoRA, the default trainer, saving.

Each trained model is saved as a plain safetensors directory (LoRA merged in),
with its tokenizer and ``training_summary.json``, so ``cai`` loads it as a model
spec like any other directory.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai.errors import DataError, UserInputError
from cai.training.config import CHECKPOINT_SUBDIR

if TYPE_CHECKING:
    from cai.training.spec import TrainJob

log = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"


@dataclass
class TrainResult:
    """Where the trained model was saved, and what ``training_summary.json`` holds."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)


# --- data ------------------------------------------------------------------------------


def require_kind(data_dir: str | Path, expected: str, command: str) -> dict[str, Any]:
    """Refuse a dataset of the wrong kind before any model loads; returns its metadata."""
    from cai.data import is_cai_dataset, read_meta
    from cai.layout import preference_view
    from cai.training.spec import commands_for_kind

    meta = read_meta(data_dir)
    kind = meta.get("kind", "unknown")
    if kind != expected:
        fits = commands_for_kind(kind)
        view = ""
        if expected == "preference":
            if is_cai_dataset(preference_view(data_dir)):  # a revisions dataset carries its pairs
                view = f"; its revision ≻ initial pairs are in {preference_view(data_dir)}"
        raise DataError(
            f"{data_dir}: holds '{kind}' rows, but `{command}` needs '{expected}' rows; "
            f"for '{kind}' rows use: {fits}{view}"
        )
    if meta.get("status") != "complete":
        log.warning("%s: dataset status is '%s' (not finalized); training on the rows written so far",
                    data_dir, meta.get("status"))
    return meta


def data_provenance(data_dir: str | Path, meta: dict[str, Any], rows: int) -> dict[str, Any]:
    return {
        "path": str(Path(data_dir).resolve()),
        "kind": meta.get("kind"),
        "rows_used": rows,
        "counts": meta.get("counts", {}),
        "fingerprint_hash": meta.get("fingerprint_hash"),
        "provenance": meta.get("provenance", {}),
    }


def as_messages(value: Any, role: str, where: str) -> list[dict[str, str]]:
    """A prompt/response field as a chat message list (plain strings become one message)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: expected text or a list of {{role, content}} messages")


def split_eval(rows: list[dict[str, Any]], fraction: float, seed: int = 0) -> tuple[list, list]:
    """A deterministic held-out split; empty when there are too few rows to spare one."""
    import random

    if fraction <= 0 or len(rows) < 4:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(rows) * fraction)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


# --- models ----------------------------------------------------------------------------


def lora_config(task_type: str, *, modules_to_save: list[str] | None = None,
                settings: bool | dict[str, Any] | None = None) -> Any:
    """cai's LoRA (r=8, alpha 16, no dropout, all linear layers), with ``settings`` (LoraConfig fields) over it."""
    from peft import LoraConfig

    args: dict[str, Any] = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                task_type=task_type, modules_to_save=modules_to_save)
    if isinstance(settings, dict):
        extra = dict(settings)
        if modules_to_save and extra.get("modules_to_save"):
            extra["modules_to_save"] = [*modules_to_save, *extra["modules_to_save"]]
        args.update(extra)
    return LoraConfig(**args)


def load_policy(spec: str) -> tuple[Any, Any]:
    """A causal LM (fp32 weights; mixed precision is the trainer's job) and its tokenizer."""
    from cai.models import load_model

    loaded = load_model(spec, device="cpu", dtype="float32")
    loaded.model.train()
    return loaded.model, loaded.tokenizer


def load_reward_model(spec: str, *, from_policy: bool = False) -> tuple[Any, Any]:
    """A sequence classifier with one output (a reward model) and its tokenizer.

    ``from_policy=True`` starts a fresh scalar head on a policy's weights (what
    ``train_reward`` does); otherwise ``spec`` must already be a reward model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from cai.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(spec)
    tok = load_tokenizer(spec)
    if not from_policy:
        arch = AutoConfig.from_pretrained(path).architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in arch):
            raise UserInputError(
                f"model '{spec}' is not a reward model (architectures: {arch}); train one with cai train reward"
            )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized" is expected when from_policy
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, use_safetensors=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    # Batched scoring finds each sequence's last token through pad_token_id.
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


#: Attention-score memory (bytes kept for the backward pass, all layers) under which training on a CPU
#: runs the plain ("eager") attention: for the demo's short rows it ran fwd+bwd ~3x faster than
#: torch's CPU flash kernel (11 ms against 32 ms a layer at 8 x 130 tokens, bf16), which saved ~0.6 s of
#: a 4.3 s SFT step; flash keeps memory linear in the length, so long rows keep it.
EAGER_ATTENTION_BYTES = 1.5e9


def training_attention(model: Any, rows: int, length: int) -> str:
    """The attention the trainer runs for batches of ``rows`` x ``length`` tokens (see EAGER_ATTENTION_BYTES)."""
    cfg = model.config
    current = getattr(cfg, "_attn_implementation", None) or "sdpa"
    if model.device.type != "cpu" or current not in ("sdpa", "eager"):
        return current
    heads, layers = getattr(cfg, "num_attention_heads", 0), getattr(cfg, "num_hidden_layers", 0)
    # Scores in fp32 for the softmax and its bf16/fp32 output, ~8 bytes an element, kept for the backward.
    if heads and layers and rows * heads * length * length * 8 * layers <= EAGER_ATTENTION_BYTES:
        return "eager"
    return "sdpa"


def use_training_attention(model: Any, job: "TrainJob", rows_per_example: int = 1) -> None:
    """Switch ``model`` to `training_attention` for the job's batches; recorded in ``job.info``."""
    rows = int(getattr(job.config, "per_device_train_batch_size", 1) or 1) * rows_per_example
    length = int(getattr(job.config, "max_length", None) or 512)
    pick = training_attention(model, rows, length)
    if pick != (getattr(model.config, "_attn_implementation", None) or "sdpa"):
        model.set_attn_implementation(pick)
    job.info["attention"] = pick


def merged(model: Any) -> Any:
    """The model with any LoRA adapter folded in, so it saves as plain weights."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but a plain model needs nothing from it
        return model
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def policy_trainer(job: "TrainJob", *, encode: Any = None, prepare: Any = None, **extra: Any) -> Any:
    """The spec's TRL trainer on the policy (``job.model``) and ``job.rows``; ``extra`` goes to the trainer.

    ``encode(rows, tokenizer) -> rows``, when given, turns the rows into the trainer's
    tokenized rows once the tokenizer is loaded (SFT: ids built by `ChatEncoder`, so text
    in the data never becomes control tokens). ``prepare(model)``, when given, sees the loaded
    model before the trainer is built (SFT picks its loss from it).
    """
    from datasets import Dataset

    model, tok = load_policy(job.model)
    use_training_attention(model, job, 2 if job.spec.data_kind == "preference" else 1)
    if prepare is not None:
        prepare(model)
    job.tokenizer = tok
    rows = encode(job.rows, tok) if encode is not None else job.rows
    return job.spec.trainer_cls()(
        model=model, args=job.config, train_dataset=Dataset.from_list(rows), processing_class=tok,
        peft_config=lora_config("CAUSAL_LM", settings=job.lora) if job.lora else None, **extra,
    )


# --- running and saving -----------------------------------------------------------------


def run_training(trainer: Any, resume_from: Any = None) -> float:
    """Train (from checkpoint ``resume_from`` when given); returns wall seconds."""
    started = time.time()
    if resume_from is None:
        trainer.train()
    else:
        trainer.train(resume_from_checkpoint=str(resume_from))
    return time.time() - started


def resumes(trainer: Any) -> bool:
    """Whether the trainer's loop resumes from a checkpoint (transformers' Trainer does; TRL's PPO loop does not)."""
    import inspect

    return "resume_from_checkpoint" in inspect.signature(trainer.train).parameters


def losses_from(log_history: list[dict[str, Any]], key: str = "loss") -> list[dict[str, float]]:
    return [{"step": e.get("step"), key: e[key]} for e in log_history if key in e]


def save_trained(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    summary: dict[str, Any],
) -> TrainResult:
    """Save merged safetensors weights, the tokenizer and ``training_summary.json``."""
    import trl
    import transformers

    from cai import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = merged(model)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    ckpt = out / CHECKPOINT_SUBDIR
    if ckpt.is_dir() and not any(ckpt.iterdir()):
        ckpt.rmdir()  # TRL creates output_dir even when it saves no checkpoint
    tokenizer.save_pretrained(out)
    summary = {
        **summary,
        "versions": {"cai": __version__, "trl": trl.__version__, "transformers": transformers.__version__},
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return TrainResult(path=out, summary=summary)


def base_summary(
    trainer_name: str,
    *,
    model: str,
    settings: dict[str, Any],
    config: Any,
    lora: bool | dict[str, Any],
    data: dict[str, Any],
    seconds: float,
    trainer: Any,
    loss_key: str = "loss",
) -> dict[str, Any]:
    history = list(trainer.state.log_history)
    losses = losses_from(history, loss_key)
    return {
        "trainer": trainer_name,
        "base_model": model,
        "lora": lora,
        "config_class": type(config).__name__,
        "config": settings,
        "data": data,
        "steps": int(trainer.state.global_step),
        "seconds": round(seconds, 3),
        "losses": losses,
        "final_loss": losses[-1][loss_key] if losses else None,
        "log_history": history,
    }


# --- prompt sets (online RL) ------------------------------------------------------------


def load_prompt_records(prompts: Any, *, limit: int | None = None) -> tuple[list[Any], dict[str, Any]]:
    """A prompt-set path or a list of PromptRecord -> (records, provenance). Checked before any model loads."""
    from cai.data import PromptRecord, is_cai_dataset, load_prompts, read_meta

    if isinstance(prompts, (list, tuple)):
        records = list(prompts)[:limit] if limit else list(prompts)
        if not records or not all(isinstance(r, PromptRecord) for r in records):
            raise DataError("prompts: expected a prompt-set path or a non-empty list of PromptRecord")
        return records, {"source": "in-memory", "prompts": len(records)}
    path = Path(prompts)
    if path.is_dir() and is_cai_dataset(path):
        kind = read_meta(path).get("kind")
        if kind in ("sft", "preference"):
            from cai.training.spec import commands_for_kind

            raise DataError(
                f"{path}: holds '{kind}' rows, not prompts; for them use: {commands_for_kind(kind)} "
                "(give online RL a prompt file or a prompts dataset)"
            )
    records = load_prompts(path, limit=limit)
    return records, {"source": str(path.resolve()), "prompts": len(records)}
