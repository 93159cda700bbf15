"""The per-run report: ``report.md`` and a self-contained ``report.html`` (plots embedded).

It reads only the run directory (manifest, each stage's output, each round's
``eval/metrics.json`` and ``eval/eval.json``), so ``cai report RUN`` rebuilds it at any
time, for any pipeline. At the top, a verdict per round: did harmlessness and
over-refusal move beyond their intervals, which labels trained the round, and flags
(labeller at chance, a metric worse beyond its interval, failed rows, KL blow-up).

Modules: ``data`` (reading the run), ``verdict`` (comparisons and flags), ``verdict_json``
(the verdict's figures as ``report.json``), ``plots`` (matplotlib figures), ``samples``
(informative before/after samples, by category, and their section), ``build`` (the other
sections), ``fmt`` (shared number and name formatting), ``doc`` (one document rendered to
Markdown and HTML).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from cai.report.data import RunData, collect
from cai.report.verdict import RoundVerdict, verdicts
from cai.report.verdict_json import REPORT_JSON, report_json

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md, report.html, report.json and the plot_*.png files into the run directory.

    Returns the Markdown and HTML paths; report.json (`REPORT_JSON`) lies beside them.
    """
    from cai.report.build import build
    from cai.report.doc import to_html, to_markdown

    d = Path(run_dir)
    run = collect(d)
    blocks, figures = build(run)
    for old in d.glob("plot_*.png"):  # figures of an earlier report that may no longer exist
        old.unlink()
    for fig in figures:
        (d / fig.filename).write_bytes(fig.png)
    md_path, html_path = d / REPORT_MD, d / REPORT_HTML
    md_path.write_text(to_markdown(blocks), encoding="utf-8")
    html_path.write_text(to_html(blocks, f"cai report: {run.name}"), encoding="utf-8")
    (d / REPORT_JSON).write_text(json.dumps(report_json(run), indent=2, default=str) + "\n", encoding="utf-8")
    return md_path, html_path


def open_report(path: str | Path, opener: Callable[[str], bool] | None = None) -> str:
    """Open a report file in the default browser; returns the file:// URL it opened."""
    import webbrowser

    url = Path(path).resolve().as_uri()
    (opener or webbrowser.open)(url)
    return url


__all__ = ["REPORT_HTML", "REPORT_JSON", "REPORT_MD", "RoundVerdict", "RunData", "collect", "open_report",
           "report_json", "verdicts", "write_report"]
