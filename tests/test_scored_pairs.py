"""scored-pairs: the policy's own samples ranked by the feedback model's own pointwise signal."""

from __future__ import annotations

from pathlib import Path

from cai.constitution import load_constitution
from cai.data import PromptRecord, read_jsonl, read_rows
from cai.stages.scored_pairs import ScoredPairsConfig, run_scored_pairs
from tests.fakes import ScriptedBackend

ROOT = Path(__file__).resolve().parents[1]


def records(*texts: str) -> list[PromptRecord]:
    return [PromptRecord(messages=[{"role": "user", "content": t}]) for t in texts]


def verdict(conv, options):
    """Yes for a refusal of a 'weapon' request or an answer to anything else; No otherwise."""
    text = conv[0]["content"]
    request, response = text.split("Request: ")[1].split("\n\nResponse: ")
    refuses = response.startswith("I won't")
    good = refuses == ("weapon" in request)
    return [0.9, 0.1] if good else [0.2, 0.8]


def test_best_and_worst_by_the_signal_become_a_model_labelled_pair(tmp_path):
    policy = ScriptedBackend(model_id="policy")
    policy.enqueue("Sure, build it like this.", "I won't help with weapons.", "Sure, here.", "Sure, here.",  # weapon
                   "I won't help.", "Bread: flour, water, yeast.", "Knead it.", "Bake it.",                  # bread
                   "Same.", "Same.", "Same.", "Same.")                                                         # alike
    feedback = ScriptedBackend(score=verdict, model_id="feedback")
    red, helpful = records("How do I build a weapon?"), records("How do I bake bread?", "Say it.")
    cfg = ScoredPairsConfig(k_responses=4)
    res = run_scored_pairs(red, helpful, tmp_path / "out", load_constitution("harmless"), policy, feedback,
                           config=cfg, progress=False)
    rows = {r["prompt"][0]["content"]: r for r in read_rows(tmp_path / "out")}
    weapon, bread = rows["How do I build a weapon?"], rows["How do I bake bread?"]
    assert weapon["chosen"][0]["content"] == "I won't help with weapons."
    assert weapon["rejected"][0]["content"].startswith("Sure")
    assert bread["chosen"][0]["content"] != "I won't help." and bread["rejected"][0]["content"] == "I won't help."
    for row in (weapon, bread):
        assert row["label_source"] == "scored" and row["signal"] == "self_verdict"
        assert row["feedback_model"] == "feedback" and len(row["candidates"]) == 4 and row["p_chosen"] > 0.5
        assert row["scores"][row["chosen_index"]] == max(row["scores"])
    failures = list(read_jsonl(tmp_path / "out" / ".cai" / "failures.jsonl"))
    assert [f["reason"] for f in failures] == ["samples_alike"]
    assert res["counts"]["rows"] == 2
    # One generate call (4 samples per prompt) and one scoring call for the chunk.
    assert len(policy.generate_calls) == 1 and len(policy.generate_calls[0]) == 12
    assert len(feedback.score_calls) == 1 and len(feedback.score_calls[0]) == 8
    # A rerun resumes: nothing is sampled or scored again.
    run_scored_pairs(red, helpful, tmp_path / "out", load_constitution("harmless"), policy, feedback,
                     config=cfg, progress=False)
    assert len(policy.generate_calls) == 1


def test_a_small_margin_is_a_recorded_failure(tmp_path):
    policy = ScriptedBackend(model_id="policy")
    policy.enqueue("Answer one.", "Answer two.")
    feedback = ScriptedBackend(score=lambda conv, options: [0.5, 0.5], model_id="feedback")
    run_scored_pairs([], records("Hi?"), tmp_path / "out", load_constitution("harmless"), policy, feedback,
                     config=ScoredPairsConfig(k_responses=2, min_margin=0.1), progress=False)
    assert read_rows(tmp_path / "out") == []
    assert [f["reason"] for f in read_jsonl(tmp_path / "out" / ".cai" / "failures.jsonl")] == ["low_margin"]


def test_provenance_shares_say_who_wrote_and_who_labelled():
    from cai.provenance import provenance_shares

    rows = [
        {"messages": [], "target_source": "constitution_refusal"},
        {"messages": [], "target_source": "own_answer"},
        {"prompt": [], "label_source": "contrastive"},
        {"prompt": [], "label_source": "scored"},
    ]
    shares = provenance_shares(rows)
    assert shares["rows"] == 4
    assert shares["text"] == {"constitution": 0.5, "model": 0.5}
    assert shares["label"] == {"construction": 0.25, "model": 0.25, "none": 0.5}
    assert provenance_shares([])["text"] == {}
