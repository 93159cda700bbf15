"""``report.json``: the verdict's figures for programs (CI gates, dashboards), next to report.md/.html.

The same numbers the verdict shows, nothing recomputed: per round, each policy's rates
with their Wilson intervals and k/n, each comparison with the reference (the difference,
Newcombe's interval for it, improved/worse), the judge's win rates, which labels trained
the round, the labeller's figures, and the flags split into problems and checks. Its
schema (``schema: 1``) is documented in docs/report.md; keys are added, never renamed or
removed, without bumping it.
"""

from __future__ import annotations

from typing import Any

from cai.report.data import RunData, num
from cai.report.fmt import win_word
from cai.report.verdict import (
    CHANCE_ACCURACY, KL_LIMITS, MAX_FAILURE_FRACTION, MAX_SKIPPED_FRACTION, MAX_TIE_FRACTION, METRICS,
    MIN_POSITION_CONSISTENCY, Change, Rate, RoundVerdict, model_rates, models_in, verdicts,
)

SCHEMA = 1
REPORT_JSON = "report.json"
WIN_KEYS = ("rate", "ci_low", "ci_high", "wins", "losses", "ties", "n", "skipped", "inconsistent", "confidence")


def rate_json(r: Rate | None) -> dict[str, Any] | None:
    """{rate, low, high, k, n}; rate is null when nothing was measured."""
    if r is None:
        return None
    return {"rate": r.rate, "low": r.low, "high": r.high, "k": r.k, "n": r.n}


def change_json(c: Change) -> dict[str, Any]:
    iv = c.diff_interval()
    word, _ = c.word
    diff = None if c.direction == "unknown" else c.new.rate - c.ref.rate  # type: ignore[union-attr,operator]
    return {
        "label": c.label, "higher_is_better": c.higher_is_better,
        "reference": rate_json(c.ref), "round": rate_json(c.new),
        "difference": None if diff is None else round(diff, 6),
        "difference_interval": None if iv is None else [round(iv[0], 6), round(iv[1], 6)],
        "direction": c.direction,  # better, worse, same, unknown
        "beyond_interval": c.beyond_interval,
        "paired": c.paired,  # McNemar exact on the same prompts; decides beyond_interval when present
        "improved": c.direction == "better" and c.beyond_interval,
        "worse": c.direction == "worse" and c.beyond_interval,
        "verdict": word,  # improved, better within noise, no change, worse within noise, worse, not measured
    }


def win_json(w: dict[str, Any]) -> dict[str, Any]:
    out = {k: w[k] for k in WIN_KEYS if k in w}
    out["verdict"] = win_word(w)[0]
    return out


def round_json(run: RunData, v: RoundVerdict) -> dict[str, Any]:
    r = next(x for x in run.rounds if x.k == v.k)
    rates = {m: {key: rate_json(model_rates(r, m).get(key)) for key, _, _ in METRICS} for m in models_in(r)} \
        if v.evaluated else {}
    return {
        "round": v.k,
        "evaluated": v.evaluated,
        "level": v.level,  # good, warn (checks, or not evaluated), bad (problems)
        "rates": rates,
        "comparisons": {ref: {c.key: change_json(c) for c in changes} for ref, changes in v.changes.items()},
        "win_rates": {label: win_json(w) for label, w in v.win_rates.items()},
        "label_sources": [{"stage": s, "label_source": src, "why": why} for s, src, why in v.label_sources],
        "labeller": {k: val for k, val in v.labeller.items() if num(val) is not None or isinstance(val, str)},
        "problems": [f.text for f in v.flags if f.level == "bad"],
        "checks": [f.text for f in v.flags if f.level != "bad"],
    }


def report_json(run: RunData, vs: list[RoundVerdict] | None = None) -> dict[str, Any]:
    """The whole file's content (see the module doc)."""
    vs = verdicts(run) if vs is None else vs
    return {
        "schema": SCHEMA,
        "name": run.name,
        "run_dir": str(run.dir),
        "pipeline": list(run.pipeline),
        "planned_rounds": run.planned_rounds,
        "rounds_evaluated": sum(1 for v in vs if v.evaluated),
        "metrics": {key: {"label": label, "higher_is_better": hib} for key, label, hib in METRICS},
        "thresholds": {
            "min_position_consistency": MIN_POSITION_CONSISTENCY, "max_failure_fraction": MAX_FAILURE_FRACTION,
            "kl_limits": {key: {"limit": lim, "unit": unit} for key, (lim, unit) in KL_LIMITS.items()},
            "max_tie_fraction": MAX_TIE_FRACTION, "max_skipped_fraction": MAX_SKIPPED_FRACTION,
            "chance_accuracy": CHANCE_ACCURACY, "confidence": 0.95,
        },
        "rounds": [round_json(run, v) for v in vs],
    }


__all__ = ["REPORT_JSON", "SCHEMA", "report_json"]
