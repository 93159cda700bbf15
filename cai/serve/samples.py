"""One sample: what to generate and what came out; stop strings."""

from __future__ import annotations

import math
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Sequence

from cai.backends.base import Conversation


@dataclass
class SampleSettings:
    """How one request samples; every sample of it shares these (its seed excepted, see ``Sample``)."""

    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    logprobs: bool
    top_k: int

    def settings(self, **changes: Any) -> dict[str, Any]:
        """These settings as keyword arguments (``changes`` replacing some), to build a ``Sample``."""
        return {**{f.name: getattr(self, f.name) for f in fields(SampleSettings)}, **changes}


@dataclass
class SampleResult:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    #: one entry per generated token: {"token", "logprob", "bytes", "top_logprobs": [...]}
    logprobs: list[dict[str, Any]] | None = None


@dataclass(kw_only=True)
class Sample(SampleSettings):
    """One output sequence (a request with ``n=3`` is three samples)."""

    prompt: list[int] | Conversation  # token ids (raw completions) or a conversation
    prompt_tokens: int
    max_tokens: int
    #: streaming: called from the batch thread with (text delta, log-prob entries of its tokens)
    emit: Callable[[str, list[dict[str, Any]]], None] | None = None
    cancelled: bool = False
    future: Future = field(default_factory=Future)


def find_stop(text: str, stop: Sequence[str], start: int = 0) -> int:
    """Where the earliest stop string begins in ``text`` (searching from ``start``), or -1."""
    hits = [i for i in (text.find(s, start) for s in stop) if i >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters a stream must hold: a possible start of a stop string,
    or an incomplete UTF-8 character (decoded as U+FFFD)."""
    hold = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    tail = len(text) - len(text.rstrip("\ufffd"))
    return max(hold, tail)


def finite(x: float) -> float:
    """JSON has no -inf: a log-prob of a token with no mass is sent as -9999."""
    return x if math.isfinite(x) else -9999.0
