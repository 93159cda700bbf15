"""A trainer's settings: its TRL config's own fields, layered and checked before any model loads.

TRL's documentation is the reference, so nothing is documented twice. Layers,
lowest first: cai's CPU-friendly defaults, the spec's defaults, the YAML file
(``config_file``) or ``config`` dict, then explicit overrides (CLI flags);
``None`` overrides are ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from cai.training.fields import TrainingConfigError, coerce_fields

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"


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
        layers.append((str(config_file), dict(load_config_file(config_file))))
    if config:
        layers.append((config_source, dict(config)))
    layers.append(("options", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for source, layer in layers:
        for key in layer:
            check_known(config_cls, key, source, valid)
        if layer.pop("output_dir", None) is not None:
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


def config_class(trainer: str) -> type:
    """The TRL config class behind one of the registered trainers (imports trl)."""
    from cai.training.spec import get_trainer

    return get_trainer(trainer).config_cls()


def check_config_fields(trainer: str, fields: dict[str, Any], source: str) -> None:
    """Refuse, before any model loads, what the trainer's TRL config would not take.

    Unknown keys (naming the close ones), values of the wrong type or out of range,
    and combinations the config class itself refuses, each as one line naming ``source``.
    """
    import tempfile

    from cai.training.spec import get_trainer

    spec = get_trainer(trainer)
    cls = spec.config_cls()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build_config(cls, tmp, defaults=dict(spec.defaults), config=fields, config_source=source)
        except TrainingConfigError as e:
            msg = str(e)
            raise TrainingConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None
