"""A trainer's settings: its TRL config's own fields, layered and checked before any model loads.

TRL's documentation is the reference, so nothing is documented twice. Layers,
lowest first: cai's CPU-friendly defaults, the spec's defaults, the YAML file
(``config_file``) or ``config`` dict, then explicit overrides (CLI flags);
``None`` overrides are ignored.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from cai.hardware import cpu_bf16_pays_off  # lives there: the backends read it too
from cai.progress import bars_enabled
from cai.training.fields import TrainingConfigError, coerce_fields

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"


def cpu_friendly_defaults() -> dict[str, Any]:
    """Defaults every trainer starts from: small batches, no checkpoints, fp32 on CPU.

    TRL turns bf16 and gradient checkpointing on by default; on a CPU without bf16
    units (FACTS.md) both only slow training down, so they follow the hardware here:
    bf16 autocast on a GPU with bf16 or a CPU whose bf16 units run products clearly
    faster than fp32 (cai.hardware.bf16_verdict), fp32 elsewhere.
    """
    import torch

    cuda = torch.cuda.is_available()
    bf16 = bool(cuda and torch.cuda.is_bf16_supported()) or (not cuda and cpu_bf16_pays_off())
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
        # TRL's own bars (evaluation loops) only on a terminal; cai.training.logs draws the training bar.
        "disable_tqdm": not bars_enabled(),
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": cuda,
    }


def read_yaml_mapping(path: str | Path, *, not_found: str, what: str = "config fields") -> dict[str, Any]:
    """A YAML (or JSON) file holding one mapping; every way it can be wrong is one line naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TrainingConfigError(not_found)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise TrainingConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{p}: expected a mapping of {what} (key: value), got {type(data).__name__}")
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping of TRL config fields."""
    return read_yaml_mapping(path, not_found=f"{path}: config file not found; check the path")


# --- TRL recipes -------------------------------------------------------------------------------

#: Keys of TRL's ScriptArguments / ModelConfig that a recipe uses for what cai takes as arguments.
RECIPE_ARGS = {"model_name_or_path": "model", "dataset_name": "data", "use_peft": "lora"}
#: ModelConfig's LoRA keys -> peft LoraConfig arguments (cai's LoRA otherwise: r=8, alpha 16, all-linear).
RECIPE_LORA = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
               "lora_target_modules": "target_modules", "lora_modules_to_save": "modules_to_save",
               "use_rslora": "use_rslora", "use_dora": "use_dora"}
#: Recipe keys cai accepts only at the value that is what it does anyway.
RECIPE_FIXED: dict[str, tuple[Any, str]] = {
    "dataset_config": (None, "cai reads the dataset directory's own rows"),
    "dataset_train_split": ("train", "cai trains on all of the directory's rows"),
    "dataset_test_split": ("test", "cai holds out its own eval pairs (cai train reward --eval-fraction)"),
    "dataset_streaming": (False, "cai reads the rows into memory"),
    "ignore_bias_buffers": (False, "cai does not support it"),
    "model_revision": ("main", "give --model a local directory or a hub id at the revision you want"),
    "dtype": ("float32", "cai loads float32 weights; set bf16: true for mixed precision"),
    "torch_dtype": ("float32", "cai loads float32 weights; set bf16: true for mixed precision"),
    "attn_implementation": (None, "cai uses the model's default attention"),
    "trust_remote_code": (False, "cai loads only models transformers knows"),
    "lora_task_type": ("CAUSAL_LM", "cai picks the task type per trainer"),
    "lora_target_parameters": (None, "cai's LoRA targets modules"),
    "load_in_8bit": (False, "cai does not quantize"),
    "load_in_4bit": (False, "cai does not quantize"),
    "use_bnb_nested_quant": (False, "cai does not quantize"),
    "bnb_4bit_quant_type": ("nf4", "cai does not quantize"),
    "bnb_4bit_quant_storage": (None, "cai does not quantize"),
}


def recipe_args(path: str | Path) -> dict[str, Any]:
    """What a TRL recipe YAML says cai's arguments are: model, data, out, lora (True or LoraConfig settings)."""
    data = load_config_file(path)
    args: dict[str, Any] = {RECIPE_ARGS[k]: v for k, v in data.items() if k in RECIPE_ARGS and v is not None}
    if data.get("output_dir"):
        args["out"] = data["output_dir"]
    if data.get("reward_model_path"):  # a PPOConfig field: the reward model PPO trains against
        args["reward_model"] = data["reward_model_path"]
    lora = {RECIPE_LORA[k]: v for k, v in data.items() if k in RECIPE_LORA and v is not None}
    if lora:
        args["lora_settings"] = lora  # used when LoRA is on (use_peft here, or --lora)
    return args


