"""Final-answer extraction and normalisation for chain-of-thought outputs.

A chain of thought is only useful for voting if its final answer can be read
back out and compared. The default extractor reads the *last* "The answer is X"
(also "Final answer: X", "Answer: X", ``\\boxed{X}``); with ``numeric=True`` it
normalises numbers so "$1,200.", "1200.0" and "twelve hundred"-free forms like
"1200" all vote together. When no such line exists it can fall back to the last
number in the text. A text it cannot read gives an ``Extraction`` with
``answer=None`` and a ``reason`` — callers record it, never drop it silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from cai.errors import UserInputError

ExtractorName = Literal["answer_is", "last_number", "regex"]

# "The answer is X", "the final answer is: X", "Final answer: X", "Answer: X", "answer = X".
ANSWER_IS = re.compile(
    r"\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|was|would\s+be|will\s+be|:|=)\s*:?[ \t]*"
    # The answer runs to the end of its sentence: a period followed by space, a newline, or the end.
    r"(?P<ans>(?:[^\n.]|\.(?=\S))*)",
    re.IGNORECASE,
)
BOXED = re.compile(r"\\boxed\{(?P<ans>[^{}]*)\}")
# A number as people write it: optional sign and $, thousands commas, decimals, a/b fractions, %.
NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−])?\$?\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?(?:\s?/\s?(?P<den>\d+))?(?!\w)"
)

_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUMBER_WORD = "|".join(sorted(list(_UNITS) + list(_TENS) + list(_SCALES), key=len, reverse=True))
_WORD_NUMBER = re.compile(
    rf"\b(?:{_NUMBER_WORD})(?:[\s-]+(?:and[\s-]+)?(?:{_NUMBER_WORD}))*\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Extraction:
    """What was read from one model output."""

    answer: str | None  # normalised; None when nothing could be read
    raw: str | None = None  # the text span the answer came from
    method: str | None = None  # "answer_is", "boxed", "regex", "last_number"
    reason: str | None = None  # why extraction failed (answer is None)

    @property
    def ok(self) -> bool:
        return self.answer is not None


def words_to_number(text: str) -> int | None:
    """'twenty-one' -> 21, 'one hundred and five' -> 105; None if the text is not a number in words."""
    tokens = [t for t in re.split(r"[\s-]+", text.lower().strip()) if t and t != "and"]
    if not tokens:
        return None
    total, current = 0, 0
    for t in tokens:
        if t in _UNITS:
            current += _UNITS[t]
        elif t in _TENS:
            current += _TENS[t]
        elif t == "hundred":
            current = max(current, 1) * 100
        elif t in _SCALES:
            total += max(current, 1) * _SCALES[t]
            current = 0
        else:
            return None
    return total + current


def format_number(value: Fraction) -> str:
    """Canonical text for a number: '5' not '5.0', '2.5', and 'p/q' only for non-terminating fractions."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # terminating decimal: print it exactly, no float rounding
        s = f"{float(value):.12f}".rstrip("0").rstrip(".")
        return s
    return f"{value.numerator}/{value.denominator}"


def _number_from_match(m: re.Match) -> Fraction | None:
    whole = m.group("int").replace(",", "")
    value = Fraction(whole + (m.group("dec") or ""))
    if m.group("den"):
        den = int(m.group("den"))
        if den == 0:
            return None
        value = value / den
    return -value if m.group("sign") else value


def parse_number(text: str) -> Fraction | None:
    """The first number in ``text`` (digits or words), exactly; None when there is none."""
    m = NUMBER.search(text)
    if m:
        return _number_from_match(m)
    w = _WORD_NUMBER.search(text)
    if w:
        n = words_to_number(w.group(0))
        return Fraction(n) if n is not None else None
    return None


def normalize_text(text: str) -> str:
    """Non-numeric answers: case-folded, markdown and surrounding punctuation stripped, spaces collapsed."""
    t = re.sub(r"[*_`]+", "", text).strip()
    t = t.strip(" \t\"'“”‘’()[]{}").rstrip(".,;:!?").strip()
    return re.sub(r"\s+", " ", t).casefold()


