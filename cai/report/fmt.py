"""Small text helpers the report's sections share (numbers, counts, model names, win rates)."""

from __future__ import annotations

from typing import Any

from cai.report.data import num


def model_name(model: str) -> str:
    """``round-1`` -> ``round 1``: how a model is named in prose and headers."""
    return model.replace("-", " ")


def fixed(x: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or an en dash when there is none."""
    x = num(x)
    return "–" if x is None else f"{x:.{digits}f}"


def count(n: Any, word: str) -> str:
    """``3 wins``, ``1 loss``, ``2 losses``."""
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def win_text(w: dict[str, Any]) -> str:
    """A stored win rate as ``rate [low, high]; W wins, L losses, T ties (n=N)``."""
    return (f"{fixed(w.get('rate'))} [{fixed(w.get('ci_low'))}, {fixed(w.get('ci_high'))}]; "
            f"{count(w.get('wins', '?'), 'win')}, {count(w.get('losses', '?'), 'loss')}, "
            f"{count(w.get('ties', '?'), 'tie')} (n={w.get('n', '?')})")


def win_word(w: dict[str, Any]) -> tuple[str, str]:
    """(what the win rate's interval says, badge kind)."""
    lo, hi = num(w.get("ci_low")), num(w.get("ci_high"))
    if lo is not None and lo > 0.5:
        return "judge prefers this round", "good"
    if hi is not None and hi < 0.5:
        return "judge prefers the reference", "bad"
    return "no clear difference", "neutral"


__all__ = ["count", "fixed", "model_name", "win_text", "win_word"]