def recipe_fields(path: str | Path, data: dict[str, Any]) -> dict[str, Any]:
    """A recipe's TRL config fields: its ScriptArguments / ModelConfig keys taken out (or refused, one line)."""
    fields = {}
    for key, value in data.items():
        if key in RECIPE_ARGS or key in RECIPE_LORA:
            continue  # the caller's arguments (the CLI reads them with recipe_args)
        if key in RECIPE_FIXED:
            expected, why = RECIPE_FIXED[key]
            if value != expected:
                raise TrainingConfigError(f"{path}: '{key}: {value}' is not supported ({why}); remove that line")
            continue
        if key == "env":
            raise TrainingConfigError(f"{path}: 'env' is not supported; set those variables in the shell")
        fields[key] = value
    return fields


def init_fields(config_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_cls) if f.init}


def _close_names(key: str, valid: set[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.75)


def check_known(config_cls: type, key: str, source: str, valid: set[str] | None = None) -> None:
    valid = init_fields(config_cls) if valid is None else valid
    if key not in valid:
        close = _close_names(key, valid)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; see {config_cls.__name__} in TRL's docs"
        raise TrainingConfigError(f"{source}: unknown {config_cls.__name__} field '{key}'{hint}")


def build_config(
    config_cls: type,
    out_dir: str | Path,
    *,
    defaults: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    config_source: str = "config",
) -> tuple[Any, dict[str, Any]]:
    """Build a TRL config: defaults < file < ``config`` dict < overrides. Returns (config, settings).

    ``output_dir`` always comes from ``out_dir`` (checkpoints go in a subdirectory,
    the final model at the top), so a shared YAML can't write into another run.
    """
    valid = init_fields(config_cls)
    settings: dict[str, Any] = {**cpu_friendly_defaults(), **(defaults or {})}
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), recipe_fields(config_file, load_config_file(config_file))))
    if config:
        layers.append((config_source, dict(config)))
    layers.append(("options", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for source, layer in layers:
        for key in layer:
            check_known(config_cls, key, source, valid)
        given = layer.pop("output_dir", None)
        if given is not None and Path(given).resolve() != Path(out_dir).resolve():
            log.warning("%s: ignoring output_dir; the model goes to --out (%s)", source, out_dir)
        for key, value in coerce_fields(config_cls, layer, source).items():
            settings[key] = value
            if key == "gradient_checkpointing" and "activation_checkpointing" not in layer:
                settings.pop("activation_checkpointing", None)  # the old name, set on purpose, wins
    if "activation_checkpointing" in valid and "activation_checkpointing" in settings:
        settings.pop("gradient_checkpointing", None)  # only the new name, so transformers doesn't warn
    settings = {k: v for k, v in settings.items() if k in valid}
    try:
        cfg = config_cls(output_dir=str(Path(out_dir) / CHECKPOINT_SUBDIR), **settings)
    except (TypeError, ValueError) as e:
        why = str(e).splitlines()[0].rstrip(".")
        raise TrainingConfigError(f"{config_cls.__name__}: {why}; fix the config or option") from None
    return cfg, settings
