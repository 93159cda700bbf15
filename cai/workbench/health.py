"""Per-principle health: the principles worth rewording before spending a round on them.

Three flags, each from the principle's own cells:

* ``gates``: the revision quality gates (or the degenerate-output checks) rejected at
  least ``REJECT_SHARE`` of its critiques/revisions;
* ``judge_chance``: the judge cannot tell its revisions from the initial answers: fewer
  than ``CONSISTENT_SHARE`` of its judgements agree in both orders, or the mean
  |P(revision better) - 0.5| is under ``CHANCE_CONFIDENCE``;
* ``never_changes``: no revision changed as much as ``MIN_CHANGE`` of the initial
  answer's words.
"""

from __future__ import annotations

from typing import Any

REJECT_SHARE = 0.5
CONSISTENT_SHARE = 0.5
CHANCE_CONFIDENCE = 0.05
MIN_CHANGE = 0.1
FLAGS = ("gates", "judge_chance", "never_changes")


def health(principle_id: str, fig: dict[str, Any]) -> dict[str, Any]:
    """Flags and one-line problems for one principle, from its ``principle_figures``."""
    problems: dict[str, str] = {}
    n = fig["n"]
    if n and fig["rejected"] / n >= REJECT_SHARE:
        why = ", ".join(f"{r} x{k}" for r, k in fig["reject_reasons"].items())
        problems["gates"] = f"the gates rejected {fig['rejected']} of {n} of its revisions ({why})"
    j = fig["judged"]
    if j:
        consistent = fig["position_consistent"] / j
        if consistent < CONSISTENT_SHARE or (fig["mean_confidence"] or 0.0) < CHANCE_CONFIDENCE:
            problems["judge_chance"] = (
                f"the judge cannot tell its revisions from the initial answers (mean |p - 0.5| = "
                f"{fig['mean_confidence']:.2f}; {fig['position_consistent']} of {j} position-consistent)")
    if fig["max_change"] is not None and fig["max_change"] < MIN_CHANGE:
        problems["never_changes"] = (f"it never changes the answer (largest change: {fig['max_change']:.0%} "
                                     "of the words)")
    return {"principle_id": principle_id, "flags": list(problems), "problems": list(problems.values()),
            "reject_share": round(fig["rejected"] / n, 4) if n else None}


def rank(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most flags first, then the most rejected."""
    return sorted(entries, key=lambda h: (-len(h["flags"]), -(h["reject_share"] or 0.0), h["principle_id"]))


__all__ = ["health", "rank", "FLAGS", "REJECT_SHARE", "CONSISTENT_SHARE", "CHANCE_CONFIDENCE", "MIN_CHANGE"]
