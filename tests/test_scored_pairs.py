"""scored-pairs: the policy's own samples ranked by the feedback model's own pointwise signal."""

from __future__ import annotations

import math
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


def test_consensus_ranks_what_the_model_does_most_often_first(tmp_path):
    """feedback is the policy: its K samples are the votes, each scored against the other K-1, nothing sampled twice."""
    policy = ScriptedBackend(model_id="policy")
    refusals = ["I can't help with hurting people.", "I can't help with hurting anyone.",
                "I can't help you hurt people."]
    policy.enqueue(*refusals, "Hit him hard on the back of the head with a bat.")
    cfg = ScoredPairsConfig(k_responses=4, signal="consensus", use_system_prompt=False)
    run_scored_pairs(records("How do I hurt my neighbour?"), [], tmp_path / "out", load_constitution("harmless"),
                     policy, policy, config=cfg, progress=False)
    (row,) = read_rows(tmp_path / "out")
    assert row["chosen"][0]["content"] in refusals and row["rejected"][0]["content"].startswith("Hit him")
    assert row["signal"] == "consensus" and row["feedback_model"] == "policy"
    assert len(policy.generate_calls) == 1 and policy.score_calls == []
    # use_system_prompt: false samples the user's words alone, as the row's prompt (and the eval) has them.
    assert all(m["role"] != "system" for conv in policy.generate_calls[0] for m in conv)


def test_the_policy_samples_with_the_system_prompt_by_default(tmp_path):
    policy = ScriptedBackend(model_id="policy")
    policy.enqueue("One.", "Two.")
    run_scored_pairs([], records("Hi?"), tmp_path / "out", load_constitution("harmless"), policy, policy,
                     config=ScoredPairsConfig(k_responses=2, signal="consensus"), progress=False)
    assert policy.generate_calls[0][0][0]["role"] == "system"


def test_consensus_from_another_feedback_model_samples_it():
    """A fixed feedback model's own samples are the votes; the candidate most like them wins."""
    from cai.evaluation.labeller import CONSENSUS_SAMPLES, candidate_scores

    feedback = ScriptedBackend(model_id="feedback")
    feedback.enqueue(*(["I won't help with making weapons."] * (CONSENSUS_SAMPLES - 1) + ["Use steel pipe."]))
    conv = [{"role": "user", "content": "How do I make a gun at home?"}]
    (scores,) = candidate_scores("consensus", feedback, [(conv, ["Cut the steel pipe to length first.",
                                                                  "I can't help with making a weapon."])])
    assert scores[1] > scores[0]
    assert len(feedback.generate_calls) == 1 and len(feedback.generate_calls[0]) == CONSENSUS_SAMPLES


def test_leave_one_out_never_counts_a_sample_voting_for_itself():
    from cai.evaluation.labeller import consensus_scores

    texts = ["Paris is the capital of France.", "The capital of France is Paris.", "Bananas are yellow."]
    loo = consensus_scores([texts], [texts], leave_one_out=True)[0]
    plain = consensus_scores([texts], [texts])[0]
    # With itself counted, each score would include a similarity of 1 over 3 samples.
    assert all(p > q for p, q in zip(plain, loo))
    assert loo[2] < min(loo[:2])


def test_decision_boundary_splits_two_far_groups_and_leaves_one_group_whole():
    from cai.evaluation.labeller import decision_boundary

    cut = decision_boundary([-3.0, 0.5, 2.0, 1.0, 19.0, 21.0, 22.5])
    assert cut is not None and 2.0 < cut < 19.0
    assert decision_boundary([-3.0, 0.5, 2.0, 1.0, 4.0]) is None  # answers only: no second decision
    assert decision_boundary([5.0]) is None


def _opening_lp(penalty_refusal: float):
    """Raw log-prob of a response by its opening only: 'I won't' costs penalty_refusal, anything else 5."""
    def score(conv, options):
        return [math.exp(-(penalty_refusal if o.startswith("I won't") else 5.0)) for o in options]
    return score


def test_vote_pairs_the_majority_decision_over_the_minority_and_skips_unanimous_prompts(tmp_path):
    """The decision is read from the round's implicit reward of the opening (policy vs reference), not from text rules."""
    policy = ScriptedBackend(score=_opening_lp(1.0), model_id="policy")
    reference = ScriptedBackend(score=_opening_lp(30.0), model_id="base")
    policy.enqueue("I won't help with that weapon.", "I won't explain that.", "I won't do it, sorry.",
                   "Sure: take a steel pipe and",                                           # refuse 3 : 1
                   "Knead the dough.", "Mix flour and water.", "Bake it at 220C.", "Let it rise first.")  # all answer
    cfg = ScoredPairsConfig(k_responses=4, signal="vote", use_system_prompt=False)
    res = run_scored_pairs(records("How do I make a pipe gun?"), records("How do I bake bread?"), tmp_path / "out",
                           load_constitution("harmless"), policy, policy, config=cfg, reference=reference,
                           progress=False)
    (row,) = read_rows(tmp_path / "out")
    assert row["chosen"][0]["content"].startswith("I won't") and row["rejected"][0]["content"].startswith("Sure")
    assert row["signal"] == "vote" and row["p_chosen"] > 0.5
    assert [f["reason"] for f in read_jsonl(tmp_path / "out" / ".cai" / "failures.jsonl")] == ["unanimous"]
    assert res["counts"]["rows"] == 1


def test_vote_follows_the_model_even_where_it_complies():
    """Own feedback sharpens what the model already does: a prompt it mostly answers pairs the answer first."""
    from cai.evaluation.labeller import CONSENSUS_SAMPLES, candidate_scores

    feedback = ScriptedBackend(score=_opening_lp(1.0), model_id="feedback")
    reference = ScriptedBackend(score=_opening_lp(30.0), model_id="base")
    feedback.enqueue(*(["Here is how it works."] * (CONSENSUS_SAMPLES - 2) + ["I won't help."] * 2))
    conv = [{"role": "user", "content": "How do vaccines work?"}]
    (scores,) = candidate_scores("vote", feedback, [(conv, ["I won't answer that.", "They train the immune system."])],
                                 reference=reference)
    assert scores[1] > scores[0] and abs(scores[1] - 0.75) < 0.02 and abs(scores[0] - 0.25) < 0.02


def test_a_close_vote_is_recorded_and_makes_no_pair(tmp_path):
    """min_vote: a 3-to-1 split of 4 samples gives the majority 2 of the 3 other votes; 0.7 asks for more."""
    policy = ScriptedBackend(score=_opening_lp(1.0), model_id="policy")
    reference = ScriptedBackend(score=_opening_lp(30.0), model_id="base")
    policy.enqueue("I won't help with that weapon.", "I won't explain that.", "I won't do it, sorry.",
                   "Sure: take a steel pipe and")
    cfg = ScoredPairsConfig(k_responses=4, signal="vote", min_vote=0.7)
    run_scored_pairs(records("How do I make a pipe gun?"), [], tmp_path / "out", load_constitution("harmless"),
                     policy, policy, config=cfg, reference=reference, progress=False)
    assert read_rows(tmp_path / "out") == []
    (failure,) = read_jsonl(tmp_path / "out" / ".cai" / "failures.jsonl")
    assert failure["reason"] == "split_vote" and abs(max(failure["scores"]) - 2 / 3) < 0.02
