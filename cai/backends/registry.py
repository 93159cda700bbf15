"""Which backend a ``kind`` names: built-ins by a lazy ``"module:factory"`` map, plugins by entry point.

A factory is ``factory(model, **options) -> Backend``. ``kind`` may carry an inner kind
after a colon (``ray:vllm``: Ray replicas of vLLM backends), passed as ``inner_kind``.
A package adds a backend with an entry point in the ``cai.backends`` group
(``[project.entry-points."cai.backends"] mine = "my_pkg.backend:make"``), found the
same way as the built-ins, which are resolved by string so that choosing one imports
only its own module (vLLM, Ray, the OpenAI client are heavy or optional).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable

#: The built-in kinds; the value is resolved on first use.
BUILTIN: dict[str, str] = {
    "transformers": "cai.backends.transformers:TransformersBackend",
    "openai": "cai.backends.openai:OpenAIBackend",  # model = the server's model name; URL from base_url=
    "vllm": "cai.backends.vllm:VLLMBackend",
    "ray": "cai.backends.ray_pool:ray_backend",  # "ray:vllm": replicas of another kind
}


def backend_kinds() -> dict[str, str]:
    """Every kind: the built-ins, then installed plugins (a plugin may not shadow a built-in)."""
    kinds = dict(BUILTIN)
    for ep in entry_points(group="cai.backends"):
        kinds.setdefault(ep.name, ep.value)
    return kinds


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    obj: Any = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def make_backend(model: str, *, kind: str = "transformers", **kwargs: Any) -> Any:
    """Build a backend by kind for a model spec."""
    name, _, inner = kind.partition(":")
    kinds = backend_kinds()
    if name not in kinds:
        from cai.errors import UserInputError

        raise UserInputError(f"backend '{kind}' unknown; use one of: {', '.join(sorted(kinds))}, ray:<kind>")
    if inner:
        kwargs["inner_kind"] = inner
    return _resolve(kinds[name])(model, **kwargs)


__all__ = ["BUILTIN", "backend_kinds", "make_backend"]
