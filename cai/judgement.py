"""What the judge returns (`Judgement`) and how it reads prompts and completions (chat messages or TRL's)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cai.backends.base import Conversation
from cai.errors import UserInputError

PromptLike = str | Conversation


@dataclass
class Judgement:
    """The judge's verdict on one pair (A = responses_a[i], B = responses_b[i])."""

    #: P(A better): mean over principles of the (both-order) per-principle probability.
    p_a: float
    #: P(A better) with A shown first (slot "A"), averaged over principles.
    p_a_first: float
    #: P(A better) with A shown second, already flipped (1 - P(slot A)); None with one order.
    p_a_second: float | None
    #: Both orders prefer the same response (ties count as inconsistent); None with one order.
    position_consistent: bool | None
    principle_ids: list[str]
    #: principle id -> P(A better) for that principle (both orders averaged).
    per_principle: dict[str, float]
    #: CoT rationales, one per (principle, order), in the order of ``details``; empty without CoT.
    rationales: list[str] = field(default_factory=list)
    #: The pair (or the conversation) had to be cut to fit the context window.
    truncated: bool = False
    #: Skipped (on_overflow="skip"): p_a is NaN and nothing was scored.
    skipped: bool = False
    notes: list[str] = field(default_factory=list)
    #: Why a skipped pair has no label: "overflow" (on_overflow="skip") or "scoring_failed"
    #: (the backend could not score a conversation: an option absent from its top tokens, a prompt too long).
    failure: str | None = None
    #: One entry per scored conversation: principle_id, order ("ab"/"ba"), p_slot_a, p_a (after clamping).
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        """|p_a - 0.5|: 0 is a coin flip, 0.5 is certainty."""
        return abs(self.p_a - 0.5)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_conversation(prompt: PromptLike) -> Conversation:
    """A prompt as chat messages: a string becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) and "content" in m for m in prompt):
        return [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in prompt]
    raise UserInputError(
        f"a prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}"
    )


def completion_text(completion: Any) -> str:
    """TRL completions are strings, or (conversational) a list of assistant messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, Mapping))
    raise UserInputError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def _last_user_text(conv: Conversation) -> str:
    return next((m["content"] for m in reversed(conv) if m["role"] == "user"), conv[-1]["content"] if conv else "")
