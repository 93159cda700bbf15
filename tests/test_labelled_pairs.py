"""The labelled pair set: loading with clear errors, the shipped set's shape, and per-direction agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.errors import DataError
from cai.evaluation.labeller import PairScore, agreement, candidate_scores, judge_scores, pointwise_pair_scores
from cai.labelled_pairs import DIRECTIONS, load_labelled_pairs

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "labelled_pairs.jsonl"


def write(tmp_path: Path, *rows: dict) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def pair(i: int, direction: str = "refusal", **kw) -> dict:
    return {"id": f"p{i}", "direction": direction, "prompt": f"q{i}", "better": f"good {i}", "worse": f"bad {i}", **kw}


@pytest.mark.parametrize("row, message", [
    ({**pair(1), "direction": "sideways"}, "pairs.jsonl:2: field 'direction' must be one of refusal, answer, quality"),
    ({**pair(1), "better": ""}, "pairs.jsonl:2: field 'better' must be a non-empty string"),
    ({**pair(1), "worse": "good 1"}, "pairs.jsonl:2: 'better' and 'worse' are the same text"),
    ({**pair(0)}, "pairs.jsonl:2: id 'p0' is also used at"),
])
def test_bad_lines_name_the_file_line_and_fix(tmp_path, row, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_labelled_pairs(write(tmp_path, pair(0), row))


def test_shipped_pair_set_has_every_direction_in_strength():
    pairs = load_labelled_pairs(SHIPPED)
    counts = {d: sum(p.direction == d for p in pairs) for d in DIRECTIONS}
    assert all(n >= 80 for n in counts.values()), counts
    assert len(pairs) >= 240
    # Length must not give the label away: in every direction the better side is the longer one
    # in some pairs and the shorter one in others.
    for d in DIRECTIONS:
        longer = [len(p.better) > len(p.worse) for p in pairs if p.direction == d]
        assert 0.2 <= sum(longer) / len(longer) <= 0.8, (d, sum(longer), len(longer))


def test_agreement_is_per_direction_with_intervals_and_consistency():
    pairs = load_labelled_pairs(SHIPPED)
    # A "labeller" that prefers whichever side is a refusal: perfect on refusal pairs, wrong on answer pairs.
    scores = [PairScore(1.0 if p.direction == "refusal" else 0.0 if p.direction == "answer" else 0.5,
                        position_consistent=p.direction != "quality") for p in pairs]
    fig = agreement(pairs, scores)
    assert fig["directions"]["refusal"]["rate"] == 1.0 and fig["directions"]["answer"]["rate"] == 0.0
    assert fig["directions"]["quality"]["rate"] == 0.0  # a tie is not agreement
    assert fig["min_direction_rate"] == 0.0
    lo, hi = fig["directions"]["refusal"]["low"], fig["directions"]["refusal"]["high"]
    assert 0.9 < lo < 1.0 and hi == 1.0
    n_quality = sum(p.direction == "quality" for p in pairs)
    assert fig["position_consistency"] == round(1 - n_quality / len(pairs), 4)


class _Scored:
    """A backend that scores responses by a rule: raw log-prob = -(number of 'bad' words); Yes/No alike."""

    model_id = "rule"

    def __init__(self) -> None:
        self.calls = 0

    def choice_logprobs(self, conversations, options):
        from cai.backends.base import normalise_choices

        self.calls += 1
        out = []
        for conv in conversations:
            if options == [" Yes", " No"]:
                bad = "bad" in conv[0]["content"].split("Response:")[1]
                out.append(normalise_choices([-2.0, -0.1] if bad else [-0.1, -2.0]))
            else:
                out.append(normalise_choices([-float(o.count("bad")) - 0.5 for o in options]))
        return out

    def count_tokens(self, conversation):
        return sum(len(m["content"].split()) for m in conversation)


def test_pointwise_signals_read_each_response_alone():
    pairs = load_labelled_pairs(SHIPPED)[:5]
    backend = _Scored()
    rows = [p.__class__(**{**p.__dict__, "better": "fine answer", "worse": "bad bad answer"}) for p in pairs]
    for signal in ("loglik", "loglik_mean", "opening"):
        scores = pointwise_pair_scores(signal, backend, rows)
        assert all(s.p_better > 0.5 and s.position_consistent is None for s in scores), signal
    # Against itself as the reference the implicit reward is 0: a tie, not agreement.
    assert all(s.p_better == 0.5 for s in pointwise_pair_scores("implicit", backend, rows, reference=backend))
    backend.calls = 0
    verdicts = pointwise_pair_scores("self_verdict", backend, rows)
    assert backend.calls == 1 and all(s.p_better > 0.5 for s in verdicts)  # one batched call for all responses


def test_candidate_scores_rank_several_responses_and_score_repeats_once():
    backend = _Scored()
    conv = [{"role": "user", "content": "q"}]
    scores = candidate_scores("loglik", backend, [(conv, ["ok", "bad", "ok", "bad bad"])])
    assert scores == [[-0.5, -1.5, -0.5, -2.5]] and backend.calls == 1
    (a, b), = candidate_scores("opening", backend, [(conv, ["same words here and more", "same words here and less"])])
    assert a == b  # the same first four words: the same score, a tie


def test_batched_response_logprobs_match_choice_scoring(tiny_backend_fp32):
    """The transformers backend's batched scorer gives what choice_logprobs gives, text by text."""
    from cai.evaluation.labeller import likelihoods

    conv = [{"role": "user", "content": "Say hi."}]
    texts = ["Hello there.", "Go away now, please, I am busy today.", "x"]
    raw = tiny_backend_fp32.choice_logprobs([conv], texts)[0].extra["raw_logprobs"]
    assert tiny_backend_fp32.response_logprobs([(conv, t) for t in texts]) == pytest.approx(raw, abs=1e-4)
    other = [{"role": "user", "content": "Something else entirely, longer than the first prompt."}]
    mixed = likelihoods(tiny_backend_fp32, [(conv, texts[0]), (other, texts[1]), (conv, texts[1]), (conv, "")])
    assert mixed[0] == pytest.approx(raw[0], abs=1e-4) and mixed[2] == pytest.approx(raw[1], abs=1e-4)
    assert mixed[3] == 0.0
    alone = tiny_backend_fp32.choice_logprobs([other], [texts[1], "y"])[0].extra["raw_logprobs"][0]
    assert mixed[1] == pytest.approx(alone, abs=1e-4)


