"""The transformers backend on a tiny random Llama, and the responses stage through it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cai.backends.base import Backend, SamplingParams
from cai.cli.main import cli
from cai.data import load_prompts, read_meta, read_rows
from cai.errors import UserInputError
from cai.stages.responses import generate_responses
from cai.templates import PromptTemplates

CONVS = [
    [{"role": "user", "content": "short"}],
    [{"role": "user", "content": "a much longer prompt with many more words in it than the first"}],
    [{"role": "user", "content": "medium length prompt here"}],
]


def test_backend_satisfies_protocol(tiny_backend):
    assert isinstance(tiny_backend, Backend)


def test_generate_batched_matches_one_at_a_time_greedy(tiny_backend):
    params = SamplingParams(max_new_tokens=6, temperature=0)
    together = tiny_backend.generate(CONVS, params)
    alone = [tiny_backend.generate([c], params)[0] for c in CONVS]
    # Left padding + sorting must not change greedy outputs or their order.
    assert [g.text for g in together] == [g.text for g in alone]
    assert all(g.completion_tokens <= 6 and g.prompt_tokens > 0 for g in together)
    assert together[1].prompt_tokens > together[0].prompt_tokens


def test_generate_seeded_sampling_is_reproducible(tiny_backend):
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=3)
    assert [g.text for g in tiny_backend.generate(CONVS, params)] == [g.text for g in tiny_backend.generate(CONVS, params)]


def test_choice_logprobs_normalised_and_path_independent(tiny_backend):
    import math

    conv = [{"role": "user", "content": "Pick (A) or (B)."}, {"role": "assistant", "content": "The answer is ("}]
    scores = tiny_backend.choice_logprobs([conv, CONVS[0]], ["A", "B"])
    for s in scores:
        assert abs(sum(math.exp(x) for x in s.logprobs) - 1) < 1e-5
    # Multi-token options go through the general path; it must agree with a direct computation.
    multi = tiny_backend.choice_logprobs([conv], ["A) yes", "B) no"])[0]
    assert abs(sum(math.exp(x) for x in multi.logprobs) - 1) < 1e-5
    raw = multi.extra["raw_logprobs"]
    assert raw[0] != raw[1]


def test_choice_fast_path_matches_general_path(tiny_backend):
    """One forward pass (single next token) gives the same numbers as scoring full sequences."""
    import torch

    conv = [{"role": "user", "content": "Which?"}, {"role": "assistant", "content": "Answer: ("}]
    fast = tiny_backend.choice_logprobs([conv], ["A", "B"])[0].extra["raw_logprobs"]
    text = tiny_backend.render(conv)
    ids = tiny_backend._encode(text)
    from cai.backends.precision import precise_logits

    # the logits scoring reads: fp32 ones even where the model runs in bf16 (backends/precision.py)
    with torch.inference_mode(), precise_logits(tiny_backend.model):
        logp = torch.log_softmax(tiny_backend.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    for opt, got in zip(["A", "B"], fast):
        tok = tiny_backend._encode(text + opt)[len(ids):]
        assert len(tok) == 1
        assert abs(logp[tok[0]].item() - got) < 1e-4


def test_check_options_errors(tiny_backend):
    with pytest.raises(UserInputError, match="at least two"):
        tiny_backend.check_options(["A"])
    with pytest.raises(UserInputError, match="empty"):
        tiny_backend.check_options(["A", ""])
    with pytest.raises(UserInputError, match="identically"):
        tiny_backend.check_options(["A", "A"])


def test_long_prompt_is_truncated_and_flagged(tiny_backend):
    long = [{"role": "user", "content": "word " * 2000}]
    g = tiny_backend.generate([long], SamplingParams(max_new_tokens=3, temperature=0))[0]
    assert g.truncated and g.prompt_tokens <= tiny_backend.context_window


def test_responses_stage_with_scripted_backend(tiny_constitution_path):
    from fakes import ScriptedBackend

    from cai.constitution import load_constitution
    from cai.data import PromptRecord

    b = ScriptedBackend(respond=lambda conv: "" if "empty" in conv[-1]["content"] else "fine")
    recs = [PromptRecord(messages=[{"role": "user", "content": t}]) for t in ["one", "two", "make empty"]]
    c = load_constitution(tiny_constitution_path)
    out = generate_responses(recs, b, PromptTemplates(), params=SamplingParams(), constitution=c)
    assert len(b.generate_calls) == 1 and len(b.generate_calls[0]) == 3  # one batched call
    assert b.generate_calls[0][0][0] == {"role": "system", "content": "You are a careful assistant."}
    assert [r["response"] for r in out.rows] == ["fine", "fine"]
    assert out.failures[0]["reason"] == "empty" and out.failures[0]["prompt"] == "make empty"
    assert out.rows[0]["messages"][-1] == {"role": "assistant", "content": "fine"}


def test_cli_generate_responses_writes_and_resumes(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\n")
    out = tmp_path / "out"
    args = ["generate", "responses", "--prompts", str(prompts), "--model", str(tiny_model_dir),
            "--max-new-tokens", "4", "--out", str(out), "--chunk-size", "2"]
    r = CliRunner().invoke(cli, args + ["--limit", "2"])
    assert r.exit_code == 0, r.output
    assert len(read_rows(out)) == 2
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    rows = read_rows(out)
    assert len(rows) == 3 and len({x["id"] for x in rows}) == 3
    meta = read_meta(out)
    assert meta["kind"] == "responses" and meta["summary"]["skipped_already_done"] == 2
    assert meta["fingerprint"]["templates"]["initial_response.jinja"]
    # A different sampling setup into the same directory is refused, not mixed in.
    r = CliRunner().invoke(cli, args + ["--temperature", "0.1"])
    assert r.exit_code == 2 and "other settings" in r.output
    # The same settings from --config FILE.yaml (the loader every generate command uses) resume;
    # a flag overrides the file, and a misspelt key is refused with its line.
    cfg = tmp_path / "responses.yaml"
    cfg.write_text("max_new_tokens: 4\ntemperature: 0.1\n", encoding="utf-8")
    base = [a for a in args if a not in ("--max-new-tokens", "4")]
    r = CliRunner().invoke(cli, base + ["--config", str(cfg), "--temperature", "0.7"])
    assert r.exit_code == 0 and read_meta(out)["summary"]["skipped_already_done"] == 3, r.output
    cfg.write_text("max_new_tokens: 4\ntop-p: 0.5\n", encoding="utf-8")
    r = CliRunner().invoke(cli, base + ["--config", str(cfg)])
    assert r.exit_code == 2 and "responses.yaml:2" in r.output and "top-p" in r.output, r.output


def test_cli_unknown_model_is_one_line_exit_2(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\n")
    r = CliRunner().invoke(cli, ["generate", "responses", "--prompts", str(prompts), "--model", "./nope",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "model './nope'" in r.output and "Traceback" not in r.output


def test_choice_scores_do_not_depend_on_batch_padding(tiny_backend_fp32):
    """A conversation scores the same alone and padded next to a much longer one.

    In fp32: exact equality is the point; bf16 rounds the padded batch's activations
    differently at the 1e-4 level (tests/test_bf16.py checks bf16 against fp32).
    """
    tiny_backend = tiny_backend_fp32
    short = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "("}]
    long = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "("}]
    for options in (["A", "B"], ["A) yes", "B) no"]):
        alone = tiny_backend.choice_logprobs([short], options)[0].extra["raw_logprobs"]
        padded = tiny_backend.choice_logprobs([long, short], options)[1].extra["raw_logprobs"]
        assert alone == pytest.approx(padded, abs=1e-4)


def test_growing_kv_layer_matches_dynamic_layer():
    """Appending in place (our decode loop) must hold exactly what torch.cat would, also after pruning rows."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from cai.backends.kv_cache import GrowingLayer

    torch.manual_seed(0)
    ref, ours = DynamicLayer(), GrowingLayer()
    batch = 5
    for step, n in enumerate([7, 1, 1, 60, 1, 1]):  # a prefill, then tokens; 60 forces a buffer regrow
        k, v = torch.randn(batch, 2, n, 4), torch.randn(batch, 2, n, 4)
        rk, rv = ref.update(k, v)
        ok, ov = ours.update(k, v)
        assert torch.equal(rk, ok) and torch.equal(rv, ov)
        assert ours.get_seq_length() == ref.get_seq_length()
        if step == 2:
            keep = torch.tensor([0, 2, 4])
            ref.batch_select_indices(keep)
            ours.batch_select_indices(keep)
            batch = 3


