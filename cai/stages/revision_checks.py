"""What makes a critique or revision unusable: degenerate outputs and the revision quality gates.

A small critic copies its few-shot exemplars word for word ("This is a phishing message"
as the critique of a nerve-agent answer), loops, or writes about something else; such
outputs are recorded with the reason and never trained on.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from cai.constitution import Principle


class Gates(BaseModel):
    """Quality gates on critiques and revisions: a failing one is recorded with its reason, never trained on."""

    model_config = ConfigDict(extra="forbid")

    exemplar_overlap: float | None = Field(
        0.5, gt=0, le=1, description="Reject a critique/revision when this share of its word 4-grams comes from a "
                                     "few-shot exemplar (a small critic copies them); null turns it off.")
    prompt_overlap: bool = Field(
        True, description="Reject a revision that is not a refusal and shares no content word with the prompt "
                          "or the response (it ignores the prompt).")


_LABEL = re.compile(r"^\s*(critique|revision|rewritten response|revised response)\s*:\s*", re.IGNORECASE)


def clean_output(text: str) -> str:
    """Strip whitespace and a leading 'Critique:'/'Revision:' label some models add."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def normalize_words(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation dropped: how the checks compare texts.

    Two texts with equal ``normalize_words`` differ only in case, punctuation and spacing, so a
    revision equal to its response this way "changes nothing".
    """
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _similar(a: str, b: str, threshold: float = 0.9) -> bool:
    na, nb = normalize_words(a), normalize_words(b)
    if not na or not nb:
        return na == nb
    if na == nb:
        return True
    return SequenceMatcher(None, na, nb, autojunk=False).ratio() >= threshold


def _repeats(text: str, request: str) -> bool:
    """The text is the request, near enough, or the request plus a few words (e.g. our 'Answer in ...')."""
    nt, nr = normalize_words(text), normalize_words(request)
    return _similar(text, request) or (bool(nr) and nr in nt and len(nt) <= 2 * len(nr))


def _repetitive(text: str) -> bool:
    # A model stuck in a loop: long output made of very few distinct 4-grams.
    words = normalize_words(text).split()
    if len(words) < 16:
        return False
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return len(set(grams)) / len(grams) < 0.35


_STOP = frozenset("""a an and are as at be but by can could do does for from has have how i if in into is it
its me my of on or our should so than that the their them then there these they this to was we what when where
which who why will with would you your about just like some any been not no yes""".split())


def _content_words(text: str) -> set[str]:
    return {w for w in normalize_words(text).split() if len(w) >= 4 and w not in _STOP}


def _grams(text: str, n: int = 4) -> list[tuple[str, ...]]:
    words = normalize_words(text).split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def exemplar_overlap(text: str, exemplar_texts: Sequence[str]) -> float:
    """Share of the text's word 4-grams that occur in the exemplar texts (0 when it is too short to tell)."""
    grams = _grams(text)
    if not grams:
        return 0.0
    pool = {g for t in exemplar_texts for g in _grams(t)}
    return sum(g in pool for g in grams) / len(grams)


def gate_reason(kind: str, text: str, *, gates: "Gates", prompt: str, response: str,
                exemplar_texts: Sequence[str], is_refusal: Callable[[str], bool] | None = None) -> str | None:
    """Why a critique or revision fails a quality gate (see `Gates`), or None."""
    if gates.exemplar_overlap is not None and exemplar_texts:
        if exemplar_overlap(text, exemplar_texts) >= gates.exemplar_overlap:
            return "copies_exemplar"
    # Critiques speak about "the response" in the abstract, so only revisions must touch the prompt.
    if gates.prompt_overlap and prompt and kind == "revision":
        if is_refusal is not None and is_refusal(text):
            return None  # a refusal need not repeat the request's words
        if not (_content_words(text) & (_content_words(prompt) | _content_words(response))):
            return "ignores_prompt"
    return None


def degenerate_reason(
    kind: str,
    text: str,
    *,
    principle: Principle | None = None,
    response: str = "",
    critique: str = "",
    prompt: str = "",
    gates: "Gates | None" = None,
    exemplar_texts: Sequence[str] = (),
    is_refusal: Callable[[str], bool] | None = None,
) -> str | None:
    """Why ``text`` (a response, critique or revision) is unusable, or None if it is fine."""
    if not normalize_words(text):
        return "empty"
    if kind == "critique" and principle is not None:
        if _repeats(text, principle.critique_request):
            return "repeats_request"
        if response and _similar(text, response):
            return "echoes_response"
    if kind == "revision":
        if response and normalize_words(text) == normalize_words(response):
            return "identical_to_response"
        if principle is not None and (
            _repeats(text, principle.revision_request) or _repeats(text, principle.critique_request)
        ):
            return "repeats_request"
        if critique and _similar(text, critique):
            return "echoes_critique"
    if _repetitive(text):
        return "repetitive"
    if gates is not None and kind in ("critique", "revision"):
        return gate_reason(kind, text, gates=gates, prompt=prompt, response=response,
                           exemplar_texts=exemplar_texts, is_refusal=is_refusal)
    return None


__all__ = ["Gates", "clean_output", "normalize_words", "exemplar_overlap", "gate_reason", "degenerate_reason"]
