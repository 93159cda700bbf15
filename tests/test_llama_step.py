"""The lean Llama decode step (backends/llama_step.py) against the model's own forward."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

PROMPTS = [
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "What is the capital of France? Answer in one word, please."}],
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "Count to five."}],
    [{"role": "user", "content": "Write a haiku about rain on a tin roof at night."}],
]
#: a system turn of its own in one row: no prefix shared by every row, so the cache holds none apart
MIXED = PROMPTS[:3] + [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to five."}]] + PROMPTS[4:]


def _two_caches(backend, seqs, room):
    """The same prefill twice: one cache for each path."""
    with torch.inference_mode():
        a = backend._prefill(seqs, room=room)
        b = backend._prefill(seqs, room=room)
    return a, b


@pytest.mark.parametrize("dtype,prompts", [("float32", "shared"), ("bfloat16", "shared"), ("float32", "mixed")])
def test_lean_step_logits_are_bit_identical_to_the_models_forward(tiny_model_dir, dtype, prompts):
    from cai.backends.kv_cache import is_growing
    from cai.backends.transformers import TransformersBackend

    backend = TransformersBackend(str(tiny_model_dir), batch_size=8, device="cpu", dtype=dtype, progress=False)
    assert backend._lean is not None
    seqs = [backend.encode(c) for c in (PROMPTS if prompts == "shared" else MIXED)]
    (cache_a, logits_a, mask, last), (cache_b, logits_b, _, _) = _two_caches(backend, seqs, room=12)
    assert is_growing(cache_a) and torch.equal(logits_a, logits_b)
    # the shared prompts share the chat template's opening: the cache holds it once, which the step must read
    assert (cache_a.layers[0].prefix_length > 0) == (prompts == "shared")
    assert bool((mask == 0).any())  # left padding / holes the mask must keep out
    nxt = logits_a.argmax(-1)
    model = backend.model
    with torch.inference_mode():
        for step in range(12):  # past the buffer's expected length: the cache grows mid-run
            if step == 5:  # drop a row, as the decode loop does for finished ones
                keep = torch.tensor([0, 2, 3, 4])
                cache_a.batch_select_indices(keep)
                cache_b.batch_select_indices(keep)
                nxt, mask, last = nxt[keep], mask[keep], last[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last = last + 1
            ours = backend._lean.step(nxt, last, mask, cache_a)
            ref = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                        **{backend._cache_kw: cache_b}, use_cache=True).logits[:, -1, :]
            assert ours.shape == ref.shape
            assert torch.equal(ours, ref), (step, (ours.float() - ref.float()).abs().max())
            nxt = ours.argmax(-1)
    assert cache_a.get_seq_length() == cache_b.get_seq_length()


def test_generate_text_is_the_same_with_the_lean_step_off(tiny_model_dir, monkeypatch):
    from cai.backends.base import SamplingParams
    from cai.backends.transformers import TransformersBackend

    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.95, seed=3)
    lean = TransformersBackend(str(tiny_model_dir), batch_size=8, device="cpu", dtype="float32", progress=False)
    monkeypatch.setenv("CAI_LEAN_DECODE", "0")
    plain = TransformersBackend(str(tiny_model_dir), batch_size=8, device="cpu", dtype="float32", progress=False)
    assert lean._lean is not None and plain._lean is None
    assert [g.text for g in lean.generate(PROMPTS, params)] == [g.text for g in plain.generate(PROMPTS, params)]


def test_lean_step_applies_only_to_stock_llama_on_decode_attention(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from cai.backends.decode_attention import use_decode_attention
    from cai.backends.llama_step import lean_decoder

    llama = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert lean_decoder(llama) is None  # transformers' SDPA: the step's attention would not be the model's
    assert use_decode_attention(llama) and lean_decoder(llama) is not None
    llama.model.layers[0].mlp.act_fn = torch.nn.GELU()  # a layer the step would compute wrongly
    llama.config.hidden_act = "gelu"
    assert lean_decoder(llama) is None
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    use_decode_attention(qwen)
    assert lean_decoder(qwen) is None  # not a Llama: its own forward
