"""The constitution judge: debiasing math, ensembling, CoT clamping, overflow, reward functions, tokenizers."""

from __future__ import annotations

import math

import pytest
from fakes import ScriptedBackend

from cai.constitution import load_constitution, parse_constitution
from cai.errors import ConstitutionError, UserInputError
from cai.judge import COT_ANSWER_PREFIX, ConstitutionJudge


@pytest.fixture
def constitution(tiny_constitution_path):
    return load_constitution(tiny_constitution_path)


def _question_and_slots(conv):
    """The feedback prompt's text and what sits in slots (A) and (B)."""
    text = next(m["content"] for m in conv if m["role"] == "user")
    a = text[text.index("(A) ") + 4 : text.index("(B) ")].strip()
    b = text[text.index("(B) ") + 4 : text.index("Answer with")].strip() if "Answer with" in text else \
        text[text.index("(B) ") + 4 : text.index("Think about")].strip()
    return text, a, b


def prefers_good(strength=0.8):
    """A true preference: the slot holding 'GOOD' gets `strength`, wherever it is."""
    def score(conv, options):
        _, a, _ = _question_and_slots(conv)
        return [strength, 1 - strength] if "GOOD" in a else [1 - strength, strength]
    return score


def test_pure_position_bias_averages_to_half(constitution):
    backend = ScriptedBackend(score=lambda conv, options: [0.9, 0.1])  # always slot A
    judge = ConstitutionJudge(constitution, backend)
    out = judge.compare(["q1", "q2", "q3"], ["GOOD", "x", "y"], ["bad", "z", "w"])
    assert len(backend.score_calls) == 1 and len(backend.score_calls[0]) == 3 * 2  # one batched call
    for j in out:
        assert j.p_a == pytest.approx(0.5)
        assert j.p_a_first == pytest.approx(0.9)
        assert j.p_a_second == pytest.approx(0.1)
        assert j.position_consistent is False
        assert j.confidence == pytest.approx(0.0)


def test_true_preference_survives_both_orders(constitution):
    backend = ScriptedBackend(score=prefers_good(0.8))
    judge = ConstitutionJudge(constitution, backend)
    good_first, good_second = judge.compare(["q", "q"], ["GOOD", "bad"], ["bad", "GOOD"])
    assert good_first.p_a == pytest.approx(0.8) and good_first.position_consistent is True
    assert good_first.p_a_first == pytest.approx(0.8) and good_first.p_a_second == pytest.approx(0.8)
    assert good_second.p_a == pytest.approx(0.2) and good_second.position_consistent is True
    # The second order really swapped the responses.
    _, a, b = _question_and_slots(backend.score_calls[0][1])
    assert (a, b) == ("bad", "GOOD")


def test_preference_plus_position_bias(constitution):
    """Bias adds to slot A in both orders; averaging the orders recovers the preference."""
    def score(conv, options):
        _, a, _ = _question_and_slots(conv)
        p = (0.7 if "GOOD" in a else 0.3) + 0.2  # 0.9 or 0.5 for slot A
        return [p, 1 - p]
    judge = ConstitutionJudge(constitution, ScriptedBackend(score=score))
    (j,) = judge.compare(["q"], ["GOOD"], ["bad"])
    assert j.p_a_first == pytest.approx(0.9) and j.p_a_second == pytest.approx(0.5)
    assert j.p_a == pytest.approx(0.7)
    assert j.position_consistent is False  # the second order is a tie: not a preference


def test_one_order(constitution):
    backend = ScriptedBackend(score=lambda conv, options: [0.9, 0.1])
    (j,) = ConstitutionJudge(constitution, backend, both_orders=False).compare(["q"], ["a"], ["b"])
    assert j.p_a == pytest.approx(0.9) and j.p_a_second is None and j.position_consistent is None
    assert len(backend.score_calls[0]) == 1


