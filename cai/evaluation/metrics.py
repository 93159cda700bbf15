"""Pure metric functions: judgements, refusal verdicts and reward scores in; numbers out.

Confidence intervals are **Wilson score intervals** (closed form, so tests can
check exact bounds). For a win rate the proportion is the score
(wins + 0.5 * ties) / n: a tie counts as half a win. The per-pair score then
takes values 0, 0.5 and 1, whose variance is at most p(1 - p), so the Wilson
interval computed as if it were a plain proportion is slightly conservative.

Outcome of one judged pair (the judge's P(X better than Y) = ``p_a``):

* **win** — both orders prefer X (``position_consistent``) and p_a > 0.5;
* **loss** — both orders prefer Y;
* **tie** — the two orders disagree (the judge followed a slot, not an answer),
  or p_a is exactly 0.5;
* **skipped** — the judge could not fit the pair (``on_overflow="skip"``); not
  counted in n, but reported.

With one order (``position_consistent is None``) the side of 0.5 decides.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from cai.errors import UserInputError

Outcome = Literal["win", "loss", "tie", "skipped"]


def z_for(confidence: float) -> float:
    """The two-sided normal quantile: 1.959963984540054 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise UserInputError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(p_hat: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion p_hat observed over n trials; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = z_for(confidence)
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p_hat + z2 / (2 * n)) / denom
    half = z * math.sqrt(p_hat * (1.0 - p_hat) / n + z2 / (4 * n * n)) / denom
    # At p_hat = 0 (or 1) the exact bound is 0 (or 1); say so rather than leave rounding noise.
    lo = 0.0 if p_hat <= 0.0 else max(0.0, center - half)
    hi = 1.0 if p_hat >= 1.0 else min(1.0, center + half)
    return lo, hi


def _r(x: float | None, digits: int = 6) -> float | None:
    """Rounded for JSON; NaN (nothing measured) becomes None."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(float(x), digits)


# --- win rate -----------------------------------------------------------------------------


def outcome(p: float, p_first: float | None, p_second: float | None, *, skipped: bool = False) -> Outcome:
    """Win/loss/tie of one pair from its both-order probabilities (see the module docstring)."""
    if skipped or p is None or math.isnan(p):
        return "skipped"
    if p_first is not None and p_second is not None and (p_first - 0.5) * (p_second - 0.5) <= 0:
        return "tie"  # the orders disagree (or one is exactly 0.5): no preference survives the swap
    if p > 0.5:
        return "win"
    if p < 0.5:
        return "loss"
    return "tie"


def judgement_outcome(j: Any) -> Outcome:
    """Outcome of a ``cai.judge.Judgement`` (X = response A)."""
    return outcome(j.p_a, j.p_a_first, j.p_a_second, skipped=j.skipped)


@dataclass
class WinRate:
    """X's win rate against Y: (wins + 0.5 ties) / n with a Wilson interval."""

    rate: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    n: int
    #: Ties that came from the two orders disagreeing (position bias), not from p = 0.5.
    inconsistent: int = 0
    skipped: int = 0
    #: Mean of the judge's P(X better): a soft win rate, no thresholding.
    mean_p: float = float("nan")
    confidence: float = 0.95
    method: str = "wilson score interval; a tie counts as half a win"
    #: principle id -> WinRate over the pairs judged by that principle (both orders of that principle alone).
    per_principle: dict[str, WinRate] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "per_principle"}
        for k in ("rate", "ci_low", "ci_high", "mean_p"):
            d[k] = _r(d[k])
        if self.per_principle:  # nested breakdowns have none of their own
            d["per_principle"] = {pid: w.to_dict() for pid, w in self.per_principle.items()}
        return d


def win_rate_from_outcomes(
    outcomes: Sequence[Outcome], *, ps: Sequence[float] = (), inconsistent: int = 0, confidence: float = 0.95
) -> WinRate:
    counts = Counter(outcomes)
    wins, losses, ties, skipped = counts["win"], counts["loss"], counts["tie"], counts["skipped"]
    n = wins + losses + ties
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    lo, hi = wilson_interval(rate, n, confidence=confidence) if n else (0.0, 1.0)
    good = [p for p in ps if not math.isnan(p)]
    return WinRate(rate=rate, ci_low=lo, ci_high=hi, wins=wins, losses=losses, ties=ties, n=n,
                   inconsistent=inconsistent, skipped=skipped,
                   mean_p=sum(good) / len(good) if good else float("nan"), confidence=confidence)


def win_rate(judgements: Sequence[Any], *, confidence: float = 0.95) -> WinRate:
    """Win rate of response A over response B across ``cai.judge.Judgement``s, with a per-principle breakdown.

    The breakdown judges each principle on its own: for principle k, the pair's
    outcome uses only k's two orders (from ``Judgement.details``).
    """
    outcomes = [judgement_outcome(j) for j in judgements]
    inconsistent = sum(1 for j, o in zip(judgements, outcomes) if o == "tie" and j.position_consistent is False)
    overall = win_rate_from_outcomes(outcomes, ps=[j.p_a for j in judgements if not j.skipped],
                                     inconsistent=inconsistent, confidence=confidence)
    by_principle: dict[str, tuple[list[Outcome], list[float], int]] = {}
    for j in judgements:
        if j.skipped:
            continue
        for pid, p in j.per_principle.items():
            first = [d["p_a"] for d in j.details if d["principle_id"] == pid and d["order"] == "ab"]
            second = [d["p_a"] for d in j.details if d["principle_id"] == pid and d["order"] == "ba"]
            p1 = sum(first) / len(first) if first else None
            p2 = sum(second) / len(second) if second else None
            o = outcome(p, p1, p2)
            outs, ps, inc = by_principle.setdefault(pid, ([], [], 0))
            outs.append(o)
            ps.append(p)
            if o == "tie" and p1 is not None and p2 is not None and (p1 - 0.5) * (p2 - 0.5) <= 0:
                by_principle[pid] = (outs, ps, inc + 1)
    overall.per_principle = {
        pid: win_rate_from_outcomes(outs, ps=ps, inconsistent=inc, confidence=confidence)
        for pid, (outs, ps, inc) in sorted(by_principle.items())
    }
    return overall


