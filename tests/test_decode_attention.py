"""The CPU decode attention (backends/decode_attention.py) against transformers' SDPA path."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


class _Module:
    """What the attention functions read off the attention module."""

    num_key_value_groups = 3
    is_causal = True
    training = False


def _growing(batch: int, kv_heads: int, dim: int, prompt: int, expect: int, seed: int = 0):
    from cai.backends.kv_cache import GrowingLayer

    g = torch.Generator().manual_seed(seed)
    layer = GrowingLayer(expect=expect)
    layer.update(torch.randn(batch, kv_heads, prompt, dim, generator=g), torch.randn(batch, kv_heads, prompt, dim, generator=g))
    return layer, g


@pytest.mark.parametrize("with_mask", [True, False])
def test_decode_attention_matches_sdpa_over_the_strided_cache(with_mask):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from cai.backends.decode_attention import decode_attention

    batch, kv_heads, groups, dim = 5, 2, 3, 16
    layer, g = _growing(batch, kv_heads, dim, prompt=7, expect=20)
    keys, values = layer.update(torch.randn(batch, kv_heads, 1, dim, generator=g),
                                torch.randn(batch, kv_heads, 1, dim, generator=g))
    assert keys.shape[2] == 8 and keys.cai_buffer.shape[2] == 20  # a free tail the new path must mask
    query = torch.randn(batch, kv_heads * groups, 1, dim, generator=g)
    mask = None
    if with_mask:  # left padding and a hole, as prefix sharing leaves them
        mask = torch.ones(batch, 1, 1, 8, dtype=torch.bool)
        mask[0, ..., :3] = False
        mask[2, ..., 4] = False
    ref, _ = sdpa_attention_forward(_Module(), query, keys, values, mask, scaling=0.3)
    ours, weights = decode_attention(_Module(), query, keys, values, mask, scaling=0.3)
    assert weights is None and ours.shape == ref.shape == (batch, 1, kv_heads * groups, dim)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    # a different mask object on the same shapes is not answered from the memo of the last one
    if with_mask:
        other = mask.clone()
        other[1, ..., :5] = False
        ref2, _ = sdpa_attention_forward(_Module(), query, keys, values, other, scaling=0.3)
        ours2, _ = decode_attention(_Module(), query, keys, values, other, scaling=0.3)
        assert torch.allclose(ours2, ref2, atol=1e-5) and not torch.allclose(ours2, ours, atol=1e-3)


def test_decode_attention_leaves_prefill_and_plain_tensors_to_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from cai.backends.decode_attention import decode_attention

    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 4, 8, generator=g)  # four queries per row: a prefill
    k, v = torch.randn(2, 2, 4, 8, generator=g), torch.randn(2, 2, 4, 8, generator=g)
    ref, _ = sdpa_attention_forward(_Module(), q, k, v, None)
    ours, _ = decode_attention(_Module(), q, k, v, None)
    assert torch.equal(ours, ref)
    q1 = q[:, :, :1]  # one query, but a cache that hands over no buffer
    assert torch.equal(decode_attention(_Module(), q1, k, v, None)[0], sdpa_attention_forward(_Module(), q1, k, v, None)[0])


def test_buffers_past_the_length_stay_zero_through_growth_and_row_drops():
    layer, g = _growing(3, 2, 4, prompt=5, expect=6)
    for _ in range(4):  # past expect: the buffer doubles
        layer.update(torch.randn(3, 2, 1, 4, generator=g), torch.randn(3, 2, 1, 4, generator=g))
    layer.batch_select_indices(torch.tensor([2, 0]))
    keys, values = layer.keys, layer.values
    assert keys.cai_buffer.shape[2] > keys.shape[2] == 9
    for view in (keys, values):
        assert torch.equal(view.cai_buffer[:, :, :9], view)
        assert not view.cai_buffer[:, :, 9:].any()


def test_backend_generates_the_same_greedy_text_with_and_without_it(tiny_model_dir, monkeypatch):
    from cai.backends.base import SamplingParams
    from cai.backends.transformers import TransformersBackend

    convs = [[{"role": "user", "content": c}] for c in
             ("hi", "tell me a long story about a fox", "what is 2+2?", "name three colours", "a")]
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    ours = TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", dtype="float32", progress=False)
    assert ours.model.config._attn_implementation == "cai_cpu_decode"
    monkeypatch.setenv("CAI_DECODE_ATTENTION", "0")
    plain = TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", dtype="float32", progress=False)
    assert plain.model.config._attn_implementation == "sdpa"
    a, b = ours.generate(convs, params), plain.generate(convs, params)
    assert [x.text for x in a] == [x.text for x in b]
    assert sum(x.completion_tokens for x in a) > 5 * 10  # the decode loop ran, not just the prefill