def normalize_answer(text: str | int | float, *, numeric: bool = True) -> str | None:
    """Normalise one answer for comparison (gold or extracted). None if nothing usable is left."""
    if isinstance(text, bool):
        text = str(text)
    if isinstance(text, (int, float)):
        return format_number(Fraction(str(text))) if numeric else normalize_text(str(text)) or None
    if numeric:
        value = parse_number(text)
        if value is not None:
            return format_number(value)
    out = normalize_text(text)
    return out or None


class AnswerExtractor:
    """Reads the final answer from a chain of thought.

    ``name="answer_is"`` (default): the last "The answer is X" / "Answer: X" / \\boxed{X}.
    ``name="regex"``: the last match of ``pattern`` (its first group, else the whole match).
    ``name="last_number"``: the last number anywhere in the text.
    ``fallback_last_number``: when the pattern finds nothing, use the last number instead
    (recorded as method "last_number", so how often this happened can be reported).
    """

    def __init__(
        self,
        name: ExtractorName = "answer_is",
        *,
        pattern: str | None = None,
        fallback_last_number: bool = True,
        numeric: bool = True,
    ) -> None:
        if name not in ("answer_is", "last_number", "regex"):
            raise UserInputError(f"unknown answer extractor '{name}'; use answer_is, last_number or regex")
        if name == "regex" and not pattern:
            raise UserInputError("the regex answer extractor needs a pattern; pass --answer-pattern 'REGEX'")
        self.name = name
        self.numeric = numeric
        self.fallback_last_number = fallback_last_number
        try:
            self.pattern = re.compile(pattern, re.IGNORECASE) if pattern else None
        except re.error as e:
            raise UserInputError(f"answer pattern {pattern!r} is not a valid regex ({e}); fix the pattern") from None

    def _normalise(self, span: str, method: str) -> Extraction:
        answer = normalize_answer(span, numeric=self.numeric)
        if answer is None:
            return Extraction(None, span, method, reason=f"empty answer after '{method}' match")
        return Extraction(answer, span.strip(), method)

    def _last_number(self, text: str) -> Extraction:
        matches = list(NUMBER.finditer(text))
        if not matches:
            return Extraction(None, None, None, reason="no number in the text")
        m = matches[-1]
        value = _number_from_match(m)
        if value is None:
            return Extraction(None, m.group(0), "last_number", reason="division by zero in a fraction")
        return Extraction(format_number(value), m.group(0).strip(), "last_number")

    def extract(self, text: str) -> Extraction:
        if not text or not text.strip():
            return Extraction(None, None, None, reason="empty output")
        if self.name == "last_number":
            return self._last_number(text)
        if self.name == "regex":
            assert self.pattern is not None
            matches = list(self.pattern.finditer(text))
            if matches:
                m = matches[-1]
                return self._normalise(m.group(1) if m.groups() else m.group(0), "regex")
        else:
            # The last statement wins: models often revise ("the answer is 5... no, the answer is 6").
            candidates = [(m.start(), m.group("ans"), "answer_is") for m in ANSWER_IS.finditer(text)]
            candidates += [(m.start(), m.group("ans"), "boxed") for m in BOXED.finditer(text)]
            for _, span, method in sorted(candidates, reverse=True):
                got = self._normalise(span, method)
                if got.ok:
                    return got
        if self.fallback_last_number:
            got = self._last_number(text)
            if got.ok:
                return got
            return Extraction(None, None, None, reason=f"no '{self._describe()}' and no number in the text")
        return Extraction(None, None, None, reason=f"no '{self._describe()}' in the text")

    def _describe(self) -> str:
        return "The answer is X" if self.name == "answer_is" else f"match for {self.pattern.pattern if self.pattern else ''}"


def same_answer(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a == b


__all__ = [
    "AnswerExtractor",
    "Extraction",
    "normalize_answer",
    "normalize_text",
    "parse_number",
    "format_number",
    "words_to_number",
    "same_answer",
]
