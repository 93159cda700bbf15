"""The terminal views: the principles x prompts matrix with short cells and the figures, and the diff."""

from __future__ import annotations

import textwrap
from typing import Any

from cai.workbench.diff import render_word_diff

LEGEND = ("better / worse: the judge prefers the revision / the initial answer in both orders "
          "(the number: P(revision better), both orders averaged); unclear: the two orders disagree; "
          "rejected: a quality gate or check refused the critique or revision (the reason follows); "
          "unjudged: nothing to judge (no revision, or no comparison_question); "
          "Δ: share of the answer's words changed; R: the revision is a refusal; "
          "*: computed now (else from the cache).")
CELL_W = 22
COLS = 5  # prompt columns per block; more prompts wrap into further blocks


def _clip(text: str, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _p(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}".lstrip("0") if x < 1 else "1.0"


def short(cell: dict[str, Any] | None, width: int = CELL_W) -> str:
    """A cell in a few characters: verdict, P(revision better), Δ, R, and * when computed now."""
    if cell is None:
        return "·"
    v = cell["verdict"]
    mark = "" if cell.get("cached") else "*"
    if v == "rejected":
        reason = (cell.get("reason") or "").replace("critique_", "crit:").replace("revision_", "")
        return _clip(f"rej {reason}{mark}", width)
    if v == "no_response":
        return "no response"
    parts = [v]
    j = cell.get("judge") or {}
    if j.get("p_revision") is not None:
        parts.append(_p(j["p_revision"]))
    if cell.get("change") is not None:
        parts.append(f"Δ{round(cell['change'] * 100)}")
    if (cell.get("refusal") or {}).get("revision"):
        parts.append("R")
    return _clip(" ".join(parts) + mark, width)


def _rate(r: dict[str, Any] | None) -> str:
    if not r or r.get("rate") is None:
        return "—"
    return f"{r['rate']:.0%} [{r['low']:.0%}, {r['high']:.0%}] n={r['n']}"


def _figures_line(f: dict[str, Any]) -> str:
    return (f"kept {f['kept']}/{f['n']}  better {f['verdicts'].get('better', 0)}  "
            f"p̄ {_p(f['mean_p_revision'])}  consistent {f['position_consistent']}/{f['judged']}  "
            f"Δ̄ {_p(f['mean_change'])}  R {f['revision_refusals']}")


def _prompt_lines(doc: dict[str, Any], width: int) -> list[str]:
    lines = []
    for p in doc["prompts"]:
        init = p["initial"]
        if init["degenerate"]:
            tail = f"initial: unusable ({init['degenerate']})"
        else:
            tail = f"initial: {len((init['text'] or '').split())} words" + (", refusal" if init["refusal"] else "")
        lines.append(f"  {p['label']:<4}{_clip(p['text'], max(20, width - 40)):<{max(20, width - 40)}}  {tail}")
    return lines


def matrix_lines(doc: dict[str, Any], width: int = 120, cell_w: int = CELL_W) -> list[str]:
    principles = [p["id"] for p in doc["principles"]]
    prompts = doc["prompts"]
    by = {(c["principle_id"], c["prompt_id"]): c for c in doc["cells"]}
    id_w = min(28, max([len("principle")] + [len(i) for i in principles]))
    lines: list[str] = []
    for start in range(0, max(len(prompts), 1), COLS):
        block = prompts[start : start + COLS]
        lines.append(f"{'principle':<{id_w}}  " + "  ".join(f"{p['label']:<{cell_w}}" for p in block))
        for pid in principles:
            cells = [short(by.get((pid, p["prompt_id"])), cell_w) for p in block]
            lines.append(f"{_clip(pid, id_w):<{id_w}}  " + "  ".join(f"{c:<{cell_w}}" for c in cells))
        lines.append("")
    return lines


def try_text(doc: dict[str, Any], width: int = 120) -> str:
    c, t = doc["counts"], doc["timing"]
    con = doc["constitution"]
    head = (f"{con['name']} v{con['version']} on {len(doc['prompts'])} prompts x {len(doc['principles'])} principles,"
            f" model {doc['model']}: {c['cells']} cells ({c['cells_cached']} from the cache, "
            f"{c['cells_computed']} computed) in {t['total_s']:.1f} s"
            + (f" (model load {t['model_load_s']:.1f} s)" if t.get("model_load_s") else ""))
    out = [head, ""] + _prompt_lines(doc, width) + [""] + matrix_lines(doc, width)
    out += textwrap.wrap(LEGEND, width) + [""]
    out.append("figures:")
    id_w = max([9] + [len(p["id"]) for p in doc["principles"]])
    for p in doc["principles"]:
        out.append(f"  {p['id']:<{id_w}}  {_figures_line(p['figures'])}")
        if p.get("rates"):
            r = p["rates"]
            out.append(f"  {'':<{id_w}}  refusal {_rate(r['refusal'])}; over-refusal {_rate(r['over_refusal'])}")
    if doc["rates"].get("initial"):
        r = doc["rates"]["initial"]
        out.append(f"  {'initial':<{id_w}}  refusal {_rate(r['refusal'])}; over-refusal {_rate(r['over_refusal'])}")
    out += ["", "health:"] + health_lines(doc)
    return "\n".join(out)


def health_lines(doc: dict[str, Any]) -> list[str]:
    flagged = [h for h in doc["health"] if h["flags"]]
    if not flagged:
        return ["  no principle flagged (gates, judge at chance, never changes the answer)"]
    return [f"  {h['principle_id']}: {problem}" for h in flagged for problem in h["problems"]]


def text_diff_lines(d: dict[str, Any], width: int = 120) -> list[str]:
    lines = [f"A: {d['a']['name']} v{d['a']['version']} ({d['a']['source']})",
             f"B: {d['b']['name']} v{d['b']['version']} ({d['b']['source']})"]
    changed = [p for p in d["principles"] if p["status"] != "unchanged"]
    same = [p["id"] for p in d["principles"] if p["status"] == "unchanged"]
    for p in changed:
        lines.append(f"  {p['status']:<8} {p['id']}")
        for name, f in p["fields"].items():
            body = render_word_diff(f["diff"]) if p["status"] == "changed" else (f["b"] or f["a"])
            lines += textwrap.wrap(f"{name}: {body}", width, initial_indent="      ", subsequent_indent="        ")
    for s in d["shared"]:
        reach = "reaches every cell" if s["affects_cells"] else "does not reach the prompts"
        lines.append(f"  changed  {s['field']} (constitution-wide; {reach})")
        if s["field"] in ("system_prompt", "description", "name", "version"):
            lines += textwrap.wrap(render_word_diff(s["diff"]), width, initial_indent="      ",
                                   subsequent_indent="        ")
    if same:
        lines += textwrap.wrap(f"unchanged: {', '.join(same)}", width, initial_indent="  ", subsequent_indent="    ")
    if not changed and not d["shared"]:
        lines.append("  no differences")
    return lines


def diff_text(doc: dict[str, Any], width: int = 120) -> str:
    out = text_diff_lines(doc["text_diff"], width)
    if not doc["principle_ids"]:
        return "\n".join(out)
    a, b = doc["a"], doc["b"]
    labels = {p["prompt_id"]: p["label"] for p in a["prompts"]}
    out += ["", f"on {len(a['prompts'])} prompts (principles: {', '.join(doc['principle_ids'])}):"]
    out += _prompt_lines(a, width) + [""]
    id_w = max([9] + [len(i) for i in doc["principle_ids"]])
    out.append(f"{'principle':<{id_w}}  {'prompt':<6}  {'A':<{CELL_W}}  {'B':<{CELL_W}}")
    for pair in doc["pairs"]:
        same = "  (same cell)" if pair["same_cell"] else ""
        out.append(f"{pair['principle_id']:<{id_w}}  {labels[pair['prompt_id']]:<6}  {short(pair['a']):<{CELL_W}}  "
                   f"{short(pair['b']):<{CELL_W}}{same}")
    out += [""] + textwrap.wrap(LEGEND, width) + ["", "figures (A -> B):"]
    fa = {p["id"]: p for p in a["principles"]}
    fb = {p["id"]: p for p in b["principles"]}
    for pid in doc["principle_ids"]:
        for side, f in (("A", fa.get(pid)), ("B", fb.get(pid))):
            text = _figures_line(f["figures"]) if f else "(not in this version)"
            out.append(f"  {pid if side == 'A' else '':<{id_w}}  {side}  {text}")
            if f and f.get("rates"):
                r = f["rates"]
                out.append(f"  {'':<{id_w}}     refusal {_rate(r['refusal'])}; over-refusal {_rate(r['over_refusal'])}")
    if a["rates"].get("initial"):
        out.append(f"  {'initial':<{id_w}}     refusal {_rate(a['rates']['initial']['refusal'])}; "
                   f"over-refusal {_rate(a['rates']['initial']['over_refusal'])}")
    else:
        out.append(f"  (refusal and over-refusal rates with Wilson intervals from {a['rates']['min_prompts']} "
                   "prompts on)")
    out += ["", "health A:"] + health_lines(a) + ["health B:"] + health_lines(b)
    return "\n".join(out)


__all__ = ["try_text", "diff_text", "matrix_lines", "short", "health_lines", "text_diff_lines", "LEGEND"]