def test_judge_scores_show_the_better_response_as_a():
    class Judge:
        def compare(self, prompts, a, b):
            from types import SimpleNamespace

            self.seen = (prompts, a, b)
            return [SimpleNamespace(p_a=0.7, position_consistent=True) for _ in a]

    pairs = load_labelled_pairs(SHIPPED)[:3]
    j = Judge()
    scores = judge_scores(j, pairs)
    assert j.seen[1] == [p.better for p in pairs] and j.seen[2] == [p.worse for p in pairs]
    assert [s.p_better for s in scores] == [0.7] * 3


def test_pmi_implicit_is_the_sum_of_its_parts():
    backend, reference = _Scored(), _Scored()
    conv = [{"role": "user", "content": "q"}]
    items = [(conv, ["fine answer here now", "bad bad answer here"])]
    parts = [candidate_scores(s, backend, items, reference=reference) for s in ("pmi", "implicit_opening")]
    both = candidate_scores("pmi_implicit", backend, items, reference=reference)
    assert both == [[parts[0][0][i] + parts[1][0][i] for i in range(2)]]


def _run_config(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(f"prompts: {{red_team: {ROOT}/examples/prompts/red_team.jsonl, "
                 f"helpful: {ROOT}/examples/prompts/helpful.jsonl}}\n" + extra)
    return p


@pytest.mark.parametrize("extra, message", [
    ("pipeline: [distill, sft, eval]\nstages: {eval: {labeller_signals: [judge, vibes]}}\n",
     "unknown signal 'vibes'; known: judge"),
    ("pipeline: [distill, sft, eval]\npipeline_from: {1: [eval]}\n",
     "pipeline_from: round 1: a later pipeline starts at round 2"),
    ("pipeline: [distill, sft, eval]\npipeline_from: {2: [dpo, nope]}\n", "unknown stage 'nope'"),
    ("pipeline: [distill, sft, eval]\nstages_from: {1: {sft: {decision_tokens: 1}}}\n",
     "stages_from: round 1: later settings start at round 2"),
    ("pipeline: [distill, sft, eval]\nstages_from: {2: {dpo: {if_untrusted: skip}}}\n",
     "stages_from.2.dpo: no stage of this run has that section; use one of: distill, sft, eval"),
    ("pipeline: [distill, sft, eval]\nstages_from: {2: {sft: {decision_tokens: -1}}}\n",
     "stages_from.2.sft.decision_tokens: Input should be greater than or equal to 0"),
])
def test_bad_run_settings_for_own_feedback_are_one_line_errors(tmp_path, extra, message):
    from click.testing import CliRunner

    from cai.cli.main import cli

    r = CliRunner().invoke(cli, ["run", str(_run_config(tmp_path, extra)), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output


def test_a_broken_pair_file_in_a_run_config_names_the_field_and_the_line(tmp_path):
    from click.testing import CliRunner

    from cai.cli.main import cli

    bad = write(tmp_path, pair(0), {**pair(1), "direction": "up"})
    cfg = _run_config(tmp_path, "pipeline: [distill, sft, eval]\n")
    cfg.write_text(cfg.read_text().replace("helpful.jsonl}", f"helpful.jsonl, labelled_pairs: {bad}}}"))
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "prompts.labelled_pairs:" in r.output and "pairs.jsonl:2: field 'direction'" in r.output


def test_likelihood_signals_refuse_a_backend_without_raw_log_probs():
    from cai.errors import UserInputError
    from tests.fakes import ScriptedBackend

    class NoRaw(ScriptedBackend):
        def choice_logprobs(self, conversations, options):
            scores = super().choice_logprobs(conversations, options)
            for s in scores:
                s.extra.pop("raw_logprobs", None)
            return scores

    with pytest.raises(UserInputError, match="does not return raw log-probs; likelihood signals need"):
        pointwise_pair_scores("loglik", NoRaw(), load_labelled_pairs(SHIPPED)[:2])
