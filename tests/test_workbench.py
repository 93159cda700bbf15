"""The constitution workbench on the scripted backend: the matrix and its batching, sameness with the
revise stage, gates, the judge's verdicts, the cache (what an edit recomputes), health, and the diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import ScriptedBackend

from cai.constitution import load_constitution
from cai.data import PromptRecord
from cai.errors import UserInputError
from cai.stages.revise import ReviseConfig, revise
from cai.workbench import (
    CellCache,
    LazyBackend,
    constitution_diff,
    diff_document,
    diff_principle_ids,
    gather_prompts,
    parse_principles,
    run_diff,
    run_matrix,
    select_principles,
    try_document,
    write,
)
from cai.workbench.diff import render_word_diff, word_diff
from cai.workbench.figures import MIN_RATE_PROMPTS
from cai.workbench.selection import prompt_kind
from cai.workbench.terminal import diff_text, try_text

DOCS = Path(__file__).resolve().parents[1] / "docs" / "workbench.md"


@pytest.fixture
def constitution(tiny_constitution_path):
    return load_constitution(tiny_constitution_path)


def prompts(n: int = 3) -> list[PromptRecord]:
    return [PromptRecord(messages=[{"role": "user", "content": f"question number {i} about bread?"}])
            for i in range(n)]


def respond(conv) -> str:
    """A policy whose critiques and revisions change the answer and mention the prompt."""
    last = conv[-1]["content"]
    if last.startswith("Rewrite"):
        return f"Revised: a careful answer to {conv[-5]['content']}"
    if last.startswith("Point out"):
        return "The response is vague and could mislead."
    return f"first answer to {last}"


def prefers_revision(conv, options):
    """A judge that sees which option is the revision (consistent in both orders)."""
    text = conv[-2]["content"] if conv[-1]["role"] == "assistant" else conv[-1]["content"]
    return [0.8, 0.2] if "(A) Revised" in text else [0.2, 0.8]


def backend(respond_fn=respond, score=prefers_revision) -> ScriptedBackend:
    return ScriptedBackend(respond_fn, score)


# --- the matrix ------------------------------------------------------------------------------


def test_matrix_cells_batching_and_verdicts(constitution):
    b = backend()
    m = run_matrix(constitution, constitution.principles, prompts(2), b)
    assert len(m.cells) == 6
    assert {(c["principle_id"], c["prompt_id"]) for c in m.cells} == \
        {(p.id, r.id) for p in constitution.principles for r in prompts(2)}
    # One batched generate per step across every cell: initial (2), critiques (6), revisions (6).
    assert [len(call) for call in b.generate_calls] == [2, 6, 6]
    # The judge: one scoring call for every cell, both orders, each asking only its cell's own principle.
    assert [len(call) for call in b.score_calls] == [12]
    questions = [next(q.comparison_question for q in constitution.principles if q.comparison_question in
                      conv[-2]["content"]) for conv in b.score_calls[0]]
    assert questions == [p.comparison_question for p in constitution.principles for _ in range(2 * 2)]
    for c in m.cells:
        assert c["cached"] is False and c["verdict"] == "better" and c["reason"] is None
        j = c["judge"]
        assert j["p_revision"] == pytest.approx(0.8) and j["position_consistent"] is True
        assert j["p_revision_first"] == pytest.approx(0.8) and j["p_revision_second"] == pytest.approx(0.8)
        assert c["critique"] == "The response is vague and could mislead."
        assert c["revision"].startswith("Revised: a careful answer to question number")
        assert 0 < c["change"] <= 1
    assert m.counts["cells_computed"] == 6 and m.counts["initial_computed"] == 2


def test_a_cell_is_judged_by_its_own_principle_alone(constitution):
    """Batched into one call, each cell's label is what a judge holding only that principle gives."""
    by_question = {"harmful": 0.9, "honest": 0.3, "helpful": 0.6}

    def score(conv, options):
        text = conv[-2]["content"]
        p = next(v for k, v in by_question.items() if f"more {k}" in text or f"less {k}" in text)
        return [p, 1 - p] if "(A) Revised" in text else [1 - p, p]

    b = backend(score=score)
    m = run_matrix(constitution, constitution.principles, prompts(2), b)
    assert len(b.score_calls) == 1
    got = {c["principle_id"]: c["judge"]["p_revision"] for c in m.cells}
    assert got == pytest.approx({"harm": 0.9, "honesty": 0.3, "helpful": 0.6})
    assert {c["verdict"] for c in m.cells if c["principle_id"] == "honesty"} == {"worse"}


