"""The label-source switch: judge labels only when the labeller is informative, else pairs by construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.errors import UserInputError
from cai.rounds import run_config_class
from cai.rounds.context import RunResources, StageContext
from cai.rounds.label_source import choose, decide

ROOT = Path(__file__).resolve().parents[1]


def ctx(tmp_path: Path, pipeline: list[str], consistency: float | None = None, **section) -> StageContext:
    cfg = run_config_class().model_validate({
        "prompts": {"red_team": str(ROOT / "examples/prompts/red_team.jsonl"),
                    "helpful": str(ROOT / "examples/prompts/helpful.jsonl")},
        "pipeline": pipeline, "stages": {"dpo": section} if section else {},
    })
    rd = tmp_path / "round-1"
    for stage in pipeline:
        (rd / stage).mkdir(parents=True, exist_ok=True)
    if consistency is not None:
        (rd / "preferences" / "cai_dataset.json").write_text(json.dumps(
            {"summary": {"labeller": {"position_consistency_rate": consistency}}}))
    return StageContext(res=RunResources(cfg, tmp_path), stage="dpo", k=1, out=rd / "dpo", fresh=True,
                        policy="x")


FULL = ["revisions", "helpful", "sft-data", "sft", "preferences", "distill", "contrastive", "dpo"]


def test_labeller_at_chance_trains_on_contrastive_pairs(tmp_path):
    source, data, why = choose(ctx(tmp_path, FULL, consistency=0.05), ctx(tmp_path, FULL).section)
    assert source == "contrastive" and data == tmp_path / "round-1" / "contrastive"
    assert "0.05 < 0.6" in why and "chance" in why


def test_informative_labeller_trains_on_judge_labels(tmp_path):
    c = ctx(tmp_path, FULL, consistency=0.8)
    source, data, why = choose(c, c.section)
    assert source == "judge" and data.name == "preferences" and "0.80 >= 0.6" in why


def test_revision_pairs_when_there_are_no_contrastive_pairs(tmp_path):
    pipeline = ["revisions", "helpful", "sft-data", "sft", "preferences", "dpo"]
    c = ctx(tmp_path, pipeline, consistency=0.0)
    source, data, _ = choose(c, c.section)
    assert source == "revision" and data == tmp_path / "round-1" / "revisions" / ".cai" / "preference"


def test_threshold_and_explicit_choice(tmp_path):
    c = ctx(tmp_path, FULL, consistency=0.3, min_position_consistency=0.25)
    assert choose(c, c.section)[0] == "judge"
    c = ctx(tmp_path, FULL, consistency=0.9, label_source="contrastive")
    assert choose(c, c.section)[:1] == ("contrastive",)
    c = ctx(tmp_path, ["distill", "sft", "dpo"], label_source="judge")
    with pytest.raises(UserInputError, match="needs the preferences stage"):
        choose(c, c.section)


def _with_pair_check(c: StageContext, rates: dict[str, float], consistency: float | None) -> StageContext:
    """The preferences stage's pair-set measurement, as the manifest records it."""
    from cai.rounds.manifest import RunManifest

    check = {"directions": {d: {"rate": r, "k": int(r * 80), "n": 80} for d, r in rates.items()},
             "position_consistency": consistency}
    RunManifest(c.res.dir).update("round-1/preferences", status="complete", summary={"labeller_check": check})
    return c


def test_a_labeller_that_prefers_refusals_everywhere_is_not_trusted(tmp_path):
    """High consistency and one perfect direction are not enough: every direction must pass."""
    c = _with_pair_check(ctx(tmp_path, FULL, consistency=0.95),
                         {"refusal": 1.0, "answer": 0.05, "quality": 0.5}, consistency=0.95)
    source, _, why = choose(c, c.section)
    assert source == "contrastive"
    assert "answer 0.05" in why and "weakest 0.05 < 0.75" in why


def test_a_labeller_that_passes_every_direction_labels_the_round(tmp_path):
    c = _with_pair_check(ctx(tmp_path, FULL), {"refusal": 0.9, "answer": 0.85, "quality": 0.8}, consistency=0.7)
    source, data, why = choose(c, c.section)
    assert source == "judge" and data.name == "preferences"
    assert "weakest 0.80 >= 0.75" in why and "position consistency 0.70 >= 0.6" in why