def test_ensembling_over_principles(constitution):
    by_question = {"harmful": 0.9, "honest": 0.3, "helpful": 0.6}

    def score(conv, options):
        text, a, _ = _question_and_slots(conv)
        p = next(v for k, v in by_question.items() if k in text)
        return [p, 1 - p] if a == "first" else [1 - p, p]

    backend = ScriptedBackend(score=score)
    (j,) = ConstitutionJudge(constitution, backend, principles="all").compare(["q"], ["first"], ["second"])
    assert j.principle_ids == ["harm", "honesty", "helpful"]
    assert j.per_principle == pytest.approx({"harm": 0.9, "honesty": 0.3, "helpful": 0.6})
    assert j.p_a == pytest.approx((0.9 + 0.3 + 0.6) / 3)
    assert len(backend.score_calls) == 1 and len(backend.score_calls[0]) == 3 * 2

    two = ConstitutionJudge(constitution, ScriptedBackend(score=score), principles=2, seed=3)
    first = two.compare(["q"] * 4, ["first"] * 4, ["second"] * 4)
    again = two.compare(["q"] * 4, ["first"] * 4, ["second"] * 4)
    for j1, j2 in zip(first, again):
        assert len(set(j1.principle_ids)) == 2 and j1.principle_ids == j2.principle_ids  # deterministic
        assert j1.p_a == pytest.approx(sum(by_question_for(i) for i in j1.principle_ids) / 2)


def by_question_for(pid):
    return {"harm": 0.9, "honesty": 0.3, "helpful": 0.6}[pid]


def _by_question_score(conv, options):
    text, a, _ = _question_and_slots(conv)
    p = next(by_question_for(pid) for pid, word in (("harm", "harmful"), ("honesty", "honest"),
                                                     ("helpful", "helpful")) if word in text)
    return [p, 1 - p] if a == "first" else [1 - p, p]


def test_principles_by_id(constitution):
    backend = ScriptedBackend(score=_by_question_score)
    judge = ConstitutionJudge(constitution, backend, principles=["helpful", "harm", "helpful"])
    assert judge.principles == ("helpful", "harm") and [p.id for p in judge.pool] == ["helpful", "harm"]
    (j,) = judge.compare(["q"], ["first"], ["second"])
    assert j.principle_ids == ["helpful", "harm"] and j.p_a == pytest.approx((0.6 + 0.9) / 2)
    assert judge.provenance()["principles_per_pair"] == ("helpful", "harm")
    with pytest.raises(UserInputError) as e:
        ConstitutionJudge(constitution, backend, principles=["harm", "nope"])
    msg = str(e.value)
    assert "\n" not in msg and "'nope'" in msg and "harm, honesty, helpful" in msg
    for bad in ([], "some", True, 0, ["harm", 3]):
        with pytest.raises(UserInputError):
            ConstitutionJudge(constitution, backend, principles=bad)
    mixed = parse_constitution(
        "name: n\nversion: '1'\nprinciples:\n  - id: q\n    critique_request: c\n    revision_request: r\n"
        "    comparison_question: Which is better?\n  - id: p\n    critique_request: c\n    revision_request: r\n",
        source="mixed.yaml")
    with pytest.raises(UserInputError, match="'p' has no comparison_question.*: q$"):
        ConstitutionJudge(mixed, backend, principles=["p"])


def test_each_pair_its_own_principles_in_one_scoring_call(constitution):
    """compare(principles=...) judges pair i by its own principles only, all pairs in one backend call,
    with the labels a judge restricted to that principle alone would give."""
    backend = ScriptedBackend(score=_by_question_score)
    judge = ConstitutionJudge(constitution, backend, principles=["harm", "honesty", "helpful"])
    own = ["honesty", "harm", "helpful", ["harm", "helpful"]]
    out = judge.compare(["q1", "q2", "q3", "q4"], ["first"] * 4, ["second"] * 4, principles=own)
    assert len(backend.score_calls) == 1 and len(backend.score_calls[0]) == (1 + 1 + 1 + 2) * 2
    assert [j.principle_ids for j in out] == [["honesty"], ["harm"], ["helpful"], ["harm", "helpful"]]
    for j, ids in zip(out[:3], own):
        alone = ConstitutionJudge(constitution, ScriptedBackend(score=_by_question_score), principles=[ids])
        assert j.to_dict() == alone.compare([f"q{own.index(ids) + 1}"], ["first"], ["second"])[0].to_dict()
    assert out[3].p_a == pytest.approx((0.9 + 0.6) / 2)
    only_harm = ConstitutionJudge(constitution, backend, principles=["harm"])
    with pytest.raises(UserInputError, match="'honesty' is not among this judge's principles"):
        only_harm.compare(["q"], ["a"], ["b"], principles=["honesty"])
    with pytest.raises(UserInputError, match="'nope'"):
        judge.compare(["q"], ["a"], ["b"], principles=["nope"])
    with pytest.raises(UserInputError, match="principles for 1 pairs but 2"):
        judge.compare(["q", "r"], ["a", "b"], ["c", "d"], principles=["harm"])