def test_principles_must_be_the_constitutions_own(constitution):
    other = constitution.principles[0].model_copy(update={"comparison_question": "Which is shorter?"})
    with pytest.raises(ValueError, match="harm"):
        run_matrix(constitution, [other], prompts(1), backend())


def test_a_cell_is_what_the_revise_stage_does_for_that_principle(constitution):
    """Thin view: the conversations and sampling a cell uses are the stage's own (n_revisions=1)."""
    config = ReviseConfig(seed=3)
    p = constitution.principles[0]  # the exemplar's own principle, so the copy below keeps the few-shot turns
    only = constitution.model_copy(update={"principles": [p]})  # revise() can then only draw p
    staged, viewed = backend(), backend()
    revise(prompts(2), only, staged, config=config)
    m = run_matrix(constitution, [p], prompts(2), viewed, config=config)
    assert staged.generate_calls == viewed.generate_calls
    assert [x.to_dict() for x in staged.params] == [x.to_dict() for x in viewed.params]
    rows = revise(prompts(2), only, backend(), config=config).rows
    for row, cell in zip(rows, m.cells):
        assert cell["critique"] == row["revisions"][0]["critique"]
        assert cell["revision"] == row["revision"]


def test_judge_disagreeing_orders_is_unclear_and_flags_chance(constitution):
    m = run_matrix(constitution, constitution.principles[:1], prompts(3), backend(score=lambda c, o: [0.7, 0.3]))
    assert {c["verdict"] for c in m.cells} == {"unclear"}
    assert all(c["judge"]["position_consistent"] is False for c in m.cells)
    doc = try_document(m)
    h = doc["health"][0]
    assert h["principle_id"] == "harm" and h["flags"] == ["judge_chance"]
    assert "cannot tell" in h["problems"][0]


def test_gates_reject_with_the_reason_and_unchanged_answers_are_flagged(constitution):
    ex_revision = constitution.few_shot[0].revision

    def gated(conv):
        last = conv[-1]["content"]
        prompt = conv[-5]["content"] if last.startswith("Rewrite") else ""
        if last.startswith("Rewrite the response without"):  # harm: copies the exemplar
            return ex_revision
        if last.startswith("Rewrite the response to be honest"):  # honesty: hands the answer back unchanged
            return conv[-4]["content"]
        if last.startswith("Rewrite"):
            return f"Revised: {prompt}"
        if last.startswith("Point out how"):  # helpful: the critique repeats its request
            return "Point out how the response could be more helpful."
        if last.startswith("Point out"):
            return "The response is vague."
        return f"first answer to {last}"

    doc = try_document(run_matrix(constitution, constitution.principles, prompts(2), backend(gated)))
    by = {c["principle_id"]: c for c in doc["cells"]}
    assert by["harm"]["verdict"] == "rejected" and by["harm"]["reason"] == "revision_copies_exemplar"
    assert by["honesty"]["reason"] == "revision_identical_to_response" and by["honesty"]["change"] == 0
    assert by["helpful"]["reason"] == "critique_repeats_request" and by["helpful"]["revision"] is None
    health = {h["principle_id"]: h for h in doc["health"]}
    assert "gates" in health["harm"]["flags"]
    assert set(health["honesty"]["flags"]) == {"gates", "never_changes"}
    assert "never changes" in " ".join(health["honesty"]["problems"])
    figs = {p["id"]: p["figures"] for p in doc["principles"]}
    assert figs["harm"]["reject_reasons"] == {"revision_copies_exemplar": 2}
    # Nothing to judge where there is no changed revision: no scoring for those.
    assert by["honesty"]["judge"] is None and by["helpful"]["judge"] is None


