"""workbench.html / diff.html: one self-contained page (inline CSS and a little JS, nothing fetched) drawn
from the JSON document. Cells sort by "changed most" (or preference, principle, prompt) and filter by verdict."""

from __future__ import annotations

import html
from typing import Any

from cai.workbench.matrix import VERDICTS
from cai.workbench.terminal import LEGEND, short


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1280px;margin:0 auto;padding:18px 22px 60px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #d9dde3;padding-bottom:4px}
.meta{color:#566;margin:0 0 6px}.legend{color:#566;font-size:12.5px;max-width:1000px}
table{border-collapse:collapse;background:#fff;font-size:13px;max-width:100%}
th,td{border:1px solid #dde1e6;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}
.matrix td a{display:block;color:inherit;text-decoration:none;white-space:nowrap;padding:1px 3px;border-radius:3px}
.scroll{overflow-x:auto;max-width:100%}
.v-better{background:#d8f1dc}.v-worse{background:#f8d7d5}.v-unclear{background:#fbefc8}
.v-rejected{background:#e4dff3}.v-unjudged{background:#eceef0}.v-no_response{background:#d5d8dc}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600}
.cells{display:flex;flex-direction:column;gap:12px}
.cell{background:#fff;border:1px solid #d9dde3;border-radius:6px;padding:10px 12px}
.cell header{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:baseline;margin-bottom:6px}
.cell header b{font-size:14.5px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:8px 14px}
.text{white-space:pre-wrap;overflow-wrap:anywhere;background:#fafbfc;border:1px solid #eceef1;border-radius:4px;
  padding:6px 8px;margin:2px 0 0;font-size:13.5px}
.label{font-size:11.5px;text-transform:uppercase;letter-spacing:.04em;color:#667}
.small{font-size:12px;color:#566}
.toolbar{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;background:#fff;border:1px solid #d9dde3;
  border-radius:6px;padding:8px 10px;margin-bottom:10px;position:sticky;top:0;z-index:2}
.toolbar label{white-space:nowrap}
.flag{color:#8a1f11}.ok{color:#22663a}
del{background:#f8d7d5;text-decoration:line-through}ins{background:#d8f1dc;text-decoration:none}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:8px 14px}
@media (max-width:760px){.sides{grid-template-columns:1fr}}
"""

JS = """
(function(){
  var box=document.getElementById('cells'); if(!box) return;
  var cards=Array.prototype.slice.call(box.children);
  var sortSel=document.getElementById('sort');
  function num(c,k){var v=parseFloat(c.dataset[k]);return isNaN(v)?-1:v;}
  function sort(){
    var how=sortSel.value, out=cards.slice();
    out.sort(function(a,b){
      if(how==='changed') return num(b,'change')-num(a,'change')||num(a,'order')-num(b,'order');
      if(how==='preferred') return num(b,'p')-num(a,'p')||num(a,'order')-num(b,'order');
      if(how==='prompt') return (a.dataset.prompt<b.dataset.prompt?-1:a.dataset.prompt>b.dataset.prompt?1:0)
        ||num(a,'order')-num(b,'order');
      return num(a,'order')-num(b,'order');
    });
    out.forEach(function(c){box.appendChild(c);});
  }
  function filter(){
    var on={}; document.querySelectorAll('input.vf').forEach(function(i){on[i.value]=i.checked;});
    var shown=0; cards.forEach(function(c){var vis=c.dataset.verdict.split(' ').some(function(v){return on[v];});
      c.hidden=!vis; if(vis) shown++;});
    document.getElementById('shown').textContent=shown+' of '+cards.length+' shown';
  }
  sortSel.addEventListener('change',sort);
  document.querySelectorAll('input.vf').forEach(function(i){i.addEventListener('change',filter);});
  sort(); filter();
})();
"""


def _badge(verdict: str) -> str:
    return f'<span class="badge v-{_e(verdict)}">{_e(verdict.replace("_", " "))}</span>'


def _text(label: str, text: str | None, extra: str = "") -> str:
    body = _e(text) if text else '<span class="small">(none)</span>'
    return f'<div><div class="label">{_e(label)}{extra}</div><div class="text">{body}</div></div>'


def _p(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _judge_line(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    j = c.get("judge") or {}
    parts = []
    if j.get("p_revision") is not None:
        cons = j.get("position_consistent")
        parts.append(f"P(revision better) {_p(j['p_revision'])} (shown first {_p(j.get('p_revision_first'))}, "
                     f"second {_p(j.get('p_revision_second'))}; "
                     + ("position-consistent" if cons else "orders disagree") + ")")
    elif j.get("notes"):
        parts.append("; ".join(j["notes"]))
    if c.get("reason"):
        parts.append(f"rejected: {c['reason']}")
    if c.get("change") is not None:
        parts.append(f"Δ {c['change']:.0%} of the words changed")
    ref = c.get("refusal") or {}
    for k in ("critique", "revision"):
        if ref.get(k):
            parts.append(f"{k} is a refusal (“{ref[k]['matched']}”)")
    parts.append("from the cache" if c.get("cached") else "computed in this run")
    return '<div class="small">' + " · ".join(_e(p) for p in parts) + "</div>"


def _word_diff(ops: list[list[str]]) -> str:
    out = []
    for op, text in ops:
        t = _e(text)
        out.append(t if op == "=" else f"<del>{t}</del>" if op == "-" else f"<ins>{t}</ins>")
    return "".join(out)


def _toolbar(verdicts: dict[str, int], sorts: list[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{v}">{_e(t)}</option>' for v, t in sorts)
    boxes = "".join(f'<label><input type="checkbox" class="vf" value="{_e(v)}" checked> {_badge(v)} {n}</label>'
                    for v, n in verdicts.items())
    return (f'<div class="toolbar"><label>sort by <select id="sort">{opts}</select></label>'
            f'<span>verdict: {boxes}</span><span class="small" id="shown"></span></div>')


def _health(doc: dict[str, Any]) -> str:
    flagged = [h for h in doc["health"] if h["flags"]]
    if not flagged:
        return '<p class="ok">No principle flagged: none is mostly rejected by the gates, at chance for the judge, ' \
               'or without effect on the answers.</p>'
    rows = "".join(f'<tr><td><b>{_e(h["principle_id"])}</b></td><td>{_e(", ".join(h["flags"]))}</td>'
                   f'<td class="flag">{"<br>".join(_e(p) for p in h["problems"])}</td></tr>' for h in flagged)
    return f"<table><tr><th>principle</th><th>flags</th><th>problem</th></tr>{rows}</table>"


def _rate(r: dict[str, Any] | None) -> str:
    if not r or r.get("rate") is None:
        return "—"
    return f"{r['rate']:.0%} [{r['low']:.0%}, {r['high']:.0%}] (n={r['n']})"


def _figures_rows(principles: list[dict[str, Any]], tag: str = "") -> str:
    rows = []
    for p in principles:
        f = p["figures"]
        r = p.get("rates") or {}
        rows.append(
            f"<tr><td><b>{_e(p['id'])}</b>{_e(tag)}</td><td>{f['kept']}/{f['n']}</td>"
            f"<td>{_e(', '.join(f'{k} x{v}' for k, v in f['reject_reasons'].items()) or '—')}</td>"
            f"<td>{f['verdicts'].get('better', 0)}</td><td>{f['verdicts'].get('worse', 0)}</td>"
            f"<td>{_p(f['mean_p_revision'])}</td><td>{f['position_consistent']}/{f['judged']}</td>"
            f"<td>{_p(f['mean_change'])}</td><td>{f['revision_refusals']}</td>"
            f"<td>{_e(_rate(r.get('refusal')))}</td><td>{_e(_rate(r.get('over_refusal')))}</td></tr>")
    return "".join(rows)


FIG_HEAD = ("<tr><th>principle</th><th>kept</th><th>rejected because</th><th>better</th><th>worse</th>"
            "<th>mean P(rev. better)</th><th>position-consistent</th><th>mean Δ</th><th>revisions refusing</th>"
            "<th>refusal (harmful)</th><th>over-refusal (benign)</th></tr>")


def _prompts(doc: dict[str, Any]) -> str:
    out = []
    for p in doc["prompts"]:
        init = p["initial"]
        tag = f" ({p['kind']})" if p.get("kind") else ""
        note = (f" — unusable: {init['degenerate']}" if init["degenerate"] else "") + \
               (" — a refusal" if init.get("refusal") else "")
        out.append(f'<div class="cell" id="prompt-{_e(p["prompt_id"])}"><header><b>{_e(p["label"])}</b>'
                   f'<span class="small">{_e(p["prompt_id"])}{_e(tag)}</span></header><div class="grid">'
                   f'{_text("prompt", p["text"])}{_text("initial response", init["text"], _e(note))}</div></div>')
    return "".join(out)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body><main>{body}</main><script>{JS}</script></body></html>\n")


def render_try(doc: dict[str, Any]) -> str:
    con, c, t = doc["constitution"], doc["counts"], doc["timing"]
    labels = {p["prompt_id"]: p for p in doc["prompts"]}
    by = {(x["principle_id"], x["prompt_id"]): (i, x) for i, x in enumerate(doc["cells"])}
    head = "".join(f'<th title="{_e(p["text"])}">{_e(p["label"])}</th>' for p in doc["prompts"])
    rows = []
    for p in doc["principles"]:
        tds = []
        for q in doc["prompts"]:
            i, cell = by[(p["id"], q["prompt_id"])]
            tds.append(f'<td><a class="v-{_e(cell["verdict"])}" href="#cell-{i}">{_e(short(cell, 40))}</a></td>')
        rows.append(f'<tr><th title="{_e(p["critique_request"])}">{_e(p["id"])}</th>{"".join(tds)}</tr>')
    principles = {p["id"]: p for p in doc["principles"]}
    cards = []
    for i, cell in enumerate(doc["cells"]):
        q = labels[cell["prompt_id"]]
        pr = principles[cell["principle_id"]]
        j = cell.get("judge") or {}
        cards.append(
            f'<article class="cell" id="cell-{i}" data-verdict="{_e(cell["verdict"])}" data-order="{i}" '
            f'data-change="{cell["change"] if cell["change"] is not None else ""}" '
            f'data-p="{j.get("p_revision") if j.get("p_revision") is not None else ""}" '
            f'data-principle="{_e(cell["principle_id"])}" data-prompt="{_e(q["label"])}">'
            f'<header><b>{_e(cell["principle_id"])}</b><span>× {_e(q["label"])}</span>{_badge(cell["verdict"])}'
            f'{_judge_line(cell)}</header>'
            f'<div class="grid">{_text("prompt", q["text"])}{_text("initial response", q["initial"]["text"])}</div>'
            f'<div class="grid">{_text("critique", cell.get("critique"))}{_text("revision", cell.get("revision"))}'
            f'</div><div class="small">critique request: {_e(pr["critique_request"])}<br>revision request: '
            f'{_e(pr["revision_request"])}</div></article>')
    counts = {v: sum(1 for x in doc["cells"] if x["verdict"] == v) for v in VERDICTS}
    verdicts = {v: n for v, n in counts.items() if n}
    init_rates = (doc.get("rates") or {}).get("initial")
    body = (
        f"<h1>Workbench: {_e(con['name'])} v{_e(con['version'])}</h1>"
        f'<p class="meta">{_e(con["source"])} · model {_e(doc["model"])} · {len(doc["principles"])} principles × '
        f'{len(doc["prompts"])} prompts · {c["cells"]} cells, {c["cells_cached"]} from the cache, '
        f'{c["cells_computed"]} computed · {t["total_s"]:.1f} s · {_e(doc["created"])}</p>'
        f"<h2>Health</h2>{_health(doc)}"
        f'<h2>Matrix</h2><p class="legend">{_e(LEGEND)}</p><div class="scroll"><table class="matrix">'
        f'<tr><th>principle</th>{head}</tr>{"".join(rows)}</table></div>'
        f'<h2>Figures</h2><div class="scroll"><table>{FIG_HEAD}{_figures_rows(doc["principles"])}</table></div>'
        + (f'<p class="small">initial responses: refusal {_e(_rate(init_rates["refusal"]))}, over-refusal '
           f'{_e(_rate(init_rates["over_refusal"]))}</p>' if init_rates else
           f'<p class="small">Refusal and over-refusal rates (Wilson 95% intervals) are given from '
           f'{doc["rates"]["min_prompts"]} prompts on.</p>')
        + f'<h2>Prompts and initial responses</h2><div class="cells">{_prompts(doc)}</div>'
        f'<h2>Cells</h2>{_toolbar(verdicts, [("changed", "changed most"), ("preferred", "judge prefers the revision most"), ("principle", "principle"), ("prompt", "prompt")])}'
        f'<div class="cells" id="cells">{"".join(cards)}</div>'
    )
    return _page(f"cai workbench: {con['name']}", body)


def _side(label: str, cell: dict[str, Any] | None) -> str:
    if cell is None:
        return f'<div><div class="label">{_e(label)}</div><p class="small">(this version has no such principle)</p></div>'
    return (f'<div><div class="label">{_e(label)} {_badge(cell["verdict"])}</div>{_judge_line(cell)}'
            f'{_text("critique", cell.get("critique"))}{_text("revision", cell.get("revision"))}</div>')


def render_diff(doc: dict[str, Any]) -> str:
    d = doc["text_diff"]
    a, b = doc["a"], doc["b"]
    items = []
    for p in d["principles"]:
        if p["status"] == "unchanged":
            continue
        fields = "".join(f'<div><span class="label">{_e(k)}</span><div class="text">{_word_diff(f["diff"])}</div></div>'
                         for k, f in p["fields"].items())
        items.append(f'<div class="cell"><header><b>{_e(p["id"])}</b>{_badge(p["status"])}</header>{fields}</div>')
    for s in d["shared"]:
        reach = "reaches every cell" if s["affects_cells"] else "does not reach the prompts"
        items.append(f'<div class="cell"><header><b>{_e(s["field"])}</b><span class="small">constitution-wide; '
                     f'{_e(reach)}</span></header><div class="text">{_word_diff(s["diff"])}</div></div>')
    same = [p["id"] for p in d["principles"] if p["status"] == "unchanged"]
    if same:
        items.append(f'<p class="small">unchanged: {_e(", ".join(same))}</p>')
    labels = {p["prompt_id"]: p for p in a["prompts"]}
    b_prompts = {p["prompt_id"]: p for p in b["prompts"]}
    cards = []
    for i, pair in enumerate(doc["pairs"]):
        q = labels[pair["prompt_id"]]
        qb = b_prompts[pair["prompt_id"]]
        verdicts = " ".join(sorted({x["verdict"] for x in (pair["a"], pair["b"]) if x}))
        init = _text("initial response", q["initial"]["text"])
        if qb["initial"]["text"] != q["initial"]["text"]:
            init = _text("initial response (A)", q["initial"]["text"]) + _text("initial response (B)",
                                                                              qb["initial"]["text"])
        same = '<span class="small">the same cell in both (its inputs did not change)</span>' if pair["same_cell"] else ""
        cards.append(
            f'<article class="cell" data-verdict="{_e(verdicts)}" data-order="{i}" '
            f'data-change="{pair["ab_change"] if pair.get("ab_change") is not None else ""}" data-p="" '
            f'data-principle="{_e(pair["principle_id"])}" data-prompt="{_e(q["label"])}">'
            f'<header><b>{_e(pair["principle_id"])}</b><span>× {_e(q["label"])}</span>{_badge(pair["status"] or "")}'
            f'{same}</header><div class="grid">{_text("prompt", q["text"])}{init}</div>'
            f'<div class="sides">{_side("A", pair["a"])}{_side("B", pair["b"])}</div></article>')
    verdicts = {v: sum(1 for pr in doc["pairs"] if any(x and x["verdict"] == v for x in (pr["a"], pr["b"])))
                for v in VERDICTS}
    verdicts = {v: n for v, n in verdicts.items() if n}
    sel = set(doc["principle_ids"])
    figs = (_figures_rows([p for p in a["principles"] if p["id"] in sel], " (A)")
            + _figures_rows([p for p in b["principles"] if p["id"] in sel], " (B)"))
    ra, rb = a["rates"].get("initial"), b["rates"].get("initial")
    rates = (f'<p class="small">initial responses: refusal A {_e(_rate(ra["refusal"]))}, B {_e(_rate(rb["refusal"]))};'
             f' over-refusal A {_e(_rate(ra["over_refusal"]))}, B {_e(_rate(rb["over_refusal"]))}</p>' if ra and rb
             else f'<p class="small">Refusal and over-refusal rates (Wilson 95% intervals) are given from '
                  f'{a["rates"]["min_prompts"]} prompts on.</p>')
    body = (
        f"<h1>Diff: {_e(d['a']['name'])} v{_e(d['a']['version'])} → {_e(d['b']['name'])} v{_e(d['b']['version'])}</h1>"
        f'<p class="meta">A: {_e(d["a"]["source"])} · B: {_e(d["b"]["source"])} · model {_e(a["model"])} · '
        f'{len(a["prompts"])} prompts · {_e(doc["created"])}</p>'
        f'<h2>What changed</h2><div class="cells">{"".join(items) or "<p>No differences.</p>"}</div>'
        f'<h2>Figures</h2><div class="scroll"><table>{FIG_HEAD}{figs}</table></div>{rates}'
        f'<h2>Health</h2><p class="label">A</p>{_health(a)}<p class="label">B</p>{_health(b)}'
        f'<h2>Side by side</h2><p class="legend">{_e(LEGEND)}</p>'
        f'{_toolbar(verdicts, [("changed", "revisions differ most (A vs B)"), ("principle", "principle"), ("prompt", "prompt")])}'
        f'<div class="cells" id="cells">{"".join(cards)}</div>'
    )
    return _page(f"cai workbench diff: {d['a']['name']}", body)


def render(doc: dict[str, Any]) -> str:
    return render_try(doc) if doc["kind"] == "try" else render_diff(doc)


__all__ = ["render", "render_try", "render_diff"]
