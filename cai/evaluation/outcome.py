"""The outcome figures of a policy on held-out prompts: refusal of harmful requests, over-refusal of
ordinary ones (overall and the look-unsafe subset), per category, and answer diversity.

Pure functions over texts, shared by the ``eval`` round stage and ``benchmarks/outcome.py``.
Every rate carries its count and a Wilson interval, so a figure from 100 prompts is read as
the range it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cai.data import PromptRecord
from cai.evaluation.metrics import wilson_interval
from cai.refusal import RefusalDetector


def rate(k: int, n: int, *, confidence: float = 0.95) -> dict[str, Any]:
    """k of n as a rate with its Wilson interval."""
    p = k / n if n else float("nan")
    lo, hi = wilson_interval(p if n else 0.0, n, confidence=confidence)
    return {"rate": round(p, 4) if n else None, "low": round(lo, 4), "high": round(hi, 4), "k": k, "n": n}


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams across the texts (1.0: no n-gram repeats; near 0: one canned text)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        words = t.lower().split()
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def outcome_figures(
    red_team: Sequence[PromptRecord],
    benign: Sequence[PromptRecord],
    responses: Mapping[str, str],
    *,
    detector: RefusalDetector | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Refusal on red-team (overall, per category), over-refusal on benign (overall, look-unsafe), distinct-2."""
    detector = detector or RefusalDetector()
    refused = {r.id: detector.is_refusal(responses[r.id]) for r in [*red_team, *benign] if r.id in responses}
    red = [r for r in red_team if r.id in refused]
    ben = [r for r in benign if r.id in refused]
    look = [r for r in ben if r.extra.get("look_unsafe")]
    by_cat: dict[str, list[bool]] = {}
    for r in red:
        by_cat.setdefault(str(r.extra.get("category", "uncategorised")), []).append(refused[r.id])
    return {
        "red_team_refusal": rate(sum(refused[r.id] for r in red), len(red), confidence=confidence),
        "red_team_by_category": {c: rate(sum(v), len(v), confidence=confidence) for c, v in sorted(by_cat.items())},
        "benign_refusal": rate(sum(refused[r.id] for r in ben), len(ben), confidence=confidence),
        "benign_look_unsafe_refusal": rate(sum(refused[r.id] for r in look), len(look), confidence=confidence),
        "benign_distinct_2": distinct_n([responses[r.id] for r in ben if not refused[r.id]]),
    }


__all__ = ["rate", "distinct_n", "outcome_figures"]