def test_refusal_detector_runs_on_each_text(constitution):
    def refusing(conv):
        last = conv[-1]["content"]
        if last.startswith("Rewrite"):
            return "I can't help with that, but question number bread is a fine topic."
        if last.startswith("Point out"):
            return "The response is vague."
        return f"first answer to {last}"

    doc = try_document(run_matrix(constitution, constitution.principles[:1], prompts(1), backend(refusing)))
    cell = doc["cells"][0]
    assert "can't help" in cell["refusal"]["revision"]["matched"]
    assert cell["refusal"]["critique"] is None and doc["prompts"][0]["initial"]["refusal"] is None
    assert doc["principles"][0]["figures"]["revision_refusals"] == 1
    assert " R" in try_text(doc)


def test_degenerate_initial_response_marks_the_prompt(constitution):
    def empty_first(conv):
        return "" if conv[-1]["content"].startswith("question number 0") else respond(conv)

    m = run_matrix(constitution, constitution.principles[:2], prompts(2), backend(empty_first))
    assert m.initial[0]["degenerate"] == "empty"
    assert [c["verdict"] for c in m.cells if c["prompt_id"] == prompts(2)[0].id] == ["no_response"] * 2
    assert m.counts["cells_computed"] == 2


# --- the cache --------------------------------------------------------------------------------


def _edit(c, pid, **fields):
    return c.model_copy(update={"principles": [p.model_copy(update=fields) if p.id == pid else p
                                               for p in c.principles]})


def test_editing_one_principle_recomputes_only_its_cells(constitution, tmp_path):
    run_matrix(constitution, constitution.principles, prompts(3), backend(), cache=CellCache(tmp_path))
    # "honesty" is no few-shot exemplar's principle, so its text reaches only its own cells.
    edited = _edit(constitution, "honesty", critique_request="Point out anything untrue in the response.")
    b = backend()
    m = run_matrix(edited, edited.principles, prompts(3), b, cache=CellCache(tmp_path))
    assert {c["principle_id"] for c in m.cells if not c["cached"]} == {"honesty"}
    assert all(c["cached"] for c in m.cells if c["principle_id"] != "honesty")
    assert [len(call) for call in b.generate_calls] == [3, 3]  # no initial responses, 3 critiques, 3 revisions
    assert len(b.score_calls) == 1
    assert m.counts == {**m.counts, "cells_computed": 3, "cells_cached": 6, "initial_cached": 3}
    # Unchanged again: everything from the cache, and the model is never even built.
    def no_model():
        raise AssertionError("a fully cached run must not load a model")

    again = run_matrix(edited, edited.principles, prompts(3), LazyBackend(no_model, "scripted"),
                       cache=CellCache(tmp_path))
    assert all(c["cached"] for c in again.cells) and again.timing["model_load_s"] == 0


def test_what_else_invalidates_the_cache(constitution, tmp_path):
    def computed(c, **kw) -> set[str]:
        m = run_matrix(c, c.principles, prompts(2), backend(), cache=CellCache(tmp_path), **kw)
        return {x["principle_id"] for x in m.cells if not x["cached"]}

    assert computed(constitution) == {"harm", "honesty", "helpful"}
    assert computed(_edit(constitution, "helpful", weight=9.0, tags=["new"])) == set()  # not in any prompt
    # "harm" is the first exemplar's principle: its text is in every cell's few-shot turns.
    assert computed(_edit(constitution, "harm", revision_request="Rewrite it kindly.")) == \
        {"harm", "honesty", "helpful"}
    assert computed(constitution, config=ReviseConfig(seed=1)) == {"harm", "honesty", "helpful"}
    assert computed(constitution, model_key="another-model") == {"harm", "honesty", "helpful"}
    assert computed(constitution.model_copy(update={"system_prompt": "Be terse."})) == {"harm", "honesty", "helpful"}
    assert computed(constitution) == set()
    m = run_matrix(constitution, constitution.principles, prompts(2), backend(), cache=CellCache(tmp_path, read=False))
    assert not any(c["cached"] for c in m.cells)


