"""The vLLM backend.

The tests on real vLLM (a tiny locally built model; needs a GPU) skip when vLLM
is absent: the only skip in the suite (`pip install 'cai[vllm]'` runs them).
The first test always runs: it drives VLLMBackend through a stand-in for
``vllm.LLM`` whose outputs have vLLM's documented shape but come from the tiny
transformers model, so our prompt-logprob indexing is checked against the
transformers backend's scores. It checks our glue, not vLLM itself.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from cai.backends import make_backend
from cai.backends.base import SamplingParams
from cai.backends.transformers import TransformersBackend
from cai.backends.vllm import VLLMBackend
from cai.errors import UserInputError


@dataclass
class StandInSamplingParams:  # the fields of vllm.SamplingParams that VLLMBackend sets
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    prompt_logprobs: int | None = None


class StandInLLM:
    """``generate(prompts, params, use_tqdm)`` like vllm.LLM, computed with a transformers backend."""

    def __init__(self, ref: TransformersBackend) -> None:
        self.ref = ref
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=512))

    def generate(self, prompts, sampling_params, use_tqdm=True):
        import torch

        per = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        outs = []
        for prompt, sp in zip(prompts, per):
            ids = prompt["prompt_token_ids"]
            with torch.inference_mode():
                logits = self.ref.model(input_ids=torch.tensor([ids])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            plp = None
            if sp.prompt_logprobs is not None:  # position 0 is None; j holds {token_id: Logprob} for ids[j]
                plp = [None] + [{ids[j]: SimpleNamespace(logprob=logp[j - 1, ids[j]].item())} for j in range(1, len(ids))]
            new = self.ref.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=sp.max_tokens,
                                          do_sample=False, eos_token_id=self.ref.tokenizer.eos_token_id)[0, len(ids):]
            toks = new.tolist()
            stop = self.ref.tokenizer.eos_token_id in toks
            toks = toks[: toks.index(self.ref.tokenizer.eos_token_id)] if stop else toks
            outs.append(SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=plp, outputs=[SimpleNamespace(
                text=self.ref.tokenizer.decode(toks, skip_special_tokens=True), token_ids=toks,
                finish_reason="stop" if stop else "length")]))
        return outs


def test_glue_against_transformers_scores(monkeypatch, tiny_model_dir, tiny_backend):
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=StandInSamplingParams, __version__="stand-in"))
    backend = VLLMBackend(str(tiny_model_dir), llm=StandInLLM(tiny_backend), progress=False)
    assert backend.context_window == 512
    convs = [[{"role": "user", "content": "word " * (i + 1)}] for i in range(3)] + [
        [{"role": "user", "content": "Pick one."}, {"role": "assistant", "content": "The answer is ("}]]
    for options in (["A", "B"], ["yes", "no", "maybe not at all"]):  # single- and multi-token options
        got = backend.choice_logprobs(convs, options)
        want = tiny_backend.choice_logprobs(convs, options)
        for g, w in zip(got, want):
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
    gens = backend.generate(convs, SamplingParams(max_new_tokens=3, temperature=0))
    assert [g.prompt_tokens for g in gens] == [tiny_backend.count_tokens(c) for c in convs]
    assert [g.text for g in gens] == [g.text for g in tiny_backend.generate(convs, SamplingParams(max_new_tokens=3, temperature=0))]
    with pytest.raises(UserInputError, match="tokenize identically"):
        backend.check_options(["A", "A"])


# --- real vLLM ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_vllm():
    return pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'cai[vllm]' on a GPU machine)")


@pytest.fixture(scope="module")
def vllm_model_dir(real_vllm, tmp_path_factory, embedded_dir):
    """A tiny random Llama whose head size (64) vLLM's attention kernels accept."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, torch_dtype="float32",
    )
    out = tmp_path_factory.mktemp("vllm-tiny")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def backends(vllm_model_dir):
    fast = make_backend(str(vllm_model_dir), kind="vllm", dtype="float32", gpu_memory_utilization=0.3,
                        max_model_len=512, enforce_eager=True, progress=False, batch_size=8, device="auto")
    ref = TransformersBackend(str(vllm_model_dir), batch_size=8, device="cpu", dtype="float32", progress=False)
    return fast, ref


CONVS = [[{"role": "user", "content": "word " * (i + 1)}] for i in range(5)] + [
    [{"role": "user", "content": "Pick one."}, {"role": "assistant", "content": "The answer is ("}]
]


def test_generate_in_order_like_transformers(backends):
    fast, ref = backends
    assert isinstance(fast, VLLMBackend) and fast.describe()["tensor_parallel_size"] == 1
    params = SamplingParams(max_new_tokens=6, temperature=0)
    gens = fast.generate(CONVS, params)
    assert [g.prompt_tokens for g in gens] == [ref.count_tokens(c) for c in CONVS]
    assert all(g.finish_reason in {"stop", "length"} and g.completion_tokens <= 6 for g in gens)
    expected = ref.generate(CONVS, params)
    # fp32 on both sides: greedy text should agree on most rows (kernels differ, near-ties may flip).
    agree = sum(a.text == b.text for a, b in zip(gens, expected))
    assert agree >= len(CONVS) - 1, [(a.text, b.text) for a, b in zip(gens, expected)]
    sampled = fast.generate(CONVS[:2], SamplingParams(max_new_tokens=4, temperature=1.0, seed=3))
    again = fast.generate(CONVS[:2], SamplingParams(max_new_tokens=4, temperature=1.0, seed=3))
    assert [g.text for g in sampled] == [g.text for g in again]  # per-row seeds are reproducible


def test_choice_logprobs_match_transformers(backends):
    fast, ref = backends
    for options in (["A", "B"], ["yes", "no", "maybe"]):
        got = fast.choice_logprobs(CONVS, options)
        want = ref.choice_logprobs(CONVS, options)
        for g, w in zip(got, want):
            assert math.isclose(sum(math.exp(x) for x in g.logprobs), 1.0, rel_tol=1e-6)
            assert g.logprobs == pytest.approx(w.logprobs, abs=2e-2)
    with pytest.raises(UserInputError):
        fast.choice_logprobs(CONVS[:1], ["A", "A"])