def test_sampler_matches_the_distribution_and_respects_top_p():
    import torch

    from cai.backends.transformers import sample_next

    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    logits = probs.log().repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(sample_next(logits, 1.0, 1.0, g), minlength=4).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015)
    # top_p=0.8: tokens 0 and 1 (mass before token 1 is 0.6 < 0.8), renormalised to 0.6/0.85 and 0.25/0.85
    freq = torch.bincount(sample_next(logits, 1.0, 0.8, g), minlength=4).float() / 20000
    assert freq[2] == 0 and freq[3] == 0
    assert abs(freq[0].item() - 0.6 / 0.85) < 0.015
    # temperature sharpens: at 0.25 the top token dominates
    assert (sample_next(logits[:2000], 0.25, 1.0, g) == 0).float().mean() > 0.95


def test_sampling_weights_hold_no_subnormal_floats():
    """Subnormals are ~100x slower on x86; the weights of hopeless tokens are exact zeros instead."""
    import torch

    from cai.backends.sampling import sampling_weights

    logits = torch.linspace(-120.0, 0.0, 49152).repeat(4, 1)
    logits[:, 7] = float("-inf")
    ref = torch.softmax(logits / 0.7, dim=-1)
    tiny = torch.finfo(torch.float32).tiny
    assert ((ref > 0) & (ref < tiny)).any()  # softmax itself makes subnormals here
    w = sampling_weights(logits, 0.7)
    assert not ((w > 0) & (w < tiny)).any()
    assert w[:, 7].eq(0).all()  # -inf stays impossible
    p = w / w.sum(-1, keepdim=True)
    assert torch.allclose(p, ref, atol=1e-12, rtol=1e-5)


