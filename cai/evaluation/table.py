"""The metrics dict as a readable table, and as a JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cai.errors import UserInputError

DASH = "-"


def _pct(x: float | None) -> str:
    return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _rate_ci(d: dict[str, Any] | None, key: str = "rate") -> str:
    if not d or d.get(key) is None:
        return DASH
    return f"{_pct(d[key])} [{_pct(d['ci_low'])}, {_pct(d['ci_high'])}] n={d['n']}"


def _win(d: dict[str, Any] | None) -> str:
    if not d:
        return DASH
    tail = f" W/T/L {d['wins']}/{d['ties']}/{d['losses']}"
    if d.get("inconsistent"):  # ties where the judge followed the slot: say how weak the judge was
        tail += f" ({d['inconsistent']} orders disagreed)"
    return _rate_ci(d) + tail


def model_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """One row of display strings per model."""
    rows = []
    for name, m in metrics.get("models", {}).items():
        harm = m.get("harmlessness") or {}
        judge = harm.get("judge") or {}
        reward = (m.get("reward") or {}).get("all")
        rows.append({
            "model": name,
            "win rate vs " + str(metrics.get("baseline") or "baseline"):
                ("(baseline)" if name == metrics.get("baseline") else _win(m.get("win_rate"))),
            "refusal (red team)": _rate_ci(harm.get("refusal_rate")),
            "judge: harmful": _pct(judge.get("harmful_rate")) if judge else DASH,
            "judge: vs refusal": _win(judge.get("vs_refusal")) if judge else DASH,
            "over-refusal (benign)": _rate_ci(m.get("over_refusal")),
            "mean reward": DASH if not reward or reward.get("mean") is None else
            f"{reward['mean']:.3f} ± {reward['std']:.3f}",
        })
    return rows


def format_table(metrics: dict[str, Any]) -> str:
    """A fixed-width table of the main numbers, one model per row; columns with no data are left out."""
    rows = model_rows(metrics)
    lines: list[str] = []
    if rows:
        cols = [c for c in rows[0] if c == "model" or any(r[c] not in (DASH, "(baseline)") for r in rows)]
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
        lines.append("  ".join(c.ljust(widths[c]) for c in cols))
        lines.append("  ".join("-" * widths[c] for c in cols))
        lines += ["  ".join(r[c].ljust(widths[c]) for c in cols) for r in rows]
    rm = metrics.get("reward_model") or {}
    if rm.get("accuracy"):
        a = rm["accuracy"]
        lines.append(f"reward model {rm['model']}: accuracy {_rate_ci(a, 'accuracy')} on {rm.get('data')}, "
                     f"mean margin {a['mean_margin']:.3f}")
        lines += [f"  note: {n}" for n in a.get("notes", [])]
    principles = _principle_lines(metrics)
    if principles:
        lines.append("")
        lines += principles
    return "\n".join(lines)


def _principle_lines(metrics: dict[str, Any]) -> list[str]:
    out = []
    for name, m in metrics.get("models", {}).items():
        per = (m.get("win_rate") or {}).get("per_principle") or {}
        if per:
            out.append(f"{name} vs {metrics.get('baseline')}, per principle:")
            out += [f"  {pid}: {_win(w)}" for pid, w in per.items()]
    return out


def write_metrics(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write the metrics as JSON (NaN written as null); the parent directory is created."""
    p = Path(path)
    if p.is_dir():
        raise UserInputError(f"{p}: is a directory; give a file path for the metrics, e.g. {p / 'metrics.json'}")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(json_safe(metrics), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return p


def json_safe(x: Any) -> Any:
    """``x`` with every NaN or infinite float (nested in dicts, lists, tuples) replaced by None.

    ``json.dumps`` would write them as ``NaN``/``Infinity``, which is not JSON: browsers and
    ``jq`` refuse the file. A figure with no value (no judged pair, no prompt) is null instead.
    """
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


__all__ = ["format_table", "write_metrics", "model_rows", "json_safe"]
