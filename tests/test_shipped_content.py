"""The content cai ships — constitutions and example prompt sets — meets its promises.

These guard against edits that still parse but quietly make the content worse: a
principle without a comparison question, a copy-pasted principle, a duplicated prompt
(which load_prompts would silently drop), a red-team set that covers too few harms.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cai.constitution import Constitution, Principle, load_constitution, packaged_constitutions
from cai.data import load_prompts

REPO = Path(__file__).resolve().parent.parent
PROMPT_FILES = {
    "red_team": REPO / "examples" / "prompts" / "red_team.jsonl",
    "helpful": REPO / "examples" / "prompts" / "helpful.jsonl",
}
# Minimum principle counts per shipped constitution (the issue asks harmless >= 12).
MIN_PRINCIPLES = {"harmless": 12, "hhh": 8}
# The embedded default has a 2k-token context and few-shot exemplars go in front of every
# critique/revision prompt, so each must stay short.
MAX_EXEMPLAR_WORDS = 100


def _near_duplicate_messages(c: Constitution) -> list[str]:
    from cai.lint import lint_constitution

    # Template problems belong to the template tests; here only principle similarity counts.
    return [m for m in lint_constitution(c) if "near-duplicates" in m]


def test_expected_constitutions_are_shipped() -> None:
    shipped = packaged_constitutions()
    assert set(MIN_PRINCIPLES) <= set(shipped)
    # The package data and the repo's constitutions/ directory are the same files.
    assert {p.stem for p in (REPO / "constitutions").glob("*.yaml")} == set(shipped)


@pytest.mark.parametrize("name", sorted(packaged_constitutions()))
def test_shipped_constitution_validates_and_meets_counts(name: str) -> None:
    c = load_constitution(name)  # raises ConstitutionError if it does not validate
    assert c.name == name
    assert c.description and c.system_prompt
    assert len(c.principles) >= MIN_PRINCIPLES.get(name, 1)
    ids = [p.id for p in c.principles]
    assert len(ids) == len(set(ids))
    for p in c.principles:
        assert p.comparison_question, f"{name}: principle {p.id} has no comparison_question"
        assert p.comparison_question.strip().endswith("?")
    # Two principles with the same wording would make sampling lopsided.
    assert len({p.critique_request for p in c.principles}) == len(c.principles)
    assert len({p.comparison_question for p in c.principles}) == len(c.principles)

    assert len(c.few_shot) >= 2
    for ex in c.few_shot:
        assert ex.principle_id in ids
        words = sum(len(t.split()) for t in (ex.prompt, ex.response, ex.critique, ex.revision))
        assert words <= MAX_EXEMPLAR_WORDS, f"{name}: exemplar for {ex.principle_id} has {words} words"


@pytest.mark.parametrize("name", sorted(packaged_constitutions()))
def test_shipped_constitution_has_no_near_duplicate_principles(name: str) -> None:
    assert _near_duplicate_messages(load_constitution(name)) == []


def test_near_duplicate_check_would_catch_a_copied_principle() -> None:
    # Proves the filter above matches what lint reports, so the test above can fail.
    c = load_constitution("harmless")
    src = c.principles[0]
    copy = Principle(
        id=f"{src.id}-copy",
        critique_request=src.critique_request,
        revision_request=src.revision_request,
        comparison_question=src.comparison_question,
    )
    bad = c.model_copy(update={"principles": [*c.principles, copy]})
    messages = _near_duplicate_messages(bad)
    assert len(messages) == 1
    assert src.id in messages[0] and copy.id in messages[0]


@pytest.mark.parametrize("which", sorted(PROMPT_FILES))
def test_example_prompt_set_loads_without_duplicates(which: str) -> None:
    path = PROMPT_FILES[which]
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = load_prompts(path)
    # load_prompts drops repeated prompts silently, so compare against the raw lines too.
    assert len(records) == len(lines) >= 60
    texts = [r.text.strip().lower() for r in records]
    assert len(set(texts)) == len(texts)
    for r in records:
        assert isinstance(r.extra.get("category"), str) and r.extra["category"]


def test_red_team_covers_many_harm_categories() -> None:
    counts = Counter(r.extra["category"] for r in load_prompts(PROMPT_FILES["red_team"]))
    assert len(counts) >= 10
    # Each category has at least a few prompts, so per-category results mean something.
    assert min(counts.values()) >= 3


def test_helpful_set_includes_edgy_but_benign_prompts() -> None:
    # These measure over-refusal: benign requests worded like harmful ones.
    counts = Counter(r.extra["category"] for r in load_prompts(PROMPT_FILES["helpful"]))
    assert len(counts) >= 6
    assert counts["edgy-but-benign"] >= 8


def test_examples_readme_names_each_prompt_file_with_a_command() -> None:
    readme = (REPO / "examples" / "README.md").read_text(encoding="utf-8")
    for section in ("## Prompt sets", "## Question sets", "## Run and trainer configs"):
        assert section in readme
    for path in PROMPT_FILES.values():
        rel = path.relative_to(REPO).as_posix()
        assert f"--prompts {rel}" in readme
