"""report.html as a browser shows it: headless Chromium loads the page, and the page is checked
for raw Markdown, images that fail to load, and the verdict. A screenshot is written too.

Skipped when Chromium is not installed; `make report-check` installs it and runs this file.
CAI_REPORT_SCREENSHOT_DIR keeps the screenshots; CAI_REPORT_RUN adds a real run directory.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from test_report import assert_no_raw_markdown
from helpers import find_chromium
from test_report_fixtures import make_new_pipeline_run, make_old_chain_run

from cai.report import write_report


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (make report-check)")

# Runs in the page once everything has loaded; leaves its findings as JSON in <pre id="__check">.
CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; };
  var hide = document.createElement('style');
  hide.textContent = '.quote, pre { display: none !important; }';  /* verbatim run text is not markup */
  document.head.appendChild(hide);
  var text = document.body.innerText;
  hide.remove();
  var v = document.getElementById('verdict-round-1');
  var out = {images: imgs.length, loaded: imgs.filter(ok).length,
             broken: imgs.filter(function (i) { return !ok(i); }).map(function (i) { return i.alt; }),
             verdict: !!document.getElementById('verdict'), verdict_text: v ? v.innerText : '',
             text: text, width: document.documentElement.scrollWidth};
  var pre = document.createElement('pre');
  pre.id = '__check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _run_chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", *args],
                          capture_output=True, text=True, timeout=180)


def check_page(report: Path) -> dict:
    page = report.with_name("report-check.html")
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    try:
        r = _run_chromium("--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri())
    finally:
        page.unlink()
    m = re.search(r'<pre id="__check">(.*?)</pre>', r.stdout, re.DOTALL)
    assert m, f"the check script did not run; chromium said: {r.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def screenshot(report: Path, out: Path) -> Path:
    r = _run_chromium("--window-size=1280,7000", f"--screenshot={out}", report.resolve().as_uri())
    assert out.exists(), r.stderr[-2000:]
    return out


def _runs(tmp_path: Path) -> list[Path]:
    runs = [make_new_pipeline_run(tmp_path), make_old_chain_run(tmp_path)]
    real = os.environ.get("CAI_REPORT_RUN")
    if real:
        runs.append(Path(real))
    return runs


def test_report_renders_in_chromium(tmp_path):
    shots = Path(os.environ.get("CAI_REPORT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    for run in _runs(tmp_path):
        _, report = write_report(run)
        found = check_page(report)
        assert found["images"] == len(list(run.glob("plot_*.png")))
        assert found["images"] > 0 or run.name not in ("run-new", "run-old")  # a real run mid-way may have none
        assert found["loaded"] == found["images"], f"images that did not load: {found['broken']}"
        assert found["verdict"] and found["verdict_text"].startswith("Round 1:")
        evaluated = "not evaluated yet" not in found["verdict_text"]
        assert evaluated or run.name not in ("run-new", "run-old")
        assert not evaluated or ("harmlessness" in found["verdict_text"] and "over-refusal" in found["verdict_text"])
        assert_no_raw_markdown(found["text"])
        assert found["width"] <= 1400, "the page scrolls sideways"
        png = screenshot(report, shots / f"{run.name}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_the_page_check_catches_a_broken_image_and_raw_markdown(tmp_path):
    """Proves the check above can fail: a page with a broken image and leaked Markdown."""
    bad = tmp_path / "report.html"
    bad.write_text('<!doctype html><html><head></head><body><h2 id="verdict">Verdict</h2>'
                   '<div id="verdict-round-1">Round 1: harmlessness over-refusal</div>'
                   '<p>**Prompt (round 1):** hi</p><div class="quote">**verbatim is fine**</div>'
                   '<img alt="broken" src="data:image/png;base64,AAAA"></body></html>', encoding="utf-8")
    found = check_page(bad)
    assert found["images"] == 1 and found["loaded"] == 0 and found["broken"] == ["broken"]
    assert "verbatim is fine" not in found["text"]
    with pytest.raises(AssertionError, match="raw Markdown"):
        assert_no_raw_markdown(found["text"])
