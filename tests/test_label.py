"""The preference labeller: rows, filtering, statistics, resume, the CLI, and the embedded default end to end."""

from __future__ import annotations

import itertools
import json

import pytest
from click.testing import CliRunner
from fakes import ScriptedBackend
from pydantic import ValidationError

from cai.cli.main import cli
from cai.constitution import load_constitution
from cai.data import FAILURES_FILE, PromptRecord, read_jsonl, read_meta, read_rows
from cai.errors import UserInputError
from cai.stages.label import LabelConfig, label_preferences, labeller_statistics, run_preferences


@pytest.fixture
def constitution(tiny_constitution_path):
    return load_constitution(tiny_constitution_path)


def records(n):
    return [PromptRecord(messages=[{"role": "user", "content": f"question {i}?"}]) for i in range(n)]


def counting_policy(replies=None):
    """A policy whose k-th reply in a call is replies[k % len] (or 'reply k')."""
    counter = itertools.count()
    replies = replies or None

    def respond(conv):
        k = next(counter)
        return replies[k % len(replies)] if replies else f"reply {k}"
    return ScriptedBackend(respond=respond)


def slot_of(conv, word):
    text = conv[0]["content"]
    return "A" if word in text[text.index("(A) ") : text.index("(B) ")] else "B"


def prefers(word, strength=0.9):
    def score(conv, options):
        return [strength, 1 - strength] if slot_of(conv, word) == "A" else [1 - strength, strength]
    return score


