"""A backend that loads on first use, so a fully cached workbench run never loads a model."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from cai.backends.base import Backend


class LazyBackend:
    """Wraps a backend, or a zero-argument factory that builds one; ``get()`` builds it once."""

    def __init__(self, backend_or_factory: Backend | Callable[[], Backend], model_key: str | None = None) -> None:
        if hasattr(backend_or_factory, "generate"):
            self._backend: Backend | None = backend_or_factory  # type: ignore[assignment]
            self._factory: Callable[[], Backend] | None = None
        else:
            self._backend = None
            self._factory = backend_or_factory  # type: ignore[assignment]
        if model_key is None:
            if self._backend is None:
                raise ValueError("a backend factory needs a model_key (the model's identity for the cache)")
            model_key = self._backend.model_id
        self.model_key = model_key
        #: Seconds spent building the backend (0 when it was given ready, or never needed).
        self.load_s = 0.0

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def get(self) -> Backend:
        if self._backend is None:
            assert self._factory is not None
            t0 = time.perf_counter()
            self._backend = self._factory()
            self.load_s = time.perf_counter() - t0
        return self._backend


def model_identity(model: str, kind: str = "transformers", dtype: str = "auto", device: str = "auto") -> str:
    """What names a model for the cache, without loading it: the spec as given, plus the backend kind,
    dtype and device where they are not the defaults; for a local directory also a hash of its config
    and of the size and modification time of its weight files, so retraining into the same directory
    is a new model."""
    name = model
    path = Path(model).expanduser()
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.iterdir()):
            if f.name == "config.json":
                h.update(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin", ".gguf") and f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        name = f"{model}#{h.hexdigest()[:12]}"
    extra = [x for x, default in ((kind, "transformers"), (dtype, "auto"), (device, "auto")) if x != default]
    return f"{name} ({', '.join(extra)})" if extra else name


__all__ = ["LazyBackend", "model_identity"]