def test_pair_set_agreement_without_consistency_still_gates(tmp_path):
    """Every direction passes, but the two orders disagree: the labels are still not trusted."""
    c = _with_pair_check(ctx(tmp_path, FULL), {"refusal": 0.9, "answer": 0.9, "quality": 0.9}, consistency=0.3)
    source, _, why = choose(c, c.section)
    assert source == "contrastive" and "position consistency 0.30 < 0.6" in why


def test_without_a_pair_set_the_reason_says_so(tmp_path):
    c = ctx(tmp_path, FULL, consistency=0.8)
    source, _, why = choose(c, c.section)
    assert source == "judge" and "no labelled pair set" in why


def test_scored_pairs_label_the_round_when_their_signal_passes_and_the_judge_does_not(tmp_path):
    from cai.rounds.manifest import RunManifest

    pipeline = FULL[:-1] + ["scored-pairs", "dpo"]
    c = _with_pair_check(ctx(tmp_path, pipeline), {"refusal": 0.9, "answer": 0.1, "quality": 0.5}, consistency=0.9)
    check = {"directions": {"refusal": {"rate": 0.85}, "answer": {"rate": 0.8}, "quality": {"rate": 0.78}},
             "position_consistency": None}
    RunManifest(c.res.dir).update("round-1/scored-pairs", status="complete", summary={"labeller_check": check})
    source, data, why = choose(c, c.section)
    assert source == "scored" and data.name == "scored-pairs"
    assert why.startswith("scored: ") and "weakest 0.78 >= 0.75" in why
    # Below the bar in one direction: neither model-labelled source is trusted.
    check["directions"]["quality"]["rate"] = 0.7
    RunManifest(c.res.dir).update("round-1/scored-pairs", summary={"labeller_check": check})
    source, _, why = choose(c, c.section)
    assert source == "contrastive" and "judge: " in why and "scored: " in why and "not trusted" in why


def test_decide_says_when_model_labels_are_taken_only_for_want_of_another_source(tmp_path):
    import shutil

    from cai.rounds.label_source import decide

    pipeline = ["revisions", "helpful", "sft-data", "sft", "preferences", "dpo"]

    def only_judge(c: StageContext) -> StageContext:  # the revisions stage has not written its pairs
        shutil.rmtree(c.res.dir / "round-1" / "revisions")
        return c

    failing = only_judge(_with_pair_check(ctx(tmp_path / "a", pipeline),
                                          {"refusal": 0.9, "answer": 0.1, "quality": 0.5}, 0.9))
    d = decide(failing, failing.section)
    assert d.source == "judge" and d.trusted is False and "used anyway" in d.why
    passing = only_judge(_with_pair_check(ctx(tmp_path / "b", pipeline),
                                          {"refusal": 0.9, "answer": 0.9, "quality": 0.9}, 0.9))
    assert decide(passing, passing.section).trusted is True
    at_chance = only_judge(ctx(tmp_path / "c", pipeline, consistency=0.1))  # no pair set: consistency decides
    assert decide(at_chance, at_chance.section).trusted is False


def test_a_signal_is_held_to_the_directions_it_labels(tmp_path):
    """vote pairs opposite decisions only: its quality figure is shown but does not gate it; the others do."""
    from cai.rounds.manifest import RunManifest

    pipeline = ["scored-pairs", "dpo"]
    c = ctx(tmp_path, pipeline)
    check = {"signal": "vote", "labelled_directions": ["refusal", "answer"], "position_consistency": None,
             "directions": {"refusal": {"rate": 0.86}, "answer": {"rate": 0.8}, "quality": {"rate": 0.53}}}
    RunManifest(c.res.dir).update("round-1/scored-pairs", status="complete", summary={"labeller_check": check})
    choice = decide(c, c.section)
    assert choice.source == "scored" and choice.trusted
    assert "weakest 0.80 >= 0.75" in choice.why and "quality measured, not counted: vote makes no such pairs" in choice.why
    check["directions"]["answer"]["rate"] = 0.6
    RunManifest(c.res.dir).update("round-1/scored-pairs", summary={"labeller_check": check})
    assert not decide(c, c.section).trusted
