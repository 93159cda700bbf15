"""The backend protocol: whole batches of chat conversations in, texts or option log-probs out.

Batching, length sorting, padding and devices are the backend's job; stages call
these two methods once per step with every row that is ready, never per prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" (end of turn) or "length" (hit max_new_tokens)
    truncated: bool = False  # the prompt was cut from the left to fit the context window


@dataclass
class ChoiceScores:
    """Normalised log-probs of each option as the next tokens, in the order given."""

    logprobs: list[float]
    # Options whose tokens had to be scored after a truncated conversation.
    truncated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What every backend (transformers, vLLM, OpenAI-compatible, ...) provides."""

    #: Model identifier recorded in provenance.
    model_id: str

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams
    ) -> list[Generation]:
        """One completion per conversation, in input order.

        A conversation ending with an assistant message is continued (that message
        is a prefix of the answer), otherwise a new assistant turn is started.
        """
        ...

    def choice_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[ChoiceScores]:
        """For each conversation, the log-softmax over options of log p(option | conversation).

        The option strings are scored as the continuation of the (assistant-prefixed)
        conversation: one forward pass, no generation.
        """
        ...

    def check_options(self, options: Sequence[str]) -> None:
        """Raise UserInputError if the options cannot be told apart as next tokens."""
        ...

    def count_tokens(self, conversation: Conversation) -> int:
        """Prompt length in tokens, as the model would see it."""
        ...

    @property
    def context_window(self) -> int:
        ...


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids two sequences share (where an option's tokens start)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def normalise_choices(raw: list[float], truncated: bool = False) -> ChoiceScores:
    """Log-softmax over the options' raw log-probs; the raw values stay in ``extra``."""
    import math

    top = max(raw)
    z = top + math.log(sum(math.exp(r - top) for r in raw))
    return ChoiceScores(logprobs=[r - z for r in raw], truncated=truncated, extra={"raw_logprobs": raw})


def provenance(backend: Backend) -> dict[str, Any]:
    info: dict[str, Any] = {"model_id": backend.model_id, "backend": type(backend).__name__}
    extra = getattr(backend, "describe", None)
    if callable(extra):
        info.update(extra())
    return info