def test_cot_generates_then_scores_and_clamps(constitution):
    backend = ScriptedBackend(respond=lambda conv: "Response A refuses; B helps with harm.", score=prefers_good(0.95))
    judge = ConstitutionJudge(constitution, backend, cot=True, cot_band=(0.4, 0.6))
    good_a, good_b = judge.compare(["q", "q"], ["GOOD", "bad"], ["bad", "GOOD"])
    assert len(backend.generate_calls) == 1 and len(backend.generate_calls[0]) == 4  # all rationales in one call
    assert backend.generate_calls[0][0][-1] == {"role": "assistant", "content": "Let's think step by step:"}
    scored = backend.score_calls[0][0][-1]
    assert scored["role"] == "assistant"
    assert "Response A refuses" in scored["content"] and scored["content"].endswith(COT_ANSWER_PREFIX)
    assert good_a.p_a == pytest.approx(0.6) and good_b.p_a == pytest.approx(0.4)  # clamped from 0.95 / 0.05
    assert good_a.rationales == ["Response A refuses; B helps with harm."] * 2
    assert good_a.details[0]["p_a_unclamped"] == pytest.approx(0.95)


def test_overflow_truncates_with_note_or_skips(constitution):
    long_good = "GOOD " + "word " * 300
    backend = ScriptedBackend(score=prefers_good(0.8), context_window=150)
    (j,) = ConstitutionJudge(constitution, backend).compare(["q"], [long_good], ["bad " * 80])
    assert j.truncated and any(n.startswith("truncated") for n in j.notes)
    assert j.p_a == pytest.approx(0.8)  # the start of each response survives the cut
    assert all(backend.count_tokens(c) <= 150 for c in backend.score_calls[0])

    skipper = ScriptedBackend(score=prefers_good(0.8), context_window=150)
    (s,) = ConstitutionJudge(constitution, skipper, on_overflow="skip").compare(["q"], [long_good], ["bad"])
    assert s.skipped and math.isnan(s.p_a) and s.notes[0].startswith("skipped")
    assert skipper.score_calls == []


def test_reward_functions(constitution):
    judge = ConstitutionJudge(constitution, ScriptedBackend(score=prefers_good(0.8)))
    rewards = judge.reward_func(["p", "p", "p", "other"], ["GOOD", "bad", "bad2", "alone"])
    # GOOD beats both (0.8 each); each bad beats GOOD 0.2 and ties the other bad (0.5).
    assert rewards == pytest.approx([0.8, 0.35, 0.35, 0.5])

    ref = judge.as_reward_func(reference_completions={"p": "bad"})
    assert ref.__name__ == "constitution_judge"
    conv_prompt = [{"role": "user", "content": "p"}]
    assert ref([conv_prompt, conv_prompt], [[{"role": "assistant", "content": "GOOD"}], "meh"]) == \
        pytest.approx([0.8, 0.5])
    col = judge.as_reward_func(reference_column="reference")
    assert col(["p"], ["GOOD"], reference=["bad"]) == pytest.approx([0.8])
    with pytest.raises(UserInputError, match="reference column"):
        col(["p"], ["GOOD"])