def test_rows_are_trl_preference_rows(constitution):
    policy = counting_policy(["bad one", "GOOD one", "bad two"])
    feedback = ScriptedBackend(score=prefers("GOOD"))
    out = label_preferences(records(2), constitution, policy, feedback, config=LabelConfig(k_responses=3))
    assert len(policy.generate_calls) == 1 and len(policy.generate_calls[0]) == 6  # K per record, one call
    assert len(feedback.score_calls) == 1 and len(feedback.score_calls[0]) == 2 * 3 * 2  # pairs x orders
    assert len(out.rows) == 6 and not out.failures
    row = next(r for r in out.rows if r["pair"] == [0, 1])
    assert row["prompt"] == [{"role": "user", "content": "question 0?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "GOOD one"}]
    assert row["rejected"] == [{"role": "assistant", "content": "bad one"}]
    assert row["chosen_index"] == 1
    assert row["p_chosen"] == pytest.approx(0.9)
    assert row["p_first_order"] == pytest.approx(0.9) and row["p_second_order"] == pytest.approx(0.9)
    assert row["position_consistent"] is True and row["principle_ids"] and row["rationales"] == []
    assert len({r["id"] for r in out.rows}) == 6


def test_filtering_records_reasons(constitution):
    policy = counting_policy(["a", "b"])
    biased = ScriptedBackend(score=lambda conv, options: [0.8, 0.2])  # pure slot-A bias
    config = LabelConfig(require_consistent=True)
    out = label_preferences(records(3), constitution, policy, biased, config=config)
    assert not out.rows and [f["reason"] for f in out.failures] == ["position_inconsistent"] * 3
    assert out.failures[0]["row"]["p_chosen"] == pytest.approx(0.5)
    assert out.tallies == {"labelled": 3, "position_inconsistent": 3}

    weak = ScriptedBackend(score=prefers("b", 0.55))
    out = label_preferences(records(2), constitution, counting_policy(["a", "b"]), weak,
                            config=LabelConfig(min_confidence=0.1))
    assert [f["reason"] for f in out.failures] == ["low_confidence"] * 2

    same = label_preferences(records(1), constitution, counting_policy(["same"]), weak, config=LabelConfig())
    assert same.failures[0]["reason"] == "identical_responses" and weak.score_calls[-1] is not None


def test_statistics(constitution):
    policy = counting_policy(["a", "b"])
    biased = ScriptedBackend(score=lambda conv, options: [0.8, 0.2])
    out = label_preferences(records(4), constitution, policy, biased, config=LabelConfig())
    stats = labeller_statistics(out.rows, out.failures)
    assert stats["pairs_labelled"] == 4
    assert stats["position_consistency_rate"] == 0.0
    assert stats["mean_confidence"] == pytest.approx(0.0)
    assert stats["first_slot_preference_rate"] == 1.0
    assert stats["label_histogram"]["0.5-0.6"] == 4

    true = label_preferences(records(4), constitution, counting_policy(["a", "b"]),
                             ScriptedBackend(score=prefers("b", 0.9)), config=LabelConfig())
    stats = labeller_statistics(true.rows)
    assert stats["position_consistency_rate"] == 1.0 and stats["mean_confidence"] == pytest.approx(0.4)
    assert stats["first_slot_preference_rate"] == 0.5 and stats["label_histogram"]["0.1-0.2"] == 4


def test_cot_rows_carry_rationales(constitution):
    policy = counting_policy(["a", "b"])
    feedback = ScriptedBackend(respond=lambda conv: "b is kinder.", score=prefers("b", 0.99))
    out = label_preferences(records(1), constitution, policy, feedback, config=LabelConfig(cot=True))
    (row,) = out.rows
    assert row["p_chosen"] == pytest.approx(0.6) and row["rationales"] == ["b is kinder."] * 2


def test_run_resumes_without_duplicates(tmp_path, constitution):
    policy = counting_policy()
    feedback = ScriptedBackend(score=prefers("reply 1"))
    config = LabelConfig(k_responses=3)
    first = run_preferences(records(2), tmp_path / "ds", constitution, policy, feedback, config=config,
                            chunk_size=1, progress=False)
    assert first["counts"]["rows"] == 6 and len(policy.generate_calls) == 2
    result = run_preferences(records(3), tmp_path / "ds", constitution, policy, feedback, config=config,
                             chunk_size=1, progress=False)
    assert len(policy.generate_calls) == 3  # only the new record was generated
    assert result["summary"]["skipped_already_done"] == 2
    rows = read_rows(tmp_path / "ds")
    assert len(rows) == 9 and len({r["id"] for r in rows}) == 9
    meta = read_meta(tmp_path / "ds")
    assert meta["kind"] == "preference" and meta["summary"]["labeller"]["pairs_labelled"] == 9
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "position_consistency_rate" in card and "first_slot_preference_rate" in card
    # Other settings are refused rather than mixed in.
    with pytest.raises(Exception, match="other settings"):
        run_preferences(records(3), tmp_path / "ds", constitution, policy, feedback,
                        config=LabelConfig(k_responses=2), progress=False)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError):
        LabelConfig(k_respones=3)
    with pytest.raises(ValidationError):
        LabelConfig(k_responses=1)
    with pytest.raises(ValidationError):
        LabelConfig(principles=0)
    assert LabelConfig(principles="2").principles == 2 and LabelConfig(principles="all").principles == "all"


def test_bad_options_fail_before_generation(constitution):
    policy = counting_policy()
    from cai.stages.label import make_judge

    judge = make_judge(constitution, ScriptedBackend(), LabelConfig())
    judge.options = ("A", "A")
    with pytest.raises(UserInputError):
        label_preferences(records(1), constitution, policy, ScriptedBackend(), config=LabelConfig(), judge=judge)
    assert policy.generate_calls == []


def test_cli(tmp_path, tiny_model_dir, tiny_constitution_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"How do I do thing {i}?"}) for i in range(2)))
    out = tmp_path / "prefs"
    args = ["generate", "preferences", "-p", str(prompts), "-c", str(tiny_constitution_path),
            "-m", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "4", "-o", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "position_consistency_rate" in res.output
    rows, fails = read_rows(out), list(read_jsonl(out / FAILURES_FILE))
    assert len(rows) + len(fails) == 2
    bad = CliRunner().invoke(cli, args[:-2] + ["--principles", "0", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "principles" in bad.output
    missing = CliRunner().invoke(cli, ["generate", "preferences", "-p", str(prompts), "-c", "nope.yaml",
                                       "-o", str(tmp_path / "y")])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output and "Traceback" not in missing.output


def test_end_to_end_embedded_default(tmp_path, embedded_dir, constitution):
    from cai.backends.transformers import TransformersBackend

    backend = TransformersBackend(str(embedded_dir), batch_size=8, device="cpu", progress=False)
    prompts = [PromptRecord(messages=[{"role": "user", "content": "How do I pick a lock?"}]),
               PromptRecord(messages=[{"role": "user", "content": "Tell me a joke."}])]
    result = run_preferences(prompts, tmp_path / "e2e", constitution, backend,
                             config=LabelConfig(max_new_tokens=8, temperature=1.0), progress=False)
    rows = read_rows(tmp_path / "e2e")
    assert result["counts"]["rows"] + result["counts"]["failed"] == 2
    for r in rows:
        assert 0.5 <= r["p_chosen"] <= 1 and r["position_consistent"] in (True, False)
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
    stats = result["summary"]["labeller"]
    assert stats["pairs_labelled"] == len(rows)
