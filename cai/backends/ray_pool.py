"""Spread generation and scoring over N backend replicas with Ray.

``RayBackend`` implements the Backend protocol itself: each ``generate`` or
``choice_logprobs`` batch is cut into contiguous shards, one per replica (a
Ray actor that built its own backend from a spec), run in parallel, and the
results are concatenated back in input order. Stages and ``run_stage`` are
unchanged, so a run still writes as it goes and resumes where it stopped.

Replicas may live on many machines: start a Ray cluster (``ray start --head`` on
one node, ``ray start --address=HEAD:6379`` on the others) and set
``RAY_ADDRESS`` (or pass ``address=``). Each replica asks Ray for
``num_cpus``/``num_gpus`` so Ray places one per GPU.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Sequence

from cai.backends.base import Backend, ChoiceScores, Conversation, Generation, SamplingParams
from cai.errors import CaiError, UserInputError

log = logging.getLogger(__name__)

BackendFactory = Callable[[], Backend]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserInputError("the ray backend needs Ray: pip install 'cai[ray]'") from None
    return ray


class _Replica:
    """The actor body: one backend in one worker process."""

    def __init__(self, factory: BackendFactory) -> None:
        self.backend = factory()

    def info(self) -> dict[str, Any]:
        from cai.backends.base import provenance

        return {"pid": os.getpid(), "model_id": self.backend.model_id,
                "context_window": self.backend.context_window, "provenance": provenance(self.backend)}

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[Generation]:
        return self.backend.generate(conversations, params)

    def choice_logprobs(self, conversations: list[Conversation], options: list[str]) -> list[ChoiceScores]:
        return self.backend.choice_logprobs(conversations, options)

    def check_options(self, options: list[str]) -> None:
        self.backend.check_options(options)

    def count_tokens(self, conversation: Conversation) -> int:
        return self.backend.count_tokens(conversation)


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal [start, end) ranges covering range(n); empty ranges are dropped."""
    size, rest = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < rest else 0)
        if end > start:
            bounds.append((start, end))
        start = end
    return bounds


class RayBackend:
    """``replicas`` copies of a backend built by ``factory`` (e.g. ``functools.partial(make_backend, ...)``)."""

    def __init__(
        self,
        factory: BackendFactory,
        *,
        replicas: int = 2,
        num_cpus: float = 1,
        num_gpus: float = 0,
        address: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if replicas < 1:
            raise UserInputError("replicas must be at least 1")
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # address=None lets Ray read $RAY_ADDRESS, else start a local cluster.
            # Worker logs stay out of the CLI's output; their errors come back as exceptions.
            options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                       **(init_kwargs or {})}
            ray.init(address=address, **options)
        actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_Replica)
        self.actors = [actor.remote(factory) for _ in range(replicas)]
        try:
            self.replica_info = self._get([a.info.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise
        first = self.replica_info[0]
        self.model_id: str = first["model_id"]
        self._context = int(first["context_window"])

    @classmethod
    def from_options(
        cls, model: str, *, inner_kind: str = "transformers", replicas: int | None = None,
        num_gpus: float | None = None, **backend_kwargs: Any,
    ) -> "RayBackend":
        """Replicas of ``make_backend(model, kind=inner_kind, **backend_kwargs)``.

        From the CLI: ``--backend ray`` (or ``ray:vllm``) with ``$CAI_RAY_REPLICAS``
        (default 2) and ``$CAI_RAY_GPUS_PER_REPLICA`` (default 0).
        """
        from cai.backends.registry import make_backend

        if inner_kind.startswith("ray"):
            raise UserInputError("a ray backend cannot wrap another ray backend; use e.g. 'ray:transformers'")
        n = replicas if replicas is not None else _env_number("CAI_RAY_REPLICAS", 2, int)
        gpus = num_gpus if num_gpus is not None else _env_number("CAI_RAY_GPUS_PER_REPLICA", 0.0, float)
        factory = functools.partial(make_backend, model, kind=inner_kind, **backend_kwargs)
        return cls(factory, replicas=n, num_gpus=gpus)

    # --- protocol ------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        return self._context

    def describe(self) -> dict[str, Any]:
        inner = dict(self.replica_info[0]["provenance"])
        return {"replicas": len(self.actors), "inner_backend": inner.pop("backend", None),
                **{f"inner_{k}": v for k, v in inner.items() if k != "model_id"}}

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        return self._fan_out("generate", list(conversations), params)

    def choice_logprobs(self, conversations: Sequence[Conversation], options: Sequence[str]) -> list[ChoiceScores]:
        self.check_options(options)
        return self._fan_out("choice_logprobs", list(conversations), list(options))

    def check_options(self, options: Sequence[str]) -> None:
        self._get([self.actors[0].check_options.remote(list(options))])

    def count_tokens(self, conversation: Conversation) -> int:
        return self._get([self.actors[0].count_tokens.remote(conversation)])[0]

    # --- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self._ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> "RayBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- helpers -------------------------------------------------------------------

    def _fan_out(self, method: str, items: list[Any], arg: Any) -> list[Any]:
        if not items:
            return []
        if not self.actors:
            raise CaiError("this RayBackend was closed")
        bounds = shard_bounds(len(items), len(self.actors))
        refs = [getattr(self.actors[i], method).remote(items[s:e], arg) for i, (s, e) in enumerate(bounds)]
        out: list[Any] = []
        for part in self._get(refs):  # ray.get keeps the order of refs: input order
            out.extend(part)
        return out

    def _get(self, refs: list[Any]) -> list[Any]:
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as e:
            # Give cai's own errors back as themselves (one line), not as a remote traceback.
            cause = getattr(e, "cause", None)
            if isinstance(cause, CaiError):
                raise cause from None
            raise


def _env_number(name: str, default: Any, kind: type) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise UserInputError(f"${name}={raw!r} is not a number") from None


__all__ = ["RayBackend", "ray_backend", "shard_bounds"]


def ray_backend(model: str, *, inner_kind: str = "transformers", **kwargs: Any) -> RayBackend:
    """The ``ray`` / ``ray:<kind>`` backend (`cai.backends.registry`)."""
    return RayBackend.from_options(model, inner_kind=inner_kind, **kwargs)