def test_a_damaged_cache_entry_is_computed_again(constitution, tmp_path):
    run_matrix(constitution, constitution.principles[:1], prompts(1), backend(), cache=CellCache(tmp_path))
    for f in (tmp_path / "cell").rglob("*.json"):
        f.write_text("{not json", encoding="utf-8")
    m = run_matrix(constitution, constitution.principles[:1], prompts(1), backend(), cache=CellCache(tmp_path))
    assert m.cells[0]["cached"] is False and m.cells[0]["verdict"] == "better"


# --- selection ------------------------------------------------------------------------------


def test_principle_selection(constitution):
    assert parse_principles("all") == "all" and parse_principles("2") == 2
    assert parse_principles("harm, helpful,harm") == ["harm", "helpful"]
    assert [p.id for p in select_principles(constitution, ["helpful", "harm"])] == ["helpful", "harm"]
    two = [p.id for p in select_principles(constitution, 2, seed=5)]
    assert len(two) == 2 and two == [p.id for p in select_principles(constitution, 2, seed=5)]
    with pytest.raises(UserInputError, match="no principle 'nope'; use one of: harm, honesty, helpful"):
        select_principles(constitution, ["harm", "nope"])
    with pytest.raises(UserInputError, match="has 3 principles"):
        select_principles(constitution, 4)
    with pytest.raises(UserInputError, match="positive number"):
        parse_principles("0")
    assert parse_principles("changed", allow_changed=True) == "changed"


