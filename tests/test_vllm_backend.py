"""The vLLM backend's glue, through a stand-in for ``vllm.LLM`` (runs everywhere, no vLLM needed).

The stand-in's outputs have vLLM's documented shape but come from the tiny
transformers model, so our prompt-logprob indexing is checked against the
transformers backend's scores; the CPU settings (seeds, KV cache, engine
arguments from the environment) are checked without an engine. It checks our
glue, not vLLM itself: the real engine is tests/test_vllm_engine.py and
tests/test_vllm_cli.py, run by ``make test-vllm``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

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


def test_glue_against_transformers_scores(monkeypatch, tiny_model_dir, tiny_backend_fp32):
    # fp32 pinned: the glue must reproduce the reference's numbers exactly, and the stand-in
    # engine scores with the model's plain forward (a bf16 model's scoring reads fp32 logits)
    tiny_backend = tiny_backend_fp32
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


# --- settings, no engine --------------------------------------------------------------


class RecordingLLM:
    """Records the sampling params it is given; every row answers "ok"."""

    def __init__(self, on_cpu: bool) -> None:
        self.on_cpu = on_cpu
        self.calls = []
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=512, dtype="torch.bfloat16"))

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(sampling_params)
        return [SimpleNamespace(outputs=[SimpleNamespace(text="ok", token_ids=[1], finish_reason="stop")])
                for _ in prompts]


@pytest.fixture
def stand_in_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=StandInSamplingParams, __version__="stand-in"))
    monkeypatch.delenv("CAI_VLLM_ARGS", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)


CONV = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "there"}]]
SAMPLED = SamplingParams(max_new_tokens=2, temperature=1.0, seed=7)


def test_cpu_defaults_keep_per_row_seeds(stand_in_vllm, tiny_model_dir):
    llm = RecordingLLM(on_cpu=True)
    backend = VLLMBackend(str(tiny_model_dir), llm=llm, progress=False)
    info = backend.describe()
    assert info["device"] == "cpu" and info["dtype_used"] == "bfloat16"
    assert info["enable_chunked_prefill"] is False and info["kv_cache_memory_bytes"] == 2 * 2**30
    assert info["sampling_seed"].startswith("per row")
    backend.generate(CONV, SAMPLED)
    assert [p.seed for p in llm.calls[-1]] == [7, 8]
    backend.generate(CONV, SamplingParams(max_new_tokens=2, temperature=0, seed=7))  # greedy: no seeds needed
    assert [p.seed for p in llm.calls[-1]] == [None, None]


def test_cpu_with_chunked_prefill_falls_back_to_the_engine_seed(stand_in_vllm, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("CAI_VLLM_ARGS", '{"enable_chunked_prefill": true, "seed": 5}')
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # vLLM's own knob: the backend adds no KV size then
    llm = RecordingLLM(on_cpu=True)
    backend = VLLMBackend(str(tiny_model_dir), llm=llm, progress=False)
    info = backend.describe()
    assert "kv_cache_memory_bytes" not in info and info["seed"] == 5
    assert info["sampling_seed"].startswith("engine seed 5 only")
    backend.generate(CONV, SAMPLED)
    assert [p.seed for p in llm.calls[-1]] == [None, None]  # a seeded row would kill a chunking CPU engine


def test_gpu_keeps_vllm_defaults(stand_in_vllm, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("CAI_VLLM_ARGS", '{"tensor_parallel_size": 2}')
    backend = VLLMBackend(str(tiny_model_dir), llm=RecordingLLM(on_cpu=False), progress=False)
    info = backend.describe()
    assert info["device"] == "gpu" and info["tensor_parallel_size"] == 2
    assert "enable_chunked_prefill" not in info and "kv_cache_memory_bytes" not in info
    backend.generate(CONV, SAMPLED)
    assert [p.seed for p in backend.llm.calls[-1]] == [7, 8]


@pytest.mark.parametrize("value", ["{not json", "[1, 2]"])
def test_bad_engine_args_are_one_line_errors(stand_in_vllm, monkeypatch, tiny_model_dir, value):
    monkeypatch.setenv("CAI_VLLM_ARGS", value)
    with pytest.raises(UserInputError, match=r"\$CAI_VLLM_ARGS"):
        VLLMBackend(str(tiny_model_dir), llm=RecordingLLM(on_cpu=False), progress=False)