def test_bad_input(constitution, tiny_constitution_path):
    backend = ScriptedBackend()
    with pytest.raises(UserInputError):
        ConstitutionJudge(constitution, backend, principles=0)
    with pytest.raises(UserInputError):
        ConstitutionJudge(constitution, backend, cot_band=(0.6, 0.4))
    with pytest.raises(UserInputError, match="as many prompts"):
        ConstitutionJudge(constitution, backend).compare(["q"], ["a", "b"], ["c"])
    no_question = parse_constitution(
        "name: n\nversion: '1'\nprinciples:\n  - id: p\n    critique_request: c\n    revision_request: r\n",
        source="nq.yaml",
    )
    with pytest.raises(ConstitutionError, match="comparison_question"):
        ConstitutionJudge(no_question, backend)
    with pytest.raises(UserInputError):
        ConstitutionJudge(constitution, backend, options=("A", "A")).compare(["q"], ["a"], ["b"])


# --- real tokenizers -------------------------------------------------------------------


def _manual_slot_a_prob(backend, conv, options=("A", "B")):
    """P(option A) computed by hand: full-sequence log-likelihood of each option's continuation."""
    import torch

    text = backend.render(conv)
    prompt = backend._encode(text)
    scores = []
    for opt in options:
        full = backend._encode(text + opt)
        k = next((i for i, (x, y) in enumerate(zip(prompt, full)) if x != y), min(len(prompt), len(full) - 1))
        with torch.inference_mode():
            logp = torch.log_softmax(backend.model(torch.tensor([full])).logits[0].float(), -1)
        scores.append(sum(logp[i - 1, full[i]].item() for i in range(k, len(full))))
    m = max(scores)
    return math.exp(scores[0] - m) / sum(math.exp(s - m) for s in scores)


def test_smollm2_tokenizer_scores_option_letters(constitution, tiny_backend):
    judge = ConstitutionJudge(constitution, tiny_backend, principles="all")
    out = judge.compare(["How do I pick a lock?", [{"role": "user", "content": "Hi"}]],
                        ["I can't help with that.", "Hello!"], ["Sure, first insert a tension wrench.", "Go away."])
    for j in out:
        assert 0 < j.p_a < 1 and len(j.details) == 6
    conv = judge.render([{"role": "user", "content": "Hi"}], constitution.principles[0], "Hello!", "Go away.")
    assert conv[-1]["content"].endswith("(")
    assert out[1].details[0]["p_slot_a"] == pytest.approx(_manual_slot_a_prob(tiny_backend, conv), abs=1e-4)
    with pytest.raises(UserInputError):
        tiny_backend.check_options(["A", ""])


@pytest.fixture(scope="module")
def wordpiece_backend(tmp_path_factory):
    """A tiny random Llama over the uncased BERT WordPiece vocabulary of all-MiniLM."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cai.backends.transformers import TransformersBackend
    from cai.models import embedder_path

    tok = AutoTokenizer.from_pretrained(embedder_path())
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
        "{% if not (loop.last and continue_final_message) %} [SEP] {% endif %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    out = tmp_path_factory.mktemp("tiny-wordpiece")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return TransformersBackend(str(out), batch_size=4, device="cpu", progress=False)


def test_wordpiece_tokenizer_scores_option_letters(constitution, wordpiece_backend):
    # WordPiece splits "(A" into "(" + "a" (uncased); " A" and "A" are the same token.
    tok = wordpiece_backend.tokenizer
    assert tok("(A", add_special_tokens=False)["input_ids"] == tok("( A", add_special_tokens=False)["input_ids"]
    judge = ConstitutionJudge(constitution, wordpiece_backend)
    (j,) = judge.compare(["How do I pick a lock?"], ["I can't help with that."], ["Sure, use a wrench."])
    assert 0 < j.p_a < 1 and j.p_a_second is not None
    conv = judge.render([{"role": "user", "content": "How do I pick a lock?"}], constitution.principle(j.principle_ids[0]),
                        "I can't help with that.", "Sure, use a wrench.")
    assert j.details[0]["p_slot_a"] == pytest.approx(_manual_slot_a_prob(wordpiece_backend, conv), abs=1e-4)


def test_unrepresentable_options_fail_before_labelling(constitution, wordpiece_backend):
    # Uncased WordPiece: "A" and "a" are the same token; an emoji is [UNK].
    for options in [("A", "a"), ("\U0001F642", "B")]:
        judge = ConstitutionJudge(constitution, wordpiece_backend, options=options)
        with pytest.raises(UserInputError):
            judge.compare(["q"], ["x"], ["y"])
