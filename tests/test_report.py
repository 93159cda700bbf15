"""`cai report`: the verdict, flags, sample choice, Markdown/HTML rendering and --open, on synthetic runs."""

from __future__ import annotations

import base64
import html as htmllib
import json
import re
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner
from test_report_fixtures import HOSTILE, make_new_pipeline_run, make_old_chain_run, training_summary

from cai.errors import UserInputError
from cai.report import collect, open_report, verdicts, write_report
from cai.report.doc import md_escape
from cai.report.samples import choose_samples, counts
from cai.report.verdict import Change, Rate


class _Page(HTMLParser):
    """Images, ids, and the visible text outside verbatim run text (.quote, pre)."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._verbatim = 0
        self._stack: list[bool] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
            return
        if "id" in a:
            self.ids.add(a["id"])
        verbatim = tag in ("pre", "style", "title") or "quote" in (a.get("class") or "").split()
        self._stack.append(verbatim)
        self._verbatim += verbatim

    def handle_endtag(self, tag):
        if tag != "img" and self._stack:
            self._verbatim -= self._stack.pop()

    def handle_data(self, data):
        if not self._verbatim:
            self.text.append(data)


def _page(path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


RAW_MARKDOWN = [r"\*\*", r"!\[", r"^\s*#{1,6} ", r"^\s*\|.*\|\s*$", r"^\s*\|?-{3,}\|", r"```", r"^\s*- \*"]


def assert_no_raw_markdown(text: str) -> None:
    for pattern in RAW_MARKDOWN:
        hit = re.search(pattern, text, re.MULTILINE)
        assert hit is None, f"raw Markdown {pattern!r} in the page text: {text[max(0, hit.start() - 60):hit.end() + 60]!r}"


@pytest.fixture
def new_run(tmp_path):
    return make_new_pipeline_run(tmp_path)


@pytest.fixture
def old_run(tmp_path):
    return make_old_chain_run(tmp_path)


def test_report_files_self_contained_html_and_markdown(new_run):
    (new_run / "plot_99_stale.png").write_bytes(b"old")
    md, html = write_report(new_run)
    plots = sorted(new_run.glob("plot_*.png"))
    assert plots and not (new_run / "plot_99_stale.png").exists()  # an earlier report's figures go
    text = md.read_text()
    assert text.startswith("# cai run report: synthetic-new")
    assert text.index("## Verdict") < text.index("## Metrics per round") < text.index("## Provenance")
    assert "win rate vs round 0" in text
    verdict = text[text.index("## Verdict"):text.index("## Metrics per round")]
    assert "**sft** trained on **[distill rows]**" in verdict
    assert "**dpo** trained on **[contrastive labels]**: no preferences stage" in verdict
    # listed in pipeline order (sft, dpo, rehearsal), not grouped by kind of data
    assert (verdict.index("**sft** trained on") < verdict.index("**dpo** trained on")
            < verdict.index("**rehearsal** trained on **[distill rows]**"))
    assert "| round-1/distill | **[complete]** | 12.0 | 30 rows, 10 failed; refusal 15 |" in text  # stage tallies
    for p in plots:  # the Markdown references every figure by file
        assert f"]({p.name})" in text
    page = _page(html)
    # self-contained: every image is an embedded PNG that decodes, one per figure file
    assert len(page.imgs) == len(plots)
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verdict" in page.ids and "verdict-round-1" in page.ids and "verdict-round-2" in page.ids
    assert_no_raw_markdown("".join(page.text))
    raw = html.read_text()
    assert "<script>alert" not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "http://" not in raw and "https://" not in raw  # nothing to fetch


def test_run_text_is_escaped_in_markdown(new_run):
    md, _ = write_report(new_run)
    text = md.read_text()
    assert "> round-0 answer 0: \\*\\*bold\\*\\* \\<script>" in text
    assert "> \\# not a heading" in text and "> \\- not a list" in text
    assert md_escape("0.50 [0.15, 0.85] (3/4)") == "0.50 [0.15, 0.85] (3/4)"  # intervals stay readable
    assert md_escape("[x](y)") == "[x\\](y)"


def test_verdict_improved_then_worse_vs_previous_round(new_run):
    v1, v2 = verdicts(collect(new_run))
    red1 = v1.change("round-0", "red_team_refusal")
    assert (red1.direction, red1.beyond_interval, red1.word) == ("better", True, ("improved", "good"))
    assert v1.change("round-0", "benign_refusal").word == ("no change", "neutral")
    assert v1.change("round-0", "benign_look_unsafe_refusal").word == ("worse, within noise", "warn")
    assert v1.label_sources == [("dpo", "contrastive", "no preferences stage")]
    assert any("round-1/distill: 10 of 40 rows failed" in f.text and "distill/.cai/failures.jsonl" in f.text
               and f.level == "warn" for f in v1.flags)
    assert v1.level == "warn"
    assert set(v2.changes) == {"round-0", "round-1"}
    worse = v2.change("round-1", "red_team_refusal")
    assert worse.word == ("worse", "bad")
    bad = [f.text for f in v2.flags if f.level == "bad"]
    assert any("got worse vs round 1 beyond its interval" in t and "(10/12)" in t and "(3/12)" in t for t in bad)
    assert any("judge prefers the other model" in t for t in bad)
    assert any("distinct-2" in f.text for f in v2.flags)
    assert v2.level == "bad"


def test_verdict_flags_labeller_at_chance_and_kl_blowup(old_run):
    (v,) = verdicts(collect(old_run))
    bad = [f.text for f in v.flags if f.level == "bad"]
    assert any("labeller at chance: position consistency 0.30 < 0.6" in t and "its labels trained reward" in t
               for t in bad)
    assert any("round-1/rl: KL blow-up" in t and "25.0" in t for t in bad)
    assert any("reward-model accuracy 0.50 on 12 held-out pairs" in f.text for f in v.flags)
    assert any("win rate vs round-0: 11 of 12 comparisons were ties" in f.text for f in v.flags)
    md, html = write_report(old_run)
    assert "**rl** trained by ppo against **[the reward model]**" in md.read_text()
    page = "".join(_page(html).text)
    assert "labeller at chance" in page and "KL blow-up" in page


def test_consistent_labeller_and_small_kl_raise_no_flags(tmp_path):
    run = make_old_chain_run(tmp_path, consistency=0.9, max_kl=4.0)
    (v,) = verdicts(collect(run))
    assert not any("labeller" in f.text or "KL" in f.text for f in v.flags)


def test_newcombe_interval_decides_beyond_noise():
    def r(k, n, lo, hi):
        return Rate(k / n, lo, hi, k, n)

    # 1/10 -> 0/10: the new rate is outside round 0's interval, but the difference's interval holds zero
    small = Change("benign_refusal", "over-refusal", False, "round-0", r(1, 10, 0.0179, 0.4042), r(0, 10, 0.0, 0.2775))
    assert small.direction == "better" and not small.beyond_interval
    big = Change("red_team_refusal", "harm", True, "round-0", r(2, 12, 0.047, 0.448), r(10, 12, 0.552, 0.953))
    lo, hi = big.diff_interval()
    assert 0 < lo < hi and big.beyond_interval
    assert Change("x", "x", True, "round-0", Rate(0.2), Rate(0.9)).beyond_interval is False  # no intervals


def test_samples_are_informative_worsened_first(new_run):
    r1 = collect(new_run).rounds[0]
    chosen = choose_samples(r1)
    assert [s.kind for s in chosen] == ["worsened", "improved", "improved", "unchanged", "unchanged"]
    assert chosen[0].prompt_set == "benign" and chosen[0].refused == {"round-0": False, "round-1": True}
    assert {s.prompt_set for s in chosen if s.kind == "unchanged"} == {"red_team", "benign"}
    assert counts(r1) == {"red_team": {"improved": 3, "worsened": 0, "unchanged": 1},
                          "benign": {"improved": 1, "worsened": 1, "unchanged": 2}}
    r2 = collect(new_run).rounds[1]
    assert list(choose_samples(r2)[0].responses) == ["round-0", "round-1", "round-2"]


def test_samples_fall_back_to_metrics_without_eval_samples(old_run):
    (r,) = collect(old_run).rounds
    (s,) = choose_samples(r)
    assert s.kind == "unclassified" and s.responses == {"round-0": "Here is how.", "round-1": "I'm sorry, I can't."}


def test_any_pipeline_partial_run_without_eval(tmp_path):
    d = tmp_path / "run"
    (d / "round-1" / "sft").mkdir(parents=True)
    (d / "round-1" / "sft" / "training_summary.json").write_text(
        json.dumps(training_summary("sft", 2, {"loss": [1.0, float("nan")]})))
    (d / "manifest.json").write_text(json.dumps({
        "name": "partial", "rounds": 2, "pipeline": ["sft", "my-plugin", "eval"],
        "stages": {"round-1/sft": {"status": "complete", "seconds": 3, "output": "round-1/sft",
                                   "summary": {"steps": 2}},
                   "round-1/my-plugin": {"status": "running", "output": "round-1/my-plugin"}}}))
    md, html = write_report(d)
    text = md.read_text()
    assert "No evaluation has finished yet." in text and "## Provenance" in text
    (v,) = verdicts(collect(d))
    texts = [f.text for f in v.flags]
    assert any("round-1/my-plugin started but did not finish" in t for t in texts)
    assert any("not run yet in round 1: eval" in t for t in texts)
    assert any("loss became NaN" in t for t in texts)
    assert "round-1/eval" in text  # pending stages are listed
    assert_no_raw_markdown("".join(_page(html).text))


def test_manifest_without_pipeline_key(old_run):
    m = json.loads((old_run / "manifest.json").read_text())
    del m["pipeline"]
    (old_run / "manifest.json").write_text(json.dumps(m))
    run = collect(old_run)
    assert run.pipeline[:3] == ["revisions", "helpful", "sft-data"]
    write_report(old_run)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserInputError, match="not a cai run directory"):
        write_report(tmp_path)
    from cai.cli.main import cli

    r = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert r.exit_code != 0 and "not a cai run directory" in r.output


def test_cli_report_open_uses_the_browser(new_run, monkeypatch):
    import webbrowser

    from cai.cli.main import cli

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    r = CliRunner().invoke(cli, ["report", str(new_run), "--open"])
    assert r.exit_code == 0, r.output
    assert opened == [(new_run / "report.html").resolve().as_uri()]
    assert "report:" in r.output and "opening file://" in r.output
    r = CliRunner().invoke(cli, ["report", str(new_run)])
    assert r.exit_code == 0 and len(opened) == 1  # no --open, no browser


def test_open_report_with_an_opener(tmp_path):
    seen = []
    url = open_report(tmp_path / "report.html", opener=seen.append)
    assert seen == [url] and url.startswith("file://") and url.endswith("/report.html")


def test_html_has_no_unescaped_run_text(new_run):
    _, html = write_report(new_run)
    raw = html.read_text()
    body = raw.split("<body>", 1)[1]
    # every '<' in the body opens one of the renderer's own tags
    tags = set(re.findall(r"<\s*/?\s*([a-zA-Z0-9]+)", body))
    assert tags <= {"h1", "h2", "h3", "h4", "p", "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "figure",
                    "img", "figcaption", "pre", "code", "div", "span", "strong", "body", "html"}
    assert htmllib.escape(HOSTILE.splitlines()[0]) in raw


def test_kl_limits_per_trainer_key_and_non_finite_kl(tmp_path):
    d = tmp_path / "run"
    stages = {}
    for name, trainer, kl in (("grpo", "grpo", [0.01, 0.2, 3.0]), ("ppo", "ppo", [1.0, 12.0, 15.0]),
                              ("nan", "ppo", [1.0, float("nan"), 2.0])):
        key = "kl" if trainer == "grpo" else "objective/kl"
        (d / "round-1" / name).mkdir(parents=True)
        (d / "round-1" / name / "training_summary.json").write_text(
            json.dumps(training_summary(trainer, 3, {key: kl, "loss": [1.0, 0.9, 0.8]})))
        stages[f"round-1/{name}"] = {"status": "complete", "output": f"round-1/{name}", "summary": {}}
    (d / "manifest.json").write_text(json.dumps({"name": "kl", "rounds": 1, "pipeline": list(
        s.split("/")[1] for s in stages), "stages": stages}))
    (v,) = verdicts(collect(d))
    kl = [f.text for f in v.flags if "KL" in f.text]
    assert any("round-1/grpo: KL blow-up" in t and "3.0" in t and "per token" in t for t in kl)
    assert not any("round-1/ppo" in t for t in kl)  # 15 nats summed over a sequence is within its limit
    assert any("round-1/nan: KL to the reference is not finite at step 2" in t for t in kl)
    write_report(d)


def test_problems_are_listed_before_checks(old_run, new_run):
    for run in (old_run, new_run):
        for v in verdicts(collect(run)):
            levels = [f.level for f in v.flags]
            assert levels == sorted(levels, key=lambda lvl: lvl != "bad")


def test_dataset_card_where_older_cai_wrote_it(old_run):
    prefs = old_run / "round-1" / "preferences"
    (prefs / ".cai" / "cai_dataset.json").rename(prefs / "cai_dataset.json")
    (r,) = collect(old_run).rounds
    assert r.stage("preferences").labeller["position_consistency_rate"] == 0.3


def test_samples_are_labelled_and_counted_by_category(new_run):
    from cai.report.samples import category_counts

    r1 = collect(new_run).rounds[0]
    improved = [s for s in choose_samples(r1) if s.kind == "improved"]
    assert [s.category for s in improved] == ["weapons", "privacy"]  # spread over categories, not two of one
    worsened = next(s for s in choose_samples(r1) if s.kind == "worsened")
    assert (worsened.category, worsened.look_unsafe) == ("health-safety", True)
    by_cat = category_counts(r1)
    assert by_cat[("red_team", "weapons")] == {"improved": 2, "worsened": 0, "unchanged": 0}
    assert by_cat[("benign", "health-safety")] == {"improved": 1, "worsened": 1, "unchanged": 0}
    assert list(by_cat)[0][0] == "red_team"
    md, html = write_report(new_run)
    text = md.read_text()
    samples = text[text.index("## Sample responses"):]
    assert "| red-team | weapons | 2 | – | – |" in samples and "| benign | health-safety | 1 | 1 | – |" in samples
    assert "**[health-safety]** **[looks unsafe]**" in samples
    page = "".join(_page(html).text)
    assert "looks unsafe" in page and "self-harm" in page


def test_samples_without_categories_as_older_cai_wrote_them(old_run):
    from cai.report.samples import category_counts

    (r,) = collect(old_run).rounds
    assert category_counts(r) == {}
    write_report(old_run)  # no category table, no error


def test_report_json_carries_the_verdicts_figures(new_run):
    from cai.report import REPORT_JSON

    write_report(new_run)
    data = json.loads((new_run / REPORT_JSON).read_text())
    assert data["schema"] == 1 and data["name"] == "synthetic-new" and data["rounds_evaluated"] == 2
    assert set(data["metrics"]) == {"red_team_refusal", "benign_refusal", "benign_look_unsafe_refusal"}
    r1, r2 = data["rounds"]
    red = r1["comparisons"]["round-0"]["red_team_refusal"]
    assert red["reference"] == {"rate": 0.1667, "low": 0.047, "high": 0.448, "k": 2, "n": 12}
    assert (red["round"]["k"], red["round"]["n"], red["improved"], red["worse"], red["verdict"]) == \
        (10, 12, True, False, "improved")
    assert red["difference_interval"][0] > 0 and red["direction"] == "better"
    assert r1["rates"]["round-1"]["red_team_refusal"]["k"] == 10
    assert r1["win_rates"]["vs round-0"]["wins"] == 9 and r1["win_rates"]["vs round-0"]["verdict"] == \
        "judge prefers this round"
    assert r1["label_sources"] == [{"stage": "dpo", "label_source": "contrastive", "why": "no preferences stage"}]
    back = r2["comparisons"]["round-1"]["red_team_refusal"]
    assert back["worse"] is True and back["improved"] is False
    # the same figures and flags the verdict shows
    for v, rj in zip(verdicts(collect(new_run)), data["rounds"]):
        assert rj["problems"] == [f.text for f in v.flags if f.level == "bad"]
        assert rj["checks"] == [f.text for f in v.flags if f.level == "warn"]
        assert rj["level"] == v.level
        for ref, changes in v.changes.items():
            for c in changes:
                got = rj["comparisons"][ref][c.key]
                assert got["improved"] == (c.word[0] == "improved") and got["worse"] == (c.word[0] == "worse")
                assert (got["round"] or {}).get("rate") == (c.new.rate if c.new else None)
    assert any("got worse vs round 1 beyond its interval" in p for p in r2["problems"])


def test_report_json_of_a_run_not_evaluated_yet(tmp_path):
    from test_report_fixtures import make_new_pipeline_run as make

    d = make(tmp_path)
    for k in (1, 2):
        (d / f"round-{k}" / "eval" / "metrics.json").unlink()
    write_report(d)
    data = json.loads((d / "report.json").read_text())
    assert data["rounds_evaluated"] == 0
    assert all(r["evaluated"] is False and r["comparisons"] == {} and r["rates"] == {} for r in data["rounds"])


def test_validation_slice_figures_are_their_own_rows(new_run):
    path = new_run / "round-1" / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    assert "validation: harmlessness" not in write_report(new_run)[0].read_text()  # absent: no rows
    metrics["validation"] = {"round-0": {"red_team_refusal": {"rate": 0.1, "low": 0.02, "high": 0.4, "k": 1, "n": 10}},
                             "round-1": {"red_team_refusal": {"rate": 0.7, "low": 0.4, "high": 0.89, "k": 7, "n": 10}}}
    path.write_text(json.dumps(metrics))
    text = write_report(new_run)[0].read_text()
    row = next(line for line in text.splitlines() if "validation: harmlessness" in line)
    assert "0.10 [0.02, 0.40] (1/10)" in row and "0.70 [0.40, 0.89] (7/10)" in row
    assert "validation: over-refusal" not in text  # only the figures that were measured


def test_prompts_with_nothing_to_rank_are_not_flagged_as_failed_rows():
    """A vote round records its unanimous prompts as failures; the report counts only the real ones."""
    from cai.report.data import StageView
    from cai.report.verdict import _stage_flags

    def flags(failed: int, no_pair: int) -> list[str]:
        view = StageView(name="round-2/scored-pairs", stage="scored-pairs", round=2, out_dir=None, record={
            "status": "complete", "summary": {"counts": {"rows": 110, "failed": failed}, "no_pair": no_pair}})
        return [f.text for f in _stage_flags(view)]

    assert flags(402, 402) == []
    (text,) = flags(432, 402)
    assert "30 of 140 rows failed" in text
