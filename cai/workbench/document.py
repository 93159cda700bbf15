"""workbench.json / diff.json: the one document the terminal, the HTML page and tests read (schema in
docs/workbench.md), and writing it with its HTML view into ``--out``."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from cai.errors import UserInputError
from cai.evaluation.table import json_safe
from cai.workbench.diff import DiffRun
from cai.workbench.figures import MIN_RATE_PROMPTS, principle_figures, refusal_rates
from cai.workbench.health import health, rank
from cai.workbench.matrix import Matrix, change
from cai.workbench.selection import prompt_kind

SCHEMA = "cai.workbench/1"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _prompts(m: Matrix) -> list[dict[str, Any]]:
    out = []
    for i, (rec, init) in enumerate(zip(m.records, m.initial), start=1):
        out.append({"prompt_id": rec.id, "label": f"P{i}", "text": rec.text, "messages": rec.messages,
                    "extra": rec.extra, "kind": prompt_kind(rec),
                    "initial": {k: init.get(k) for k in ("text", "degenerate", "finish_reason", "cached", "refusal")}})
    return out


def matrix_document(m: Matrix) -> dict[str, Any]:
    """The part of a document that describes one constitution's matrix."""
    figs = {p.id: principle_figures(m, p.id) for p in m.principles}
    return {
        "constitution": m.constitution.provenance(),
        "model": m.model,
        "settings": m.settings,
        "templates": m.templates,
        "timing": m.timing,
        "counts": m.counts,
        "principles": [
            {"id": p.id, "critique_request": p.critique_request, "revision_request": p.revision_request,
             "comparison_question": p.comparison_question, "weight": p.weight, "tags": list(p.tags),
             "figures": figs[p.id], "rates": refusal_rates(m, p.id)}
            for p in m.principles],
        "prompts": _prompts(m),
        "cells": [dict(c) for c in m.cells],
        "health": rank([health(pid, f) for pid, f in figs.items()]),
        "rates": {"min_prompts": MIN_RATE_PROMPTS, "initial": refusal_rates(m, None)},
    }


def try_document(m: Matrix, *, command: list[str] | None = None) -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": "try", "created": _now(), "command": command, **matrix_document(m)}


def diff_document(run: DiffRun, *, command: list[str] | None = None) -> dict[str, Any]:
    a, b = matrix_document(run.a), matrix_document(run.b)
    ca = {(c["principle_id"], c["prompt_id"]): c for c in a["cells"]}
    cb = {(c["principle_id"], c["prompt_id"]): c for c in b["cells"]}
    status = {p["id"]: p["status"] for p in run.text["principles"]}
    pairs = []
    for pid in run.principle_ids:
        for rec in run.a.records:
            x, y = ca.get((pid, rec.id)), cb.get((pid, rec.id))
            pairs.append({"principle_id": pid, "prompt_id": rec.id, "status": status.get(pid),
                          "a": x, "b": y,
                          "ab_change": change(x["revision"], y["revision"])
                          if x and y and x.get("revision") and y.get("revision") else None,
                          "same_cell": bool(x and y and x["key"] and x["key"] == y["key"])})
    return {"schema": SCHEMA, "kind": "diff", "created": _now(), "command": command,
            "text_diff": run.text, "principle_ids": run.principle_ids, "a": a, "b": b, "pairs": pairs}


def check_out_dir(out: str | Path) -> Path:
    """Refuse an --out that is a file, before any model loads."""
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{p}: --out is a file; give a directory (it gets workbench.html and workbench.json)")
    return p


def write(doc: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """DIR/workbench.{json,html} (try) or DIR/diff.{json,html} (diff)."""
    from cai.workbench.page import render

    d = check_out_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    stem = "workbench" if doc["kind"] == "try" else "diff"
    doc = json_safe(doc)
    jpath, hpath = d / f"{stem}.json", d / f"{stem}.html"
    jpath.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    hpath.write_text(render(doc), encoding="utf-8")
    return jpath, hpath


__all__ = ["SCHEMA", "try_document", "diff_document", "matrix_document", "write", "check_out_dir"]
