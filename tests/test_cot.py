"""Self-generated CoT stage: voting, filtering, STaR rationalisation, resume, CLI, embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import ScriptedBackend
from helpers import one_torch_thread

from cai.data import FAILURES_FILE, read_jsonl, read_meta, read_rows
from cai.errors import DataError, UserInputError
from cai.stages.cot import CotConfig, generate_cot, load_questions, majority_vote, run_cot

QUESTIONS = [
    {"id": "q1", "question": "Sam has 3 apples and buys 4 more. How many apples?", "answer": 7},
    {"id": "q2", "question": "A box holds 6 eggs. How many eggs are in 2 boxes?", "answer": "12"},
    {"id": "q3", "question": "Ann has 10 pens and gives away 4. How many are left?", "answer": 6},
]


def scripted(per_question: dict[str, list[str]], hinted: dict[str, str] | None = None,
             greedy: dict[str, str] | None = None) -> ScriptedBackend:
    """Replies by question: the i-th sampled call for a question gets per_question[...][i % n]."""
    counters: dict[str, int] = {}
    backend = ScriptedBackend()

    def respond(conv):
        prompt = conv[-1]["content"]
        key = next(q["id"] for q in QUESTIONS if q["question"] in prompt)
        if "Hint:" in prompt:
            return (hinted or {}).get(key, "I do not know.")
        if backend.params[-1].temperature == 0:
            return (greedy or {}).get(key, "No idea.")
        i = counters.get(key, 0)
        counters[key] = i + 1
        replies = per_question[key]
        return replies[i % len(replies)]

    backend._respond = respond
    return backend


def test_majority_vote_counts_failures_against_the_share_and_breaks_ties_by_first_seen():
    assert majority_vote(["7", "7", "8", None]) == ("7", 0.5, {"7": 2, "8": 1})
    assert majority_vote(["8", "7", "7", "8"])[0] == "8"
    assert majority_vote([None, None]) == (None, 0.0, {})


def test_vote_filter_formats_and_stats():
    backend = scripted({
        "q1": ["3 + 4 = 7. The answer is 7.", "3 + 4 is 7. The answer is 7.", "The answer is 8.", "hmm"],
        "q2": ["The answer is 12.", "The answer is 10.", "The answer is 11.", "The answer is 13."],
        "q3": ["10 - 4 = 6. The answer is 6."],
    }, greedy={"q1": "The answer is 7.", "q2": "The answer is 12.", "q3": "The answer is 5."})
    cfg = CotConfig(k_samples=4, rationalize=False)
    recs = [load_questions_from(QUESTIONS)[i] for i in range(3)]
    result = generate_cot(recs, backend, config=cfg)

    # One sampled call for all K x questions, one greedy call for the graded questions.
    assert [len(c) for c in backend.generate_calls] == [12, 3]
    assert backend.params[0].temperature == 0.7 and backend.params[1].temperature == 0

    by_q: dict[str, list[dict]] = {}
    for row in result.rows:
        by_q.setdefault(row["source_id"], []).append(row)
    # q1: 2 of 4 agree on 7 (share 0.5 >= 0.5): 2 rationales x 2 CoT formats + 1 direct row.
    assert sorted(r["format"] for r in by_q["q1"]) == ["direct", "few_shot_cot", "few_shot_cot",
                                                       "zero_shot_cot", "zero_shot_cot"]
    row = by_q["q1"][0]
    assert row["vote_share"] == 0.5 and row["answers"] == ["7", "7", "8", None]
    assert row["votes"] == {"7": 2, "8": 1}
    assert row["question_stats"]["greedy_correct"] is True
    direct = next(r for r in by_q["q1"] if r["format"] == "direct")
    assert direct["messages"] == [{"role": "user", "content": QUESTIONS[0]["question"]},
                                  {"role": "assistant", "content": "The answer is 7."}]
    few = next(r for r in by_q["q1"] if r["format"] == "few_shot_cot")
    assert len(few["messages"]) > 2 and few["messages"][-1]["content"].endswith("The answer is 7.")
    zero = next(r for r in by_q["q1"] if r["format"] == "zero_shot_cot")
    assert "step by step" in zero["messages"][0]["content"]
    # q3: all 4 samples identical -> one distinct rationale kept.
    assert sum(r["format"] == "few_shot_cot" for r in by_q["q3"]) == 1
    # q2: share 0.25 < 0.5 -> dropped, with the reason and every sampled text.
    assert "q2" not in by_q
    dropped = [f for f in result.failures if f["kind"] == "dropped"]
    assert [d["id"] for d in dropped] == ["q2"]
    assert dropped[0]["reason"].startswith("low_agreement") and len(dropped[0]["raw"]) == 4
    # The unreadable q1 sample is recorded with its raw text.
    failed = [f for f in result.failures if f["kind"] == "extraction_failed"]
    assert [(f["source_id"], f["raw"]) for f in failed] == [("q1", "hmm")]
    # A lower threshold keeps q2's plurality.
    loose = generate_cot(recs[1:2], scripted({"q2": ["The answer is 12.", "The answer is 10.",
                                                     "The answer is 12.", "no"]}),
                         config=CotConfig(k_samples=4, vote_threshold=0.25, rationalize=False,
                                          greedy_eval=False, formats=["direct"]))
    assert [r["answer"] for r in loose.rows] == ["12"]


def load_questions_from(items):
    from cai.stages.cot import as_question_records

    return as_question_records([dict(x) for x in items])


def test_star_rationalisation_uses_the_hint_but_stores_the_plain_prompt():
    backend = scripted(
        {"q1": ["The answer is 9."], "q2": ["The answer is 12."], "q3": ["The answer is 6."]},
        hinted={"q1": "3 apples plus 4 more apples is 7 apples. The answer is 7."},
    )
    cfg = CotConfig(k_samples=2, rationalize_samples=3, greedy_eval=False)
    result = generate_cot(load_questions_from(QUESTIONS), backend, config=cfg)
    # Third call: the hinted prompts, only for the question voted wrong (q1), rationalize_samples each.
    hinted_calls = backend.generate_calls[1]
    assert len(hinted_calls) == 3
    assert all("Hint: the correct answer is 7" in c[-1]["content"] for c in hinted_calls)
    rows = [r for r in result.rows if r["origin"] == "rationalization"]
    assert {r["format"] for r in rows} == {"few_shot_cot", "zero_shot_cot", "direct"}
    for r in rows:
        blob = json.dumps(r["messages"])
        assert "Hint" not in blob and "correct answer is" not in blob
        assert r["source_id"] == "q1" and r["correct"] is True
    # The wrong self-consistency rows for q1 are still kept (filter_by_gold is off), and graded.
    sc = [r for r in result.rows if r["source_id"] == "q1" and r["origin"] == "self_consistency"]
    assert sc and all(r["correct"] is False for r in sc)
    assert sc[0]["question_stats"]["rationalized"] is True
    assert {r["format"] for r in sc} == {"few_shot_cot", "zero_shot_cot"}
    # One direct row per question: the gold answer, not the wrong majority.
    direct = [r for r in result.rows if r["source_id"] == "q1" and r["format"] == "direct"]
    assert [r["messages"][-1]["content"] for r in direct] == ["The answer is 7."]


def test_rationale_that_mentions_the_hint_is_not_kept_and_filter_by_gold_drops():
    backend = scripted({"q1": ["The answer is 9."]},
                       hinted={"q1": "As the hint says, the answer is 7."})
    cfg = CotConfig(k_samples=2, rationalize_samples=2, greedy_eval=False, filter_by_gold=True)
    result = generate_cot(load_questions_from(QUESTIONS[:1]), backend, config=cfg)
    assert result.rows == []
    (drop,) = [f for f in result.failures if f["kind"] == "dropped"]
    assert drop["reason"].startswith("wrong_majority") and "mentioned the hint" in drop["reason"]
    assert drop["hinted_raw"] == ["As the hint says, the answer is 7."] * 2


def write_questions(path: Path, items) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    return path


def test_run_cot_summary_and_resume(tmp_path):
    qpath = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    replies = {"q1": ["The answer is 7."], "q2": ["The answer is 12."], "q3": ["The answer is 5."]}
    cfg = CotConfig(k_samples=3, rationalize=False)
    backend = scripted(replies, greedy={"q1": "The answer is 7.", "q2": "The answer is 1.", "q3": "no"})
    result = run_cot(qpath, tmp_path / "out", backend, config=cfg, chunk_size=2, progress=False)
    s = result["summary"]
    assert s["questions"] == 3 and s["questions_with_gold"] == 3
    assert s["greedy_accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["self_consistency_accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["kept_rationale_accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["extraction_failures"] == {"greedy": 1}
    assert read_meta(tmp_path / "out")["kind"] == "sft"
    n_rows = len(read_rows(tmp_path / "out"))
    assert n_rows == 9  # 3 questions x (1 distinct rationale x 2 CoT formats + 1 direct)

    # Rerun: nothing new is generated or written.
    again = scripted(replies)
    result2 = run_cot(qpath, tmp_path / "out", again, config=cfg, chunk_size=2, progress=False)
    assert again.generate_calls == []
    assert len(read_rows(tmp_path / "out")) == n_rows
    assert result2["summary"]["self_consistency_accuracy"] == s["self_consistency_accuracy"]
    # Other settings into the same directory are refused.
    with pytest.raises(DataError, match="other settings"):
        run_cot(qpath, tmp_path / "out", again, config=CotConfig(k_samples=5), progress=False)


def test_questions_without_gold_skip_greedy_and_rationalisation(tmp_path):
    items = [{"question": q["question"]} for q in QUESTIONS[:2]]
    backend = scripted({"q1": ["The answer is 7."], "q2": ["The answer is 12."]})
    result = generate_cot(load_questions_from(items), backend, config=CotConfig(k_samples=2))
    assert len(backend.generate_calls) == 1
    assert {r["gold"] for r in result.rows} == {None} and {r["correct"] for r in result.rows} == {None}


def test_malformed_question_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?", "answer": 1}\n{"question": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_questions(bad)
    bad.write_text('{"question": "ok?"}\n\n{"answer": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:3: no 'question'"):
        load_questions(bad)
    bad.write_text('{"question": "ok?", "answer": [1]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:1: 'answer' must be text or a number"):
        load_questions(bad)
    bad.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_questions(bad)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    # The one --config loader every generate command uses (file:line errors), flags over the file.
    from cai.cli.config_options import build_config

    with pytest.raises(UserInputError, match="k-sample"):
        build_config(CotConfig, None, {("k_sample",): 3})
    with pytest.raises(UserInputError, match="formats"):
        build_config(CotConfig, None, {("formats",): ["essay"]})
    with pytest.raises(UserInputError, match="answer_pattern"):
        build_config(CotConfig, None, {("extractor",): "regex"})
    cfg_file = tmp_path / "cot.yaml"
    cfg_file.write_text("k_samples: 3\nvote_threshold: 0.9\n", encoding="utf-8")
    cfg = build_config(CotConfig, str(cfg_file), {("k_samples",): 5})
    assert (cfg.k_samples, cfg.vote_threshold) == (5, 0.9)  # flags override the file; a flag not given leaves it
    cfg_file.write_text("k_samples: 3\nk_sampels: 4\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"cot.yaml:2: field 'k_sampels': unknown key"):
        build_config(CotConfig, str(cfg_file), {})


def test_example_question_set_is_valid_and_reproducible(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    shipped = root / "examples" / "questions" / "arithmetic.jsonl"
    records = load_questions(shipped)
    assert len(records) >= 100 and all(isinstance(r.extra["answer"], int) for r in records)
    out = tmp_path / "regen.jsonl"
    subprocess.run([sys.executable, str(root / "examples/questions/make_arithmetic.py"), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_text() == shipped.read_text()
    from cai.stages.cot import load_few_shot

    assert len(load_few_shot(root / "examples" / "questions" / "few_shot.jsonl")) == 4


def test_cli_generate_cot(tmp_path, monkeypatch):
    from cai.cli import cot as cli_cot
    from cai.cli.main import cli

    qpath = write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])
    backend = scripted({"q1": ["The answer is 7."], "q2": ["The answer is 12."]})
    monkeypatch.setattr(cli_cot, "make_backend_from_options", lambda *a, **k: backend)
    runner = CliRunner()
    res = runner.invoke(cli, ["generate", "cot", "-q", str(qpath), "-o", str(tmp_path / "out"), "--k", "2",
                              "--formats", "zero_shot_cot,direct", "--no-rationalize"])
    assert res.exit_code == 0, res.output
    assert '"self_consistency_accuracy": 1.0' in res.output
    assert {r["format"] for r in read_rows(tmp_path / "out")} == {"zero_shot_cot", "direct"}
    # Bad input: one line, exit code 2, no traceback.
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n", encoding="utf-8")
    res = runner.invoke(cli, ["generate", "cot", "-q", str(bad), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "bad.jsonl:1: not valid JSON" in res.output
    res = runner.invoke(cli, ["generate", "cot", "-q", str(qpath), "-o", str(tmp_path / "o3"),
                              "--formats", "poem"])
    assert res.exit_code == 2 and "formats" in res.output and "Traceback" not in res.output
    # --config FILE.yaml through the same loader as the other generate commands; flags override it.
    cfg = tmp_path / "cot.yaml"
    cfg.write_text("k_samples: 3\nformats: [direct]\nrationalize: false\n", encoding="utf-8")
    res = runner.invoke(cli, ["generate", "cot", "-q", str(qpath), "-o", str(tmp_path / "o4"), "--config", str(cfg),
                              "--k-samples", "2"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "o4")
    assert {r["format"] for r in rows} == {"direct"} and all(len(r["answers"]) == 2 for r in rows)
    cfg.write_text("k_samples: 3\nformat: [direct]\n", encoding="utf-8")
    res = runner.invoke(cli, ["generate", "cot", "-q", str(qpath), "-o", str(tmp_path / "o5"), "--config", str(cfg)])
    assert res.exit_code == 2 and "cot.yaml:2" in res.output and "format" in res.output


@pytest.fixture
def one_thread():
    with one_torch_thread():
        yield


def test_end_to_end_on_the_embedded_default(tmp_path, embedded_dir, one_thread):
    from cai.backends.transformers import TransformersBackend

    qpath = write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])
    backend = TransformersBackend(str(embedded_dir), batch_size=8, device="cpu", progress=False)
    # Zero-shot sampling keeps the prompt short; few tokens keep this fast on a busy 2-core CPU.
    cfg = CotConfig(k_samples=2, max_new_tokens=16, prompt_style="zero_shot", rationalize_samples=1,
                    vote_threshold=0.0)
    result = run_cot(qpath, tmp_path / "out", backend, config=cfg, progress=False)
    s = result["summary"]
    assert s["questions"] == 2 and s["questions_with_gold"] == 2
    assert s["greedy_accuracy"] is not None and s["self_consistency_accuracy"] is not None
    rows = read_rows(tmp_path / "out")
    failures = list(read_jsonl(tmp_path / "out" / FAILURES_FILE))
    # Every question is accounted for: kept rows or a dropped record with a reason.
    assert {r["source_id"] for r in rows} | {f["id"] for f in failures if f["kind"] == "dropped"} == {"q1", "q2"}
    for r in rows:
        assert r["messages"][-1]["role"] == "assistant" and "Hint" not in json.dumps(r["messages"])
        assert len(r["answers"]) == 2
    assert (tmp_path / "out" / "README.md").is_file()


def test_truncated_rationales_vote_but_are_not_kept():
    from cai.backends.base import Generation

    class Truncating(ScriptedBackend):
        def generate(self, conversations, params):
            return [Generation(text=g.text, finish_reason="length") for g in super().generate(conversations, params)]

    backend = Truncating(respond=lambda conv: "3 + 4 = 7. The answer is 7")
    recs = load_questions_from(QUESTIONS[:1])
    result = generate_cot(recs, backend, config=CotConfig(k_samples=2, greedy_eval=False))
    (drop,) = [f for f in result.failures if f["kind"] == "dropped"]
    assert drop["reason"].startswith("no_rationale") and drop["votes"] == {"7": 2}
    kept = generate_cot(recs, backend, config=CotConfig(k_samples=2, greedy_eval=False, keep_truncated=True))
    assert kept.rows and kept.rows[0]["finish_reason"] == "length"
