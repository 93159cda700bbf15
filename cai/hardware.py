"""What this machine's CPU computes natively, and the dtype cai picks for it.

Both the backends (inference) and cai.training read this, so it imports neither torch
at module level nor TRL. The flags alone do not decide: on the AVX-512 EPYC in FACTS.md
bf16 GEMMs ran ~400 GFLOP/s against ~175 for fp32 (2 threads), but on a 2-core Intel
Xeon that also reports ``avx512_bf16`` oneDNN's bf16 kernel (brg_matmul:avx512_core_bf16)
ran 70-80 GFLOP/s against 110-135 for fp32 (one thread), and bf16 generation and
training were 13% and 50% slower than fp32 there. So on a CPU with the flags, cai times
one decode-shaped and one training-shaped product in both dtypes, once per machine
(the verdict is kept in the cache directory, so every later run picks the same dtype
and resumed runs keep their fingerprints), and takes bf16 only where it is clearly
faster. Without the flags bf16 is emulated: fp32, nothing timed.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: bf16 must run the timed products at least this much faster than fp32 to be chosen:
#: it costs precision (benchmarks/bf16_quality.py), so parity is not enough.
BF16_MIN_SPEEDUP = 1.2

#: (rows, in, out) of the timed products: a decode step of a ~135M model at 128 rows
#: and a training batch of 8 x 128 tokens.
TIMED_SHAPES = ((128, 576, 1536), (1024, 576, 1536))

#: /proc/cpuinfo flags that mean bf16 matrix products run on native units.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

#: Overrides what ``dtype=auto`` picks for inference on a CPU: float32 or bfloat16.
CPU_DTYPE_ENV = "CAI_CPU_DTYPE"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags this CPU reports (empty off Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_features(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The native-bf16 flags this CPU reports (empty off Linux or without them)."""
    return cpu_flags(cpuinfo) & set(NATIVE_BF16_FLAGS)


def time_gemms(shapes: tuple[tuple[int, int, int], ...] = TIMED_SHAPES, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of ``torch.nn.functional.linear`` over ``shapes``, per dtype (best of ``reps``)."""
    import time

    import torch

    out: dict[str, float] = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        seconds = flops = 0.0
        for m, k, n in shapes:
            x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            torch.nn.functional.linear(x, w)  # warm-up: oneDNN builds its kernel on the first call
            best = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - t)
            seconds += best
            flops += 2 * m * k * n
        out[name] = round(flops / seconds / 1e9, 1)
    return out


def _machine_key() -> dict[str, Any]:
    """What the verdict depends on: the CPU, its bf16 flags, torch's version and thread count."""
    import torch

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return {"cpu": model, "flags": sorted(cpu_bf16_features()), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


_VERDICT: dict[str, Any] | None = None


def bf16_verdict() -> dict[str, Any]:
    """Whether bf16 pays off on this CPU: ``{"bf16": bool, "why": str, "gflops": {...}}``.

    Flags first (none: fp32, nothing timed); then the timed products, read from
    ``<cache>/cpu-bf16.json`` when this machine (``_machine_key``) was timed before.
    """
    global _VERDICT
    if _VERDICT is not None:
        return _VERDICT
    features = cpu_bf16_features()
    if not features:
        _VERDICT = {"bf16": False, "why": "CPU has no native bf16 (no avx512_bf16/amx_bf16)", "gflops": None}
        return _VERDICT
    from cai.models import cache_dir

    key = _machine_key()
    path = cache_dir() / "cpu-bf16.json"
    try:
        saved = json.loads(path.read_text())
        if saved.get("machine") == key:
            _VERDICT = saved["verdict"]
            return _VERDICT
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    gflops = time_gemms()
    speedup = gflops["bfloat16"] / max(gflops["float32"], 1e-9)
    flags = ", ".join(sorted(features))
    fast = speedup >= BF16_MIN_SPEEDUP
    _VERDICT = {
        "bf16": fast,
        "why": f"CPU has {flags}; bf16 products ran {speedup:.2f}x fp32 here "
               f"({gflops['bfloat16']:.0f} vs {gflops['float32']:.0f} GFLOP/s), "
               + ("so bf16" if fast else f"under {BF16_MIN_SPEEDUP}x, so fp32"),
        "gflops": gflops,
    }
    log.info("bf16 on this CPU: %s", _VERDICT["why"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"machine": key, "verdict": _VERDICT}, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only cache: time again next process
        pass
    return _VERDICT


def cpu_bf16_pays_off(env: str = "CAI_TRAIN_BF16") -> bool:
    """Whether to compute in bf16 on this CPU (training's autocast): flags, then the timing.

    ``$env=0`` (or ``1``) overrides; training reads ``CAI_TRAIN_BF16``.
    """
    forced = os.environ.get(env)
    if forced in ("0", "1"):
        return forced == "1"
    return bool(bf16_verdict()["bf16"])


def auto_cpu_dtype() -> tuple[str, str]:
    """The dtype ``dtype=auto`` means for inference on this CPU, and why (for logs and provenance).

    bfloat16 where the CPU has bf16 units and they run products clearly faster than fp32
    (``bf16_verdict``; benchmarks/bf16_quality.py measured the soft labels and greedy text
    against fp32), float32 elsewhere. ``CAI_CPU_DTYPE`` overrides.
    """
    forced = os.environ.get(CPU_DTYPE_ENV, "").strip()
    if forced:
        if forced not in ("float32", "bfloat16"):
            from cai.errors import UserInputError

            raise UserInputError(f"{CPU_DTYPE_ENV}={forced!r}: use float32 or bfloat16")
        return forced, f"auto: {CPU_DTYPE_ENV}={forced}"
    verdict = bf16_verdict()
    return ("bfloat16" if verdict["bf16"] else "float32"), f"auto: {verdict['why']}"


__all__ = ["BF16_MIN_SPEEDUP", "CPU_DTYPE_ENV", "NATIVE_BF16_FLAGS", "auto_cpu_dtype", "bf16_verdict",
           "cpu_bf16_features", "cpu_bf16_pays_off", "time_gemms"]
