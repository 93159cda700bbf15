"""Re-run a `cai train ...` command under `accelerate launch` (DDP, DeepSpeed ZeRO-3, FSDP, many nodes).

The trainers themselves do not change: TRL already runs distributed when
started by accelerate. ``cai train sft ... --launcher accelerate
--accelerate-config ddp.yaml`` therefore rebuilds its own command line without
the launcher flags and hands it to ``python -m accelerate.commands.launch
--config_file ddp.yaml --module cai.cli.main ...``. The relaunched processes get
the command without the launcher flags, so they train in place; they also see
``CAI_LAUNCHED_BY=accelerate``, a guard against launching twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from cai.errors import CaiError, UserInputError

#: Set in the environment of relaunched processes, so they never relaunch again.
LAUNCHED_ENV = "CAI_LAUNCHED_BY"
#: cai's own flags that choose the launcher; removed before relaunching.
LAUNCHER_FLAGS = ("--launcher", "--accelerate-config")
#: accelerate launch flags a caller may override (multi-node runs differ only in these).
OVERRIDES = ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port")
REQUIRED_KEYS = ("compute_environment", "distributed_type", "num_processes")


def already_launched() -> bool:
    """True inside a process that accelerate started for cai (train in place, do not relaunch)."""
    return bool(os.environ.get(LAUNCHED_ENV))


def strip_launcher_args(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--launcher X`` / ``--accelerate-config Y`` (either ``--flag value`` or ``--flag=value``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCHER_FLAGS:
            skip = True
            continue
        if arg.startswith(tuple(f + "=" for f in LAUNCHER_FLAGS)):
            continue
        out.append(arg)
    return out


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    """Load an accelerate YAML config, with a one-line error naming the fix if it is not one."""
    from cai.training.config import read_yaml_mapping

    data = read_yaml_mapping(path, what="accelerate settings", not_found=(
        f"accelerate config '{path}' not found; see examples/accelerate/ (ddp.yaml, zero3.yaml, fsdp.yaml)"))
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise UserInputError(f"{path}: missing {', '.join(missing)}; start from examples/accelerate/ddp.yaml")
    return data


def build_accelerate_argv(
    cai_argv: Sequence[str],
    config_file: str | Path,
    *,
    python: str = sys.executable,
    **overrides: Any,
) -> list[str]:
    """The command that runs ``cai <cai_argv>`` under accelerate with ``config_file``.

    ``cai_argv`` is the command line after the program name (``["train", "sft", ...]``);
    the launcher flags are removed from it. ``overrides`` are accelerate launch flags
    from ``OVERRIDES`` (e.g. ``machine_rank=1``) that take precedence over the file.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise UserInputError(f"unknown accelerate override(s) {unknown}; use {list(OVERRIDES)}")
    read_accelerate_config(config_file)
    argv = [python, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    for name in OVERRIDES:
        value = overrides.get(name)
        if value is not None:
            argv += [f"--{name}", str(value)]
    return argv + ["--module", "cai.cli.main", *strip_launcher_args(cai_argv)]


def launch_with_accelerate(cai_argv: Sequence[str], config_file: str | Path, **overrides: Any) -> int:
    """Run the command under accelerate and return its exit code (the caller exits with it)."""
    if already_launched():
        raise CaiError("already running under accelerate; the launcher flags are ignored inside it")
    argv = build_accelerate_argv(cai_argv, config_file, **overrides)
    env = {**os.environ, LAUNCHED_ENV: "accelerate"}
    return subprocess.run(argv, env=env, check=False).returncode


__all__ = [
    "LAUNCHED_ENV", "already_launched", "build_accelerate_argv", "launch_with_accelerate",
    "read_accelerate_config", "strip_launcher_args",
]
