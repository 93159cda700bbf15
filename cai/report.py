"""The per-run report: Markdown and HTML, with matplotlib plots of metrics per round.

It reads only files in the run directory (manifest, each round's eval/metrics.json,
dataset cards, training summaries), so it can be rebuilt at any time.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from cai.errors import UserInputError


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, per round, from the run directory."""
    d = Path(run_dir)
    manifest = _load(d / "manifest.json")
    if not manifest:
        raise UserInputError(f"{d}: no manifest.json; not a cai run directory")
    rounds = []
    for k in range(1, int(manifest.get("rounds", 1)) + 1):
        rd = d / f"round-{k}"
        if not rd.exists():
            break
        metrics = _load(rd / "eval" / "metrics.json")
        prefs = _load(rd / "preferences" / "cai_dataset.json")
        rl = _load(rd / "rl" / "training_summary.json")
        rounds.append({"round": k, "metrics": metrics, "preferences": prefs, "rl": rl})
    return {"dir": str(d), "manifest": manifest, "config": (d / "config.yaml").read_text(encoding="utf-8")
            if (d / "config.yaml").exists() else "", "rounds": rounds}


def _series(data: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> [(round, value)], skipping what a round did not measure."""
    out: dict[str, list[tuple[int, float]]] = {}

    def add(name: str, k: int, value: Any) -> None:
        if isinstance(value, (int, float)) and value == value:  # not NaN
            out.setdefault(name, []).append((k, float(value)))

    for r in data["rounds"]:
        k, m = r["round"], r["metrics"]
        cand = f"round-{k}"
        wr = m.get("win_rates", {}).get("vs round-0", {})
        add("win rate vs round 0", k, wr.get("rate"))
        refusal = m.get("refusal", {})
        if k == 1 and "round-0" in refusal:
            add("refusal rate (red team)", 0, refusal["round-0"].get("red_team_refusal_rate"))
            add("over-refusal rate (benign)", 0, refusal["round-0"].get("benign_refusal_rate"))
        add("refusal rate (red team)", k, refusal.get(cand, {}).get("red_team_refusal_rate"))
        add("over-refusal rate (benign)", k, refusal.get(cand, {}).get("benign_refusal_rate"))
        reward = m.get("reward", {})
        add("mean reward (this round's RM)", k, reward.get(cand))
        stats = (r["preferences"].get("summary") or {}).get("labeller") or {}
        add("labeller position consistency", k, stats.get("position_consistency_rate"))
        add("labeller mean confidence", k, stats.get("mean_confidence"))
        kl = _last_metric(r["rl"], ("objective/kl", "kl", "train/kl"))
        # TRL's per-batch estimate, mean(log p - log p_ref) over sampled tokens: unbiased
        # but noisy, so a short run can print a small negative value.
        add("KL to reference (RL, last batch's sampled estimate)", k, kl)
    return out


def _last_metric(summary: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for entry in reversed(summary.get("log_history", []) or summary.get("losses", []) or []):
        for key in keys:
            if isinstance(entry, dict) and key in entry:
                return entry[key]
    final = summary.get("final_metrics") or {}
    for key in keys:
        if key in final:
            return final[key]
    return None


def _plot(series: dict[str, list[tuple[int, float]]], out_dir: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    files = []
    for i, (name, points) in enumerate(sorted(series.items())):
        fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=100)
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("round")
        ax.set_xticks(sorted(set(xs)))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fname = f"plot_{i:02d}.png"
        fig.savefig(out_dir / fname)
        plt.close(fig)
        files.append((name, fname))
    return files


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html (+ PNG plots) into the run directory."""
    data = collect(run_dir)
    d = Path(run_dir)
    series = _series(data)
    plots = _plot(series, d)
    md: list[str] = [f"# cai run report: {data['manifest'].get('name', d.name)}", ""]
    md += ["## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    for name, rec in data["manifest"].get("stages", {}).items():
        md.append(f"| {name} | {rec.get('status')} | {rec.get('seconds', '')} |")
    md += ["", "## Metrics per round", ""]
    if series:
        md += ["| metric | " + " | ".join(f"round {k}" for k in _rounds(series)) + " |",
               "|---|" + "---|" * len(_rounds(series))]
        for name, points in sorted(series.items()):
            vals = dict(points)
            md.append(f"| {name} | " + " | ".join(_fmt(vals.get(k)) for k in _rounds(series)) + " |")
    else:
        md.append("No evaluation has finished yet.")
    for r in data["rounds"]:
        wr = r["metrics"].get("win_rates", {})
        for label, w in wr.items():
            md.append("")
            md.append(f"Round {r['round']} win rate {label}: {_fmt(w.get('rate'))} "
                      f"(95% CI {_fmt(w.get('ci_low'))}–{_fmt(w.get('ci_high'))}; "
                      f"{w.get('wins', '?')} wins, {w.get('losses', '?')} losses, {w.get('ties', '?')} ties)")
    md += ["", "## Plots", ""] + [f"![{name}]({f})" for name, f in plots]
    md += ["", "## Sample responses, before and after", ""]
    for r in data["rounds"]:
        for s in r["metrics"].get("samples", [])[:4]:
            md += [f"**Prompt (round {r['round']}):** {s.get('prompt', '')}", ""]
            for key, value in s.items():
                if key != "prompt":
                    md += [f"- *{key}:* {value}"]
            md.append("")
    md += ["## Provenance", "", "Resolved config:", "", "```yaml", data["config"].rstrip(), "```", ""]
    md_path = d / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    html_path = d / "report.html"
    html_path.write_text(_html(md, plots), encoding="utf-8")
    return md_path, html_path


def _rounds(series: dict[str, list[tuple[int, float]]]) -> list[int]:
    return sorted({k for pts in series.values() for k, _ in pts})


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))


def _html(md: list[str], plots: list[tuple[str, str]]) -> str:
    """A plain, dependency-free HTML rendering of the Markdown lines (tables, images, code)."""
    body: list[str] = []
    in_code = in_table = False
    for line in md:
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src[:-1])}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td{border:1px solid #ccc;padding:.2em .5em}img{margin:.5em}pre{background:#f6f6f6;padding:1em}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>cai report</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</body></html>"
