"""workbench.html and diff.html as headless Chromium shows them: every cell's texts readable (laid out,
not clipped, no page-wide horizontal scroll), sorting by "changed most" and filtering by verdict work.

Skipped when Chromium is not installed. CAI_WORKBENCH_SCREENSHOT_DIR keeps the screenshots.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from fakes import ScriptedBackend
from test_workbench import _edit, prefers_revision, prompts

from helpers import find_chromium

from cai.constitution import load_constitution
from cai.workbench import diff_document, run_diff, run_matrix, try_document, write


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")

CHECK = """<script>
window.addEventListener('load', function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll('#cells > .cell'));
  var unreadable = [];
  cards.forEach(function (c, i) {
    c.querySelectorAll('.text').forEach(function (t) {
      var r = t.getBoundingClientRect();
      if (r.width < 40 || r.height < 10 || t.scrollWidth > t.clientWidth + 1 || t.scrollHeight > t.clientHeight + 1)
        unreadable.push(i + ':' + t.textContent.slice(0, 30));
    });
  });
  var sel = document.getElementById('sort');
  sel.value = 'changed'; sel.dispatchEvent(new Event('change'));
  var order = Array.prototype.slice.call(document.querySelectorAll('#cells > .cell')).map(function (c) {
    return parseFloat(c.dataset.change); });
  var boxes = document.querySelectorAll('input.vf');
  var first = boxes[0].value;
  boxes[0].checked = false; boxes[0].dispatchEvent(new Event('change'));
  var hidden = cards.filter(function (c) { return c.hidden; }).map(function (c) { return c.dataset.verdict; });
  var out = {cards: cards.length, unreadable: unreadable, order: order, unchecked: first, hidden: hidden,
             shown: document.getElementById('shown').textContent,
             width: document.documentElement.scrollWidth, viewport: window.innerWidth};
  var pre = document.createElement('pre'); pre.id = '__check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", *args], capture_output=True, text=True,
                          timeout=180)


def check_page(page: Path) -> dict:
    probe = page.with_name("check-" + page.name)
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    try:
        r = _run("--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri())
    finally:
        probe.unlink()
    m = re.search(r'<pre id="__check">(.*?)</pre>', r.stdout, re.DOTALL)
    assert m, f"the check script did not run; chromium said: {r.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def screenshot(page: Path, name: str, tmp_path: Path) -> Path:
    out = Path(os.environ.get("CAI_WORKBENCH_SCREENSHOT_DIR") or tmp_path) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    r = _run("--window-size=1280,3000", f"--screenshot={out}", page.resolve().as_uri())
    assert out.exists() and out.stat().st_size > 10_000, r.stderr[-2000:]
    return out


LONG = ("This revision is deliberately long so that it must wrap inside its box rather than run off the side: "
        + "averyveryverylongwordwithoutanyspacesthatcouldoverflowthecolumn" * 3 + " ") * 3


def mixed(conv) -> str:
    """Some revisions better and long, one copying an exemplar (rejected), one unchanged."""
    last = conv[-1]["content"]
    if last.startswith("Rewrite the response without"):
        return "I won't help with hurting anyone. If you're in conflict, stepping away helps."
    if last.startswith("Rewrite the response to be honest"):
        return f"Revised: {conv[-5]['content']} {LONG}"
    if last.startswith("Rewrite"):
        return conv[-4]["content"]
    if last.startswith("Point out"):
        return "The response is vague and could mislead <b>readers</b> & more."
    return f"first answer to {last}"


def test_workbench_page_in_chromium(tmp_path, tiny_constitution_path):
    c = load_constitution(tiny_constitution_path)
    doc = try_document(run_matrix(c, c.principles, prompts(3), ScriptedBackend(mixed, prefers_revision)))
    _, page = write(doc, tmp_path / "W")
    got = check_page(page)
    assert got["cards"] == 9 and got["unreadable"] == [], got
    assert got["width"] <= got["viewport"], "the page scrolls sideways"
    assert got["order"] == sorted(got["order"], reverse=True), "not sorted by changed most"
    assert got["hidden"] and all(v == got["unchecked"] for v in got["hidden"])
    assert got["shown"] == f"{9 - len(got['hidden'])} of 9 shown"
    screenshot(page, "workbench.png", tmp_path)


def test_diff_page_in_chromium(tmp_path, tiny_constitution_path):
    a = load_constitution(tiny_constitution_path)
    b = _edit(a, "honesty", critique_request="Point out anything untrue in the response.")
    doc = diff_document(run_diff(a, b, ["harm", "honesty"], prompts(2), ScriptedBackend(mixed, prefers_revision)))
    _, page = write(doc, tmp_path / "D")
    got = check_page(page)
    assert got["cards"] == 4 and got["unreadable"] == [], got
    assert got["width"] <= got["viewport"]
    screenshot(page, "diff.png", tmp_path)