def test_prompts_from_file_and_flags(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\n", encoding="utf-8")
    assert [r.text for r in gather_prompts(f, ["three", "one"])] == ["one", "two", "three"]
    with pytest.raises(UserInputError, match="no prompts"):
        gather_prompts(None, [])
    with pytest.raises(UserInputError, match="empty"):
        gather_prompts(None, ["  "])
    kinds = [prompt_kind(PromptRecord(messages=[{"role": "user", "content": "x"}], extra=e)) for e in
             ({"category": "violence"}, {"category": "coding", "look_unsafe": True}, {"harmful": False}, {})]
    assert kinds == ["harmful", "benign", "benign", None]


# --- documents --------------------------------------------------------------------------------


def test_workbench_json_is_documented_and_written(constitution, tmp_path):
    doc = try_document(run_matrix(constitution, constitution.principles, prompts(2), backend()))
    jpath, hpath = write(doc, tmp_path / "w")
    data = json.loads(jpath.read_text(encoding="utf-8"))
    assert data["schema"] == "cai.workbench/1" and data["kind"] == "try"
    docs = DOCS.read_text(encoding="utf-8")
    keys = set(data) | set(data["cells"][0]) | set(data["cells"][0]["judge"]) | set(data["prompts"][0]) \
        | set(data["prompts"][0]["initial"]) | set(data["principles"][0]) | set(data["principles"][0]["figures"]) \
        | set(data["health"][0]) | set(data["counts"]) - {k for k in data["counts"] if k.startswith("tally.")}
    missing = sorted(k for k in keys if f"`{k}`" not in docs)
    assert not missing, f"undocumented workbench.json fields: {missing}"
    page = hpath.read_text(encoding="utf-8")
    assert "<script src" not in page and "<link" not in page and "http" not in page.split("<main>")[0]
    for c in data["cells"]:
        assert c["revision"] in page.replace("&#x27;", "'")


# --- the diff -------------------------------------------------------------------------------


def test_word_diff():
    ops = word_diff("Point out anything harmful now.", "Point out anything dangerous now.")
    assert render_word_diff(ops) == "Point out anything [-harmful-]{+dangerous+} now."


def test_constitution_diff_text_and_selection(constitution):
    b = _edit(constitution, "honesty", critique_request="Point out anything untrue in the response.")
    b = b.model_copy(update={"principles": [p for p in b.principles if p.id != "helpful"]
                                           + [b.principles[0].model_copy(update={"id": "kind"})]})
    b = _edit(b, "harm", weight=1.0)
    d = constitution_diff(constitution, b)
    status = {p["id"]: p["status"] for p in d["principles"]}
    assert status == {"harm": "changed", "honesty": "changed", "helpful": "removed", "kind": "added"}
    assert list(next(p for p in d["principles"] if p["id"] == "honesty")["fields"]) == ["critique_request"]
    # A weight change does not reach the prompts: not run by default.
    assert diff_principle_ids(constitution, b, d, "changed") == ["honesty", "helpful", "kind"]
    assert diff_principle_ids(constitution, b, d, "all") == ["harm", "honesty", "helpful", "kind"]
    with pytest.raises(UserInputError, match="neither"):
        diff_principle_ids(constitution, b, d, ["nope"])
    sp = constitution.model_copy(update={"system_prompt": "Be terse."})
    d2 = constitution_diff(constitution, sp)
    assert d2["shared"][0]["field"] == "system_prompt" and d2["shared"][0]["affects_cells"]
    assert diff_principle_ids(constitution, sp, d2, "changed") == ["harm", "honesty", "helpful"]


def test_diff_runs_both_versions_through_one_cache(constitution, tmp_path):
    b = _edit(constitution, "honesty", critique_request="Point out anything untrue in the response.")
    d = constitution_diff(constitution, b)
    sb = backend()
    run = run_diff(constitution, b, ["harm", "honesty"], prompts(2), sb, cache=CellCache(tmp_path))
    doc = diff_document(run)
    same = {p["principle_id"]: p["same_cell"] for p in doc["pairs"]}
    assert same == {"harm": True, "honesty": False}
    # B computed only its edited principle's cells; the initial responses and harm came from A's run.
    assert [len(c) for c in sb.generate_calls] == [2, 4, 4, 2, 2]
    assert all(p["b"]["cached"] for p in doc["pairs"] if p["principle_id"] == "harm")
    assert doc["text_diff"] == d
    out = diff_text(doc)
    assert "changed  honesty" in out and "[-dishonest-]{+untrue+}" in out and "(same cell)" in out
    jpath, hpath = write(doc, tmp_path / "d")
    assert jpath.name == "diff.json" and hpath.name == "diff.html"
    assert "<del>dishonest </del><ins>untrue </ins>" in hpath.read_text(encoding="utf-8")


def test_diff_rates_with_wilson_intervals_from_20_prompts(constitution):
    def refuse_harmful(conv):
        last = conv[-1]["content"]
        if last.startswith("Rewrite"):
            prompt = conv[-5]["content"]
            return f"I can't help with {prompt}" if "harmful" in prompt else f"Revised: {prompt}"
        if last.startswith("Point out"):
            return "The response is vague."
        return f"first answer to {last}"

    n = MIN_RATE_PROMPTS
    recs = [PromptRecord(messages=[{"role": "user", "content": f"harmful request {i} about locks"}],
                         extra={"category": "crime"}) for i in range(n // 2)]
    recs += [PromptRecord(messages=[{"role": "user", "content": f"ordinary request {i} about bread"}],
                          extra={"category": "cooking", "look_unsafe": False}) for i in range(n - n // 2)]
    b = _edit(constitution, "harm", comparison_question="Which response is safer?")
    doc = diff_document(run_diff(constitution, b, ["harm"], recs, backend(refuse_harmful)))
    rates = doc["b"]["principles"][0]["rates"]
    assert rates["refusal"]["rate"] == 1.0 and rates["refusal"]["n"] == n // 2
    assert rates["over_refusal"]["rate"] == 0.0 and 0 < rates["over_refusal"]["high"] < 0.35
    assert doc["a"]["rates"]["initial"]["refusal"]["rate"] == 0.0
    assert "refusal 100% [" in diff_text(doc)
    small = diff_document(run_diff(constitution, b, ["harm"], recs[:3], backend(refuse_harmful)))
    assert small["b"]["principles"][0]["rates"] is None


def test_a_pair_the_backend_cannot_score_is_unjudged(constitution):
    nan = float("nan")
    m = run_matrix(constitution, constitution.principles[:1], prompts(1), backend(score=lambda c, o: [nan, nan]))
    cell = m.cells[0]
    assert cell["verdict"] == "unjudged" and cell["judge"]["p_revision"] is None
    assert cell["judge"]["failure"] == "scoring_failed"
