"""A small document model rendered twice: to Markdown (report.md) and to HTML (report.html).

The report is built once as blocks; each renderer walks them. HTML never passes through
Markdown, so no Markdown syntax can leak into the page, and every piece of text from
the run (prompts, responses, config) is escaped by the renderer, not by its callers.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Union

# --- inline ---------------------------------------------------------------------------


@dataclass
class Strong:
    text: str


@dataclass
class Mono:
    text: str


@dataclass
class Badge:
    """A short status word: kind is good, bad, warn or neutral (colour in HTML, [brackets] in Markdown)."""

    text: str
    kind: str = "neutral"


Inline = Union[str, Strong, Mono, Badge]
Inlines = Union[str, Inline, list]


def _inlines(x: Inlines) -> list[Inline]:
    return list(x) if isinstance(x, list) else [x]


# --- blocks ---------------------------------------------------------------------------


@dataclass
class Heading:
    level: int
    text: str
    anchor: str | None = None


@dataclass
class Para:
    content: Inlines
    cls: str | None = None


@dataclass
class Bullets:
    items: list[Inlines]
    cls: str | None = None


@dataclass
class Table:
    header: list[Inlines]
    rows: list[list[Inlines]]
    cls: str | None = None


@dataclass
class Figure:
    """A PNG plot: written next to the report (``filename``) and embedded in the HTML as a data URI."""

    title: str
    filename: str
    png: bytes
    caption: str = ""


@dataclass
class Code:
    text: str
    lang: str = ""


@dataclass
class Quote:
    """Text from the run (a prompt, a response): kept verbatim, whitespace preserved."""

    text: str
    label: Inlines = ""
    cls: str | None = None


@dataclass
class Box:
    """A group of blocks (a verdict card, a sample): a <div class> in HTML, plain blocks in Markdown."""

    blocks: list = field(default_factory=list)
    cls: str = ""
    title: Inlines = ""
    anchor: str | None = None


@dataclass
class Columns:
    """Side-by-side boxes in HTML (before/after responses); one after another in Markdown."""

    boxes: list[Box]


Block = Union[Heading, Para, Bullets, Table, Figure, Code, Quote, Box, Columns]


# --- Markdown -------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_<|]|\](?=\())")
_MD_LINE_START = re.compile(r"^(\s*)(>|[#+=-](?=\s|$)|\d+[.)](?=\s|$))", re.MULTILINE)


def _line_start(m: re.Match) -> str:
    marker = m.group(2)
    # a list number is escaped at its punctuation (1\.), everything else before the marker
    return m.group(1) + (marker[:-1] + "\\" + marker[-1] if marker[0].isdigit() else "\\" + marker)


def md_escape(text: str) -> str:
    """Backslash-escape what Markdown would read as markup (emphasis, code, HTML, links, line-start markers)."""
    return _MD_LINE_START.sub(_line_start, _MD_SPECIAL.sub(r"\\\1", text))


def _md_inline(x: Inlines) -> str:
    out = []
    for part in _inlines(x):
        if isinstance(part, Strong):
            out.append(f"**{md_escape(part.text)}**")
        elif isinstance(part, Mono):
            out.append("`" + part.text.replace("`", "'") + "`")
        elif isinstance(part, Badge):
            out.append(f"**[{md_escape(part.text)}]**")
        else:
            out.append(md_escape(str(part)))
    return "".join(out)


def _md_cell(x: Inlines) -> str:
    return _md_inline(x).replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []

    def emit(block: Block) -> None:
        if isinstance(block, Heading):
            lines.extend([f"{'#' * block.level} {block.text}", ""])
        elif isinstance(block, Para):
            lines.extend([_md_inline(block.content), ""])
        elif isinstance(block, Bullets):
            lines.extend([f"- {_md_inline(item)}" for item in block.items] + [""])
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows)
            lines.append("")
        elif isinstance(block, Figure):
            lines.extend([f"![{md_escape(block.title)}]({block.filename})", ""])
            if block.caption:
                lines.extend([f"*{md_escape(block.caption)}*", ""])
        elif isinstance(block, Code):
            fence = "````" if "```" in block.text else "```"
            lines.extend([fence + block.lang, block.text.rstrip(), fence, ""])
        elif isinstance(block, Quote):
            if block.label:
                lines.extend([_md_inline(block.label), ""])
            body = block.text if block.text.strip() else "(empty)"
            lines.extend(["> " + md_escape(line) if line else ">" for line in body.splitlines()] + [""])
        elif isinstance(block, Box):
            if block.title:
                lines.extend([f"#### {_md_inline(block.title)}", ""])
            for b in block.blocks:
                emit(b)
        elif isinstance(block, Columns):
            for b in block.boxes:
                emit(b)

    for block in blocks:
        emit(block)
    return "\n".join(lines).rstrip() + "\n"


# --- HTML -----------------------------------------------------------------------------

STYLE = """
:root{--good:#1a7f37;--bad:#c62828;--warn:#9a6700;--muted:#57606a;--line:#d0d7de;--bg2:#f6f8fa}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;max-width:72em;
margin:1.5em auto;padding:0 1.2em}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid var(--line);padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}table{border-collapse:collapse;margin:.6em 0;font-size:.93em}
th,td{border:1px solid var(--line);padding:.25em .6em;text-align:left;vertical-align:top}
th{background:var(--bg2)}code{background:var(--bg2);padding:0 .25em;border-radius:3px;font-size:.92em}
pre{background:var(--bg2);padding:1em;overflow:auto;font-size:.85em;border-radius:6px}
pre code{padding:0;background:none;font-size:1em}.nowrap1 td:first-child{white-space:nowrap}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid var(--line);border-radius:4px}
figcaption{color:var(--muted);font-size:.88em}
.badge{display:inline-block;padding:0 .5em;border-radius:1em;font-size:.85em;font-weight:600;
border:1px solid currentColor;white-space:nowrap}
.badge.good{color:var(--good)}.badge.bad{color:var(--bad)}.badge.warn{color:var(--warn)}
.badge.neutral{color:var(--muted)}
.verdict{border:2px solid var(--line);border-radius:8px;padding:.4em 1em;margin:1em 0}
.verdict.bad{border-color:var(--bad)}.verdict.warn{border-color:#d4a72c}.verdict.good{border-color:var(--good)}
.verdict h4{margin:.5em 0;font-size:1.15em}.flags li{margin:.15em 0}
.muted{color:var(--muted)}
.sample{border:1px solid var(--line);border-radius:8px;padding:.3em 1em .8em;margin:1em 0}
.sample.worsened{border-left:6px solid var(--bad)}.sample.improved{border-left:6px solid var(--good)}
.sample.unchanged{border-left:6px solid var(--line)}
.sample h4{margin:.5em 0}.cols{display:flex;gap:1em;flex-wrap:wrap}.cols>div{flex:1 1 18em;min-width:0}
.quote{white-space:pre-wrap;overflow-wrap:anywhere;background:var(--bg2);border-left:3px solid var(--line);
padding:.4em .8em;margin:.3em 0;font-size:.92em}
.quote-label{font-weight:600;margin-top:.4em}
nav a{margin-right:1em}
"""


def _h_inline(x: Inlines) -> str:
    out = []
    for part in _inlines(x):
        if isinstance(part, Strong):
            out.append(f"<strong>{html.escape(part.text)}</strong>")
        elif isinstance(part, Mono):
            out.append(f"<code>{html.escape(part.text)}</code>")
        elif isinstance(part, Badge):
            out.append(f'<span class="badge {html.escape(part.kind)}">{html.escape(part.text)}</span>')
        else:
            out.append(html.escape(str(part)))
    return "".join(out)


def _cls(cls: str | None) -> str:
    return f' class="{html.escape(cls)}"' if cls else ""


def _id(anchor: str | None) -> str:
    return f' id="{html.escape(anchor)}"' if anchor else ""


def _h_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}{_id(block.anchor)}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        return f"<p{_cls(block.cls)}>{_h_inline(block.content)}</p>"
    if isinstance(block, Bullets):
        return f"<ul{_cls(block.cls)}>" + "".join(f"<li>{_h_inline(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_h_inline(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{_h_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table{_cls(block.cls)}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        cap = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
        return (f'<figure><img alt="{html.escape(block.title)}" title="{html.escape(block.title)}" '
                f'src="data:image/png;base64,{data}">{cap}</figure>')
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>"
    if isinstance(block, Quote):
        label = f'<div class="quote-label">{_h_inline(block.label)}</div>' if block.label else ""
        body = html.escape(block.text) if block.text.strip() else '<span class="muted">(empty)</span>'
        return f'<div{_cls(block.cls)}>{label}<div class="quote">{body}</div></div>'
    if isinstance(block, Box):
        title = f"<h4>{_h_inline(block.title)}</h4>" if block.title else ""
        return f"<div{_id(block.anchor)}{_cls(block.cls)}>{title}{''.join(_h_block(b) for b in block.blocks)}</div>"
    if isinstance(block, Columns):
        return '<div class="cols">' + "".join(_h_block(b) for b in block.boxes) + "</div>"
    raise TypeError(f"unknown block {type(block).__name__}")


def to_html(blocks: list[Block], title: str) -> str:
    body = "\n".join(_h_block(b) for b in blocks)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


__all__ = ["Badge", "Block", "Box", "Code", "Columns", "Figure", "Heading", "Mono", "Para", "Quote", "Strong",
           "Table", "Bullets", "md_escape", "to_html", "to_markdown"]