def test_sampler_across_vocabulary_blocks_hits_the_right_tokens_at_the_right_rates():
    """The two-level sampler: mass spread over several 256-wide blocks and a ragged last block."""
    import torch

    from cai.backends.transformers import sample_next

    vocab = 700  # two full blocks and a partial third
    probs = torch.zeros(vocab)
    picks = {3: 0.3, 255: 0.1, 256: 0.2, 511: 0.15, 512: 0.05, 699: 0.2}
    for tok, p in picks.items():
        probs[tok] = p
    logits = probs.log().repeat(40000, 1)  # zero mass -> -inf logits
    g = torch.Generator().manual_seed(1)
    drawn = sample_next(logits, 1.0, 1.0, g)
    freq = torch.bincount(drawn, minlength=vocab).float() / len(drawn)
    assert set(drawn.unique().tolist()) <= set(picks)
    for tok, p in picks.items():
        assert abs(freq[tok].item() - p) < 0.01, (tok, freq[tok].item(), p)


def test_growing_layer_sized_to_the_expected_length_never_reallocates():
    import torch

    from cai.backends.kv_cache import GrowingLayer

    layer = GrowingLayer(expect=50)
    k = torch.randn(2, 3, 10, 4)
    layer.update(k, k.clone())
    storage = layer._k.data_ptr()
    assert layer._k.shape[-2] == 50
    for _ in range(40):
        step = torch.randn(2, 3, 1, 4)
        keys, _ = layer.update(step, step.clone())
    assert layer._k.data_ptr() == storage and keys.shape[-2] == 50
    assert torch.equal(keys[:, :, :10], k) and torch.equal(keys[:, :, -1:], step)
    layer.update(step, step.clone())  # past the expected length: the buffer grows
    assert layer._k.shape[-2] >= 51 and layer.get_seq_length() == 51


def test_top_p_beyond_the_candidates_falls_back_to_the_full_sort():
    """A flat row's nucleus is wider than the 128 candidates: it must still be the whole nucleus."""
    import torch

    from cai.backends.sampling import _NUCLEUS_CANDIDATES
    from cai.backends.transformers import sample_next

    vocab = 1000
    flat = torch.zeros(vocab)
    peaked = torch.full((vocab,), -30.0)
    peaked[[5, 900]] = torch.tensor([0.0, -0.4]).float()  # mass 0.6 / 0.4
    logits = torch.stack([flat, peaked]).repeat(20000, 1)
    g = torch.Generator().manual_seed(2)
    drawn = sample_next(logits, 1.0, 0.5, g).view(20000, 2)
    flat_draws, peaked_draws = drawn[:, 0], drawn[:, 1]
    # flat: the nucleus is 500 tokens (ties in any order), far more than the candidates
    assert flat_draws.unique().numel() > 3 * _NUCLEUS_CANDIDATES
    assert (torch.bincount(flat_draws, minlength=vocab) > 0).sum() <= 501
    # peaked: top_p 0.5 keeps only the top token (mass before it is 0, before the next 0.6 > 0.5)
    assert peaked_draws.eq(5).all()
    drawn = sample_next(logits[1::2], 1.0, 0.7, g)  # 0.6 < 0.7: both tokens, at 0.6 : 0.4
    assert set(drawn.unique().tolist()) == {5, 900}
    assert abs(drawn.eq(5).float().mean().item() - 0.6) < 0.015


def test_an_unknown_backend_kind_names_the_known_ones():
    from cai.backends import make_backend
    from cai.errors import UserInputError

    with pytest.raises(UserInputError, match=r"backend 'nope' unknown; use one of: openai, ray, transformers, vllm"):
        make_backend("smollm2-135m", kind="nope")
