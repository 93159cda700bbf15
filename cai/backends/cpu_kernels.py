"""cai's own CPU kernels (backends/csrc/), compiled on first use; None wherever they cannot be.

Today one: decode attention over the KV buffer (csrc/decode_attention.cpp), AVX-512 only.
It is built with torch's C++ extension tool (a C++ compiler and ninja: about 25 s on 2
cores, once per machine, torch version and source; kept under ``cache_dir()/kernels``).
Everything that can go wrong (no AVX-512, no compiler or ninja, a failed build, a read-only
cache) leaves it unused with one log line: callers fall back to torch's ops.
``CAI_CPU_KERNELS=0`` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "decode_attention.cpp"

#: CPU flags the kernel's instructions need (AVX-512 foundation; bf16 is converted, not multiplied)
REQUIRED_FLAGS = ("avx512f",)


#: where the CPU's flags are read (a test points it elsewhere)
CPUINFO = Path("/proc/cpuinfo")


def _cpu_flags() -> set[str]:
    from cai.hardware import cpu_flags

    return cpu_flags(CPUINFO)


def why_not() -> str | None:
    """Why the kernels cannot be built here (None: they can be tried)."""
    import platform

    if os.environ.get("CAI_CPU_KERNELS", "1") == "0":
        return "CAI_CPU_KERNELS=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not x86-64 ({platform.machine()})"
    missing = [f for f in REQUIRED_FLAGS if f not in _cpu_flags()]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")):
        return "no C++ compiler (c++ or g++ on PATH, or CXX)"
    try:
        from torch.utils.cpp_extension import is_ninja_available
    except ImportError:
        return "torch has no C++ extension support"
    if not is_ninja_available():
        # the ninja wheel (a cai dependency) puts its binary in the venv, which PATH may not hold
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass
        if not is_ninja_available():
            return "ninja is not installed (pip install ninja)"
    return None


@functools.cache
def decode_attention_kernel() -> Any | None:
    """The compiled decode-attention module (``decode_scores``, ``decode_values``, ``supports``), or None."""
    reason = why_not()
    if reason:
        log.info("cai CPU kernels not used: %s", reason)
        return None
    import torch
    from torch.utils.cpp_extension import load

    from cai.models import cache_dir

    source = SOURCE.read_bytes()
    # one build per source, torch and CPU: -march=native code must not travel to another CPU
    key = hashlib.sha256(source + torch.__version__.encode() + " ".join(sorted(_cpu_flags())).encode()).hexdigest()[:12]
    build = cache_dir() / "kernels" / f"decode_attention-{key}"
    name = f"cai_decode_attention_{key}"
    if not (build / f"{name}.so").exists():
        # a visible line (the CLI shows warnings by default): the first generate call pauses for it
        log.warning("cai: compiling the CPU decode-attention kernel once for this machine (~30 s; "
                    "CAI_CPU_KERNELS=0 skips it)")
    try:
        build.mkdir(parents=True, exist_ok=True)
        module = load(name=name, sources=[str(SOURCE)], build_directory=str(build),
                      extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # noqa: BLE001 - any build failure means: use torch's ops
        log.warning("cai CPU kernels not used: building %s failed (%s: %s)", SOURCE.name, type(exc).__name__,
                    str(exc).strip().splitlines()[-1:] or "")
        return None
    log.info("cai CPU kernels: decode attention built in %s", build)
    return module
