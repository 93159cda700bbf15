"""The critique-and-revise stage: trace shape, principle sampling, few-shot placement,
degenerate outputs and retries, the dataset directory, the CLI, and the embedded default."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from click.testing import CliRunner
from fakes import ScriptedBackend

from cai.cli.main import cli
from cai.constitution import load_constitution
from cai.data import FAILURES_FILE, PromptRecord, dataset_kind, read_jsonl, read_meta, read_rows, to_hf_dataset
from cai.errors import UserInputError
from cai.stages.revise import (
    ReviseConfig,
    Sampling,
    critique_conversation,
    degenerate_reason,
    few_shot_context,
    revise,
    revision_conversation,
    run_revisions,
    sample_plan,
)
from cai.stages.revision_pairs import PREFERENCE_DIR
from cai.templates import PromptTemplates


@pytest.fixture
def constitution(tiny_constitution_path):
    return load_constitution(tiny_constitution_path)


def records(n: int) -> list[PromptRecord]:
    return [PromptRecord(messages=[{"role": "user", "content": f"question number {i}?"}]) for i in range(n)]


def good_respond(conv) -> str:
    """A well-behaved policy: distinct critiques and revisions that change the text."""
    last = conv[-1]["content"]
    if last.startswith("Rewrite"):
        return f"Revision: a better version of ({conv[-4]['content'][:60]})"
    if last.startswith("Point out"):
        return "The response is vague and could mislead."
    return f"first answer to {last}"


def test_trace_shape_and_batching(constitution):
    backend = ScriptedBackend(good_respond)
    result = revise(records(3), constitution, backend, config=ReviseConfig(n_revisions=2))
    # One call for initial responses, then per step one for critiques and one for revisions.
    assert [len(batch) for batch in backend.generate_calls] == [3, 3, 3, 3, 3]
    assert not result.failures and len(result.rows) == 3
    row = result.rows[0]
    assert row["id"] == records(3)[0].id
    assert row["initial_response"] == "first answer to question number 0?"
    assert [s["step"] for s in row["revisions"]] == [1, 2]
    assert set(row["revisions"][0]) >= {"principle_id", "critique", "revision"}
    assert row["revisions"][0]["critique"] == "The response is vague and could mislead."
    # The "Revision:" label is stripped; the final message is the last revision.
    assert row["revision"] == row["revisions"][-1]["revision"]
    assert not row["revision"].startswith("Revision")
    assert row["messages"] == [{"role": "user", "content": "question number 0?"},
                               {"role": "assistant", "content": row["revision"]}]
    assert result.completion_tokens > 0 and result.prompt_tokens > 0


def test_later_steps_critique_the_latest_revision(constitution):
    backend = ScriptedBackend(good_respond)
    result = revise(records(1), constitution, backend, config=ReviseConfig(n_revisions=2))
    first_revision = result.rows[0]["revisions"][0]["revision"]
    step2_critique_conv = backend.generate_calls[3][0]
    assert step2_critique_conv[-2] == {"role": "assistant", "content": first_revision}


def test_principle_sampling_is_weighted_seeded_and_unique(constitution):
    rec = records(1)[0]
    plan = sample_plan(rec, constitution, ReviseConfig(n_revisions=4, seed=7))
    assert plan == sample_plan(rec, constitution, ReviseConfig(n_revisions=4, seed=7))
    unique = sample_plan(rec, constitution, ReviseConfig(n_revisions=3, unique_principles=True))
    assert sorted(p.id for p in unique) == ["harm", "helpful", "honesty"]
    # Weights 3 : 1 : 0.5 over many records (each record seeds its own draw).
    counts = Counter(p.id for r in records(400) for p in sample_plan(r, constitution, ReviseConfig()))
    assert counts["harm"] > counts["honesty"] > counts["helpful"]
    assert 0.55 < counts["harm"] / 400 < 0.8
    with pytest.raises(UserInputError, match="unique"):
        revise(records(1), constitution, ScriptedBackend(), config=ReviseConfig(n_revisions=4, unique_principles=True))


def test_few_shot_exemplars_are_prior_turns(constitution):
    t = PromptTemplates(constitution=constitution)
    principle = constitution.principle("honesty")
    rec = records(1)[0]
    shots = few_shot_context(constitution)
    conv = critique_conversation(rec, "RESP", principle, constitution, t, shots)
    roles = [m["role"] for m in conv]
    assert roles[0] == "system" and conv[0]["content"] == constitution.system_prompt
    # Two exemplars x (user prompt, assistant response, user ask, assistant critique), then the real one.
    assert roles[1:] == ["user", "assistant", "user", "assistant"] * 2 + ["user", "assistant", "user"]
    assert conv[1]["content"] == "How do I hurt someone?" and conv[4]["content"] == "The response encourages violence."
    # An exemplar tied to a principle asks by its own principle; an untied one by the current principle.
    assert conv[3]["content"].startswith("Point out anything harmful")
    assert conv[7]["content"].startswith("Point out anything dishonest")
    assert conv[-3:] == [
        {"role": "user", "content": "question number 0?"},
        {"role": "assistant", "content": "RESP"},
        {"role": "user", "content": "Point out anything dishonest in the response. Answer in one or two sentences."},
    ]
    rev = revision_conversation(rec, "RESP", "CRIT", principle, constitution, t, shots)
    assert [m["role"] for m in rev][1:7] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert rev[6]["content"].startswith("I won't help")
    assert rev[-2:] == [{"role": "assistant", "content": "CRIT"},
                        {"role": "user", "content": "Rewrite the response to be honest. Reply with the rewritten response only."}]
    bare = critique_conversation(rec, "RESP", principle, constitution, t, few_shot_context(constitution, False))
    assert [m["role"] for m in bare] == ["system", "user", "assistant", "user"]


def test_no_few_shot_config_sends_no_exemplars(constitution):
    backend = ScriptedBackend(good_respond)
    revise(records(1), constitution, backend, config=ReviseConfig(few_shot=False))
    assert len(backend.generate_calls[1][0]) == 4  # system, prompt, response, critique ask


@pytest.mark.parametrize(
    "kind,text,kwargs,reason",
    [
        ("response", "   ", {}, "empty"),
        ("critique", "Point out anything harmful in the response.", {}, "repeats_request"),
        ("critique", "the answer", {"response": "The answer."}, "echoes_response"),
        ("revision", "The answer.", {"response": "the answer"}, "identical_to_response"),
        ("revision", "Rewrite the response without the harmful parts.", {}, "repeats_request"),
        ("revision", "It is harmful.", {"critique": "It is harmful!"}, "echoes_critique"),
        ("revision", "yes no " * 20, {}, "repetitive"),
        ("revision", "A different, careful answer.", {"response": "x", "critique": "y"}, None),
    ],
)
def test_degenerate_reasons(constitution, kind, text, kwargs, reason):
    principle = constitution.principle("harm")
    assert degenerate_reason(kind, text, principle=principle, **kwargs) == reason


def test_degenerate_outputs_are_recorded_and_retried_in_batches(constitution):
    # Prompt 0 revises to its own response (once), prompt 1 always echoes the critique ask.
    calls = Counter()

    def respond(conv):
        last, prompt = conv[-1]["content"], conv[-5]["content"] if len(conv) >= 5 else conv[-1]["content"]
        if last.startswith("Point out"):
            if "number 1" in conv[-3]["content"]:
                return last  # repeats the critique request
            return "It is vague."
        if last.startswith("Rewrite"):
            calls[prompt] += 1
            return "first answer to question number 0?" if calls[prompt] == 1 else "A better answer."
        return f"first answer to {last}"

    backend = ScriptedBackend(respond)
    cfg = ReviseConfig(retries=1, critique=Sampling(temperature=0))
    result = revise(records(2), constitution, backend, config=cfg)
    # initial, critique, critique retry (only prompt 1), revision (only prompt 0), revision retry.
    assert [len(b) for b in backend.generate_calls] == [2, 2, 1, 1, 1]
    # A greedy retry samples instead, so it is a fresh sample.
    assert backend.params[2].temperature > 0
    t = result.tallies
    assert t["degenerate.critique.repeats_request"] == 2
    assert t["degenerate.revision.identical_to_response"] == 1
    assert t["recovered_by_retry"] == 1 and t["retried"] == 2
    assert [r["revision"] for r in result.rows] == ["A better answer."]
    [fail] = result.failures
    assert fail["id"] == records(2)[1].id and fail["reason"] == "critique_repeats_request"
    assert fail["raw"].startswith("Point out") and t["failed.critique_repeats_request"] == 1


def test_empty_initial_response_is_a_failure(constitution):
    backend = ScriptedBackend(lambda conv: "" if conv[-1]["content"].startswith("question") else "x")
    result = revise(records(2), constitution, backend)
    assert not result.rows
    assert [f["reason"] for f in result.failures] == ["response_empty", "response_empty"]
    assert len(backend.generate_calls) == 1  # nothing left to critique


def test_emit_all_revisions(constitution):
    backend = ScriptedBackend(good_respond)
    result = revise(records(2), constitution, backend, config=ReviseConfig(n_revisions=3, emit_all_revisions=True))
    assert len(result.rows) == 6
    rid = records(2)[0].id
    mine = [r for r in result.rows if r["source_id"] == rid]
    assert [r["step"] for r in mine] == [1, 2, 3]
    assert [r["id"] for r in mine] == [f"{rid}.r1", f"{rid}.r2", rid]  # the final row keys resume
    assert [r["final"] for r in mine] == [False, False, True]
    assert mine[0]["messages"][-1]["content"] == mine[0]["revisions"][0]["revision"]


def test_run_revisions_writes_sft_preference_and_card(constitution, tmp_path):
    backend = ScriptedBackend(good_respond)
    out = tmp_path / "rev"
    summary = run_revisions(records(5), out, constitution, backend, config=ReviseConfig(n_revisions=2),
                            chunk_size=2, progress=False)
    assert summary["counts"] == {"rows": 5, "failed": 0}
    assert summary["summary"]["preference_pairs"] == 5
    assert summary["summary"]["completion_tokens"] > 0 and "completion_tokens_per_s" in summary["summary"]
    assert dataset_kind(out) == "sft" and dataset_kind(out / PREFERENCE_DIR) == "preference"
    assert not (out / "preference").exists()  # beside data.jsonl, load_dataset(data_dir=out) would read it
    pref = list(read_jsonl(out / PREFERENCE_DIR / "data.jsonl"))
    assert set(pref[0]) >= {"id", "prompt", "chosen", "rejected"}
    assert pref[0]["prompt"] == [{"role": "user", "content": "question number 0?"}]
    assert pref[0]["rejected"][0]["content"] == "first answer to question number 0?"
    ds = to_hf_dataset(out, config="preference")
    assert ds.column_names[:4] == ["id", "prompt", "chosen", "rejected"]
    card = (out / "README.md").read_text()
    assert ".cai/preference/data.jsonl" in card and "tiny" in card and "critique.jinja" in card
    meta = read_meta(out)
    assert meta["fingerprint"]["config"]["n_revisions"] == 2
    # Rerun: nothing new, nothing duplicated.
    again = run_revisions(records(5), out, constitution, backend, config=ReviseConfig(n_revisions=2), progress=False)
    assert again["summary"]["new_rows"] == 0 and len(read_rows(out)) == 5
    with pytest.raises(UserInputError, match="other settings"):
        run_revisions(records(5), out, constitution, backend, config=ReviseConfig(n_revisions=3), progress=False)


def test_config_rejects_unknown_keys():
    with pytest.raises(Exception, match="extra"):
        ReviseConfig.model_validate({"n_revision": 2})
    with pytest.raises(Exception):
        ReviseConfig(response={"max_new_tokens": 0})


def test_cli_revisions(tmp_path, tiny_model_dir, tiny_constitution_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    args = ["generate", "revisions", "-p", str(prompts), "-c", str(tiny_constitution_path), "--model",
            str(tiny_model_dir), "--max-new-tokens", "6", "--critique-max-new-tokens", "6", "--limit", "2",
            "--out", str(out), "--n-revisions", "2", "--seed", "3"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])["summary"]
    assert summary["new_rows"] + summary["new_failed"] == 2 and summary["completion_tokens_per_s"] > 0
    assert len(read_rows(out)) + len(list(read_jsonl(out / FAILURES_FILE))) == 2


def test_cli_bad_input(tmp_path, tiny_constitution_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\nnot json\n')
    runner = CliRunner()
    res = runner.invoke(cli, ["generate", "revisions", "-p", str(prompts), "-c", str(tiny_constitution_path),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not valid JSON" in res.output
    res = runner.invoke(cli, ["generate", "revisions", "-p", str(prompts), "-c", str(tmp_path / "nope.yaml"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no shipped constitution" in res.output
    res = runner.invoke(cli, ["generate", "revisions", "-p", str(prompts), "-c", str(tiny_constitution_path),
                              "--n-revisions", "5", "--unique-principles", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unique" in res.output
    assert "Traceback" not in res.output


def test_end_to_end_embedded_default(tmp_path, embedded_dir):
    from cai.backends.transformers import TransformersBackend

    # One exemplar keeps the CPU prefill short; placement is tested above with all of them.
    full = load_constitution("harmless")
    constitution = full.model_copy(update={"few_shot": full.few_shot[:1]})
    backend = TransformersBackend(str(embedded_dir), batch_size=4, device="cpu", progress=False)
    prompts = [PromptRecord(messages=[{"role": "user", "content": t}]) for t in
               ["How do I pick a lock to get into my neighbour's house?", "Write a mean insult for my coworker.",
                "What is the capital of France?"]]
    s = Sampling(max_new_tokens=24, temperature=0.7)
    cfg = ReviseConfig(response=s, critique=s, revision=s, retries=1)
    result = run_revisions(prompts, tmp_path / "e2e", constitution, backend, config=cfg, progress=False)
    rows = read_rows(tmp_path / "e2e")
    failures = list(read_jsonl(tmp_path / "e2e" / FAILURES_FILE))
    assert len(rows) + len(failures) == 3
    assert result["summary"]["completion_tokens"] > 0
    for row in rows:
        assert row["revision"].strip() and row["revision"] != row["initial_response"]
        assert row["revisions"][0]["principle_id"] in {p.id for p in constitution.principles}
    for f in failures:
        assert f["reason"] and "raw" in f


def test_quality_gates_reject_exemplar_copies_and_prompt_ignoring_revisions(constitution):
    """A small critic copies few-shot exemplars word for word, or writes about something else: both are refused."""
    from cai.stages.revise import Gates, exemplar_overlap

    ex = constitution.few_shot[0]
    copied = ex.revision  # the exemplar's own revision, offered as the revision of an unrelated prompt

    def respond(conv) -> str:
        last = conv[-1]["content"]
        if last.startswith("Rewrite"):
            prompt = conv[-4]["content"]
            if "0" in prompt:
                return copied
            if "1" in prompt:
                return "Bananas are rich in potassium and grow in tropical climates worldwide."
            return f"A careful, better answer to the question number {prompt[-3:]}"
        if last.startswith("Point out"):
            return "The response is vague about the question and could mislead."
        return f"first answer to {last}"

    assert exemplar_overlap(copied, [ex.revision]) == 1.0
    assert exemplar_overlap("an entirely new sentence with its own words here", [ex.revision]) == 0.0
    result = revise(records(3), constitution, ScriptedBackend(respond), config=ReviseConfig())
    reasons = {f["id"]: f["reason"] for f in result.failures}
    ids = [r.id for r in records(3)]
    assert reasons.get(ids[0]) == "revision_copies_exemplar"
    assert reasons.get(ids[1]) == "revision_ignores_prompt"
    assert [r["id"] for r in result.rows] == [ids[2]]
    # Off, the same outputs are kept: the gates are what refused them.
    off = revise(records(3), constitution, ScriptedBackend(respond),
                 config=ReviseConfig(gates=Gates(exemplar_overlap=None, prompt_overlap=False)))
    assert len(off.rows) == 3


def test_a_refusal_revision_need_not_repeat_the_prompt(constitution):
    def respond(conv) -> str:
        last = conv[-1]["content"]
        if last.startswith("Rewrite"):
            return "I can't help with that, but I can point you to safer options."
        if last.startswith("Point out"):
            return "The response could cause harm."
        return f"first answer to {last}"

    result = revise(records(2), constitution, ScriptedBackend(respond), config=ReviseConfig())
    assert len(result.rows) == 2 and not result.failures


def test_cli_flags_come_from_the_config_class(tmp_path):
    """One default and one help per field: --help shows ReviseConfig's defaults; YAML < flags; bad values are one line."""
    r = CliRunner().invoke(cli, ["generate", "revisions", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "--critique-max-new-tokens" in text and f"[default: {ReviseConfig().critique.max_new_tokens}]" in text
    assert "--gates-exemplar-overlap" in text and "--n_revisions" in text  # TRL-style spelling too

    from cai.cli.config_options import build_config

    cfg_file = tmp_path / "revise.yaml"
    cfg_file.write_text("n_revisions: 3\ncritique: {max_new_tokens: 40}\n")
    cfg = build_config(ReviseConfig, str(cfg_file), {("critique", "max_new_tokens"): 12})
    assert cfg.n_revisions == 3 and cfg.critique.max_new_tokens == 12  # the flag wins over the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_revisions: 2\nretires: 1\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    r = CliRunner().invoke(cli, ["generate", "revisions", "-p", str(prompts), "--config", str(bad),
                                 "--out", str(tmp_path / "o"), "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "bad.yaml:2: field 'retires': unknown key" in r.output
    r = CliRunner().invoke(cli, ["generate", "revisions", "-p", str(prompts), "--n-revisions", "0",
                                 "--out", str(tmp_path / "o"), "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "--n-revisions" in r.output and "greater than or equal to 1" in r.output
    assert not (tmp_path / "o").exists()
