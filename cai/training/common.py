"""What every trainer adapter shares: config building, data checks, LoRA, saving.

A trainer's settings are its TRL config's own fields, so TRL's documentation is
the reference and nothing is documented twice. They are layered, lowest first:
cai's CPU-friendly defaults, then the YAML file (``config_file``) or ``config``
dict, then explicit overrides (CLI flags); ``None`` overrides are ignored.

Each trained model is saved as a plain safetensors directory (LoRA merged in),
with its tokenizer and ``training_summary.json``, so ``cai`` loads it as a model
spec like any other directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import DataError, UserInputError

log = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
CHECKPOINT_SUBDIR = "checkpoints"

#: Which `cai train` command (and which `cai generate` command makes its data) fits each dataset kind.
COMMAND_FOR_KIND = {
    "sft": "cai train sft",
    "preference": "cai train reward / cai train dpo",
    "responses": "none yet: label it first with cai generate preferences",
    "prompts": "cai train ppo / rloo / grpo (as --prompts)",
}


class TrainingConfigError(UserInputError):
    """A trainer config file or option that TRL would not accept."""


@dataclass
class TrainResult:
    """Where the trained model was saved, and what ``training_summary.json`` holds."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)


# --- config ----------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there, bf16 autocast trains ~2x faster.

    ``CAI_TRAIN_BF16=0`` (or ``1``) overrides the detection.
    """
    forced = os.environ.get("CAI_TRAIN_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_friendly_defaults() -> dict[str, Any]:
    """Defaults every trainer starts from: small batches, no checkpoints, fp32 on CPU.

    TRL turns bf16 and gradient checkpointing on by default; on a CPU without bf16
    units (FACTS.md) both only slow training down, so they follow the hardware here:
    bf16 autocast on a GPU with bf16 or a CPU with AVX512-BF16/AMX, fp32 elsewhere.
    """
    import torch

    cuda = torch.cuda.is_available()
    bf16 = bool(cuda and torch.cuda.is_bf16_supported()) or (not cuda and cpu_has_native_bf16())
    return {
        # Without a GPU, TRL refuses bf16 unless told the CPU is meant.
        **({"use_cpu": True} if bf16 and not cuda else {}),
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_train_epochs": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": bf16,
        # transformers 5 renamed gradient_checkpointing (TRL defaults it on) to activation_checkpointing.
        "activation_checkpointing": False,
        "gradient_checkpointing": False,
        "seed": 0,
        "disable_tqdm": os.environ.get("CAI_NO_PROGRESS") == "1",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping of TRL config fields."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TrainingConfigError(f"{p}: config file not found; check the path")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise TrainingConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{p}: expected a mapping of config fields (key: value), got {type(data).__name__}")
    return data


def build_config(
    config_cls: type,
    out_dir: str | Path,
    *,
    defaults: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build a TRL config: defaults < file < ``config`` dict < overrides. Returns (config, settings).

    ``output_dir`` always comes from ``out_dir`` (checkpoints go in a subdirectory,
    the final model at the top), so a shared YAML can't write into another run.
    """
    valid = {f.name for f in dataclasses.fields(config_cls) if f.init}
    settings: dict[str, Any] = {**cpu_friendly_defaults(), **(defaults or {})}
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), load_config_file(config_file)))
    if config:
        layers.append(("config", dict(config)))
    layers.append(("options", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for source, layer in layers:
        for key, value in layer.items():
            if key not in valid:
                close = _close_names(key, valid)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; see {config_cls.__name__} in TRL's docs"
                raise TrainingConfigError(f"{source}: unknown {config_cls.__name__} field '{key}'{hint}")
            if key == "output_dir":
                log.warning("%s: ignoring output_dir; the model goes to --out (%s)", source, out_dir)
                continue
            settings[key] = value
            if key == "gradient_checkpointing" and "activation_checkpointing" not in layer:
                settings.pop("activation_checkpointing", None)  # the old name, set on purpose, wins
    if "activation_checkpointing" in valid and "activation_checkpointing" in settings:
        settings.pop("gradient_checkpointing", None)  # only the new name, so transformers doesn't warn
    settings = {k: v for k, v in settings.items() if k in valid}
    try:
        cfg = config_cls(output_dir=str(Path(out_dir) / CHECKPOINT_SUBDIR), **settings)
    except (TypeError, ValueError) as e:
        raise TrainingConfigError(f"{config_cls.__name__}: {str(e).splitlines()[0]}; fix the config or option") from None
    return cfg, settings


def _close_names(key: str, valid: set[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.75)


# --- data ------------------------------------------------------------------------------


def require_kind(data_dir: str | Path, expected: str, command: str) -> dict[str, Any]:
    """Refuse a dataset of the wrong kind before any model loads; returns its metadata."""
    from cai.data import read_meta

    meta = read_meta(data_dir)
    kind = meta.get("kind", "unknown")
    if kind != expected:
        fits = COMMAND_FOR_KIND.get(kind, "no cai train command")
        raise DataError(
            f"{data_dir}: holds '{kind}' rows, but `{command}` needs '{expected}' rows; "
            f"for '{kind}' rows use: {fits}"
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


def lora_config(task_type: str, *, modules_to_save: list[str] | None = None) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
        task_type=task_type, modules_to_save=modules_to_save,
    )


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


def merged(model: Any) -> Any:
    """The model with any LoRA adapter folded in, so it saves as plain weights."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but a plain model needs nothing from it
        return model
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


# --- running and saving -----------------------------------------------------------------


def run_training(trainer: Any) -> float:
    """Train; returns wall seconds. A bad setting found by TRL mid-setup becomes one line."""
    started = time.time()
    trainer.train()
    return time.time() - started


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
    lora: bool,
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
    from cai.data import META_FILE, PromptRecord, load_prompts, read_meta

    if isinstance(prompts, (list, tuple)):
        records = list(prompts)[:limit] if limit else list(prompts)
        if not records or not all(isinstance(r, PromptRecord) for r in records):
            raise DataError("prompts: expected a prompt-set path or a non-empty list of PromptRecord")
        return records, {"source": "in-memory", "prompts": len(records)}
    path = Path(prompts)
    if path.is_dir() and (path / META_FILE).is_file():
        kind = read_meta(path).get("kind")
        if kind in ("sft", "preference"):
            raise DataError(
                f"{path}: holds '{kind}' rows, not prompts; for them use: {COMMAND_FOR_KIND[kind]} "
                "(give online RL a prompt file or a prompts dataset)"
            )
    records = load_prompts(path, limit=limit)
    return records, {"source": str(path.resolve()), "prompts": len(records)}


def config_class(trainer: str) -> type:
    """The TRL config class behind one of our trainers (imports trl)."""
    import importlib

    where = {
        "sft": ("trl", "SFTConfig"), "reward": ("trl", "RewardConfig"), "dpo": ("trl", "DPOConfig"),
        "rloo": ("trl", "RLOOConfig"), "grpo": ("trl", "GRPOConfig"),
        "ppo": ("trl.experimental.ppo", "PPOConfig"),
    }
    if trainer not in where:
        raise UserInputError(f"trainer '{trainer}' unknown; use one of: {', '.join(where)}")
    module, name = where[trainer]
    return getattr(importlib.import_module(module), name)


def check_config_fields(trainer: str, fields: dict[str, Any], source: str) -> None:
    """Reject unknown TRL config keys up front (before any model loads), naming the close ones."""
    cls = config_class(trainer)
    valid = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in fields:
        if key not in valid:
            close = _close_names(key, valid)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; see {cls.__name__} in TRL's docs"
            raise TrainingConfigError(f"{source}: unknown {cls.__name__} field '{key}'{hint}")
