"""What this machine's CPU computes natively, and the dtype cai picks for it.

Both the backends (inference) and cai.training read this, so it imports neither torch
at module level nor TRL. On the AVX-512 EPYC in FACTS.md, bf16 GEMMs ran ~400 GFLOP/s
against ~175 for fp32 (2 threads); on a CPU without bf16 units bf16 is emulated and
slower than fp32, so the choice follows the CPU flags, not a guess.
"""

from __future__ import annotations

import os
from pathlib import Path

#: /proc/cpuinfo flags that mean bf16 matrix products run on native units.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

#: Overrides what ``dtype=auto`` picks for inference on a CPU: float32 or bfloat16.
CPU_DTYPE_ENV = "CAI_CPU_DTYPE"


def cpu_bf16_features(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The native-bf16 flags this CPU reports (empty off Linux or without them)."""
    try:
        words = set(Path(cpuinfo).read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return set()
    return {f for f in NATIVE_BF16_FLAGS if f in words}


def cpu_has_native_bf16(env: str = "CAI_TRAIN_BF16") -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there, bf16 runs ~2x faster.

    ``$env=0`` (or ``1``) overrides the detection; training reads ``CAI_TRAIN_BF16``.
    """
    forced = os.environ.get(env)
    if forced in ("0", "1"):
        return forced == "1"
    return bool(cpu_bf16_features())


def auto_cpu_dtype() -> tuple[str, str]:
    """The dtype ``dtype=auto`` means for inference on this CPU, and why (for logs and provenance).

    bfloat16 where the CPU computes it natively (benchmarks/bf16_quality.py measured the
    soft labels and greedy text against fp32), float32 elsewhere. ``CAI_CPU_DTYPE`` overrides.
    """
    forced = os.environ.get(CPU_DTYPE_ENV, "").strip()
    if forced:
        if forced not in ("float32", "bfloat16"):
            from cai.errors import UserInputError

            raise UserInputError(f"{CPU_DTYPE_ENV}={forced!r}: use float32 or bfloat16")
        return forced, f"auto: {CPU_DTYPE_ENV}={forced}"
    features = cpu_bf16_features()
    if features:
        return "bfloat16", f"auto: CPU computes bf16 natively ({', '.join(sorted(features))})"
    return "float32", "auto: CPU has no native bf16 (no avx512_bf16/amx_bf16)"


__all__ = ["CPU_DTYPE_ENV", "NATIVE_BF16_FLAGS", "auto_cpu_dtype", "cpu_bf16_features", "cpu_has_native_bf16"]