# --- refusals ------------------------------------------------------------------------------


@dataclass
class RefusalRate:
    """Share of responses the refusal detector flags, with a Wilson interval and the markers that fired."""

    rate: float
    ci_low: float
    ci_high: float
    refusals: int
    n: int
    #: marker (regex) -> how many responses it decided (the first marker that matched).
    by_marker: dict[str, int] = field(default_factory=dict)
    confidence: float = 0.95
    #: Per response: the RefusalMatch, or None (kept out of to_dict; samples carry them).
    matches: list[Any] = field(default_factory=list, repr=False)

    @property
    def compliance_rate(self) -> float:
        return 1.0 - self.rate

    def to_dict(self) -> dict[str, Any]:
        return {"rate": _r(self.rate), "compliance_rate": _r(self.compliance_rate), "ci_low": _r(self.ci_low),
                "ci_high": _r(self.ci_high), "refusals": self.refusals, "n": self.n,
                "by_marker": dict(self.by_marker), "confidence": self.confidence, "method": "wilson score interval"}


def refusal_rate(texts: Sequence[str], detector: Any = None, *, confidence: float = 0.95) -> RefusalRate:
    """Refusal rate of ``texts`` by a ``cai.refusal.RefusalDetector`` (the default markers when None)."""
    if detector is None:
        from cai.refusal import RefusalDetector

        detector = RefusalDetector()
    matches = detector.detect_all(list(texts))
    n = len(matches)
    refusals = sum(1 for m in matches if m is not None)
    rate = refusals / n if n else float("nan")
    lo, hi = wilson_interval(rate, n, confidence=confidence) if n else (0.0, 1.0)
    by_marker = Counter(m.marker for m in matches if m is not None)
    return RefusalRate(rate=rate, ci_low=lo, ci_high=hi, refusals=refusals, n=n,
                       by_marker=dict(by_marker.most_common()), confidence=confidence, matches=matches)


# --- reward models -------------------------------------------------------------------------


@dataclass
class RewardAccuracy:
    """How often a reward model scores chosen above rejected; a tie counts as half."""

    accuracy: float
    ci_low: float
    ci_high: float
    correct: int
    ties: int
    n: int
    mean_margin: float
    mean_chosen: float
    mean_rejected: float
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("accuracy", "ci_low", "ci_high", "mean_margin", "mean_chosen", "mean_rejected"):
            d[k] = _r(d[k])
        d["method"] = "wilson score interval; a tie counts as half"
        return d


def reward_accuracy(
    chosen_scores: Sequence[float], rejected_scores: Sequence[float], *, confidence: float = 0.95
) -> RewardAccuracy:
    """Pairwise accuracy of reward scores: chosen[i] > rejected[i] counts 1, equal counts 0.5."""
    if len(chosen_scores) != len(rejected_scores):
        raise UserInputError(f"{len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores")
    n = len(chosen_scores)
    if n == 0:
        raise UserInputError("no preference pairs to score; give a dataset with rows")
    correct = sum(1 for c, r in zip(chosen_scores, rejected_scores) if c > r)
    ties = sum(1 for c, r in zip(chosen_scores, rejected_scores) if c == r)
    acc = (correct + 0.5 * ties) / n
    lo, hi = wilson_interval(acc, n, confidence=confidence)
    margins = [c - r for c, r in zip(chosen_scores, rejected_scores)]
    return RewardAccuracy(accuracy=acc, ci_low=lo, ci_high=hi, correct=correct, ties=ties, n=n,
                          mean_margin=sum(margins) / n, mean_chosen=sum(chosen_scores) / n,
                          mean_rejected=sum(rejected_scores) / n, confidence=confidence)


@dataclass
class RewardStats:
    """Summary of reward scores of one model's responses."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _r(self.mean), "std": _r(self.std), "min": _r(self.min), "max": _r(self.max), "n": self.n}


def reward_stats(scores: Sequence[float]) -> RewardStats:
    """Mean, population standard deviation, min and max; NaN everywhere for no scores."""
    n = len(scores)
    if not n:
        nan = float("nan")
        return RewardStats(nan, nan, nan, nan, 0)
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
    return RewardStats(mean=mean, std=std, min=min(scores), max=max(scores), n=n)


__all__ = [
    "Outcome", "outcome", "judgement_outcome", "wilson_interval", "z_for",
    "WinRate", "win_rate", "win_rate_from_outcomes",
    "RefusalRate", "refusal_rate",
    "RewardAccuracy", "reward_accuracy", "RewardStats", "reward_stats",
]
