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
    assert _greedy_ids(ours, convs, 24) == _greedy_ids(plain, convs, 24)  # the text may decode to little


def _shared(batch: int, kv_heads: int, dim: int, prefix: int, own: int, expect: int, seed: int = 0):
    """A layer holding ``prefix`` positions once for ``batch`` rows, then ``own`` of each row's; and the same keys copied per row."""
    from cai.backends.kv_cache import GrowingLayer

    g = torch.Generator().manual_seed(seed)
    layer = GrowingLayer(expect=expect)
    pk, pv = torch.randn(1, kv_heads, prefix, dim, generator=g), torch.randn(1, kv_heads, prefix, dim, generator=g)
    layer.update(pk, pv)
    layer.share_prefix()
    layer.batch_select_indices(torch.zeros(batch, dtype=torch.long))
    ok, ov = torch.randn(batch, kv_heads, own, dim, generator=g), torch.randn(batch, kv_heads, own, dim, generator=g)
    layer.update(ok, ov)
    full_k = torch.cat([pk.expand(batch, -1, -1, -1), ok], dim=2)
    full_v = torch.cat([pv.expand(batch, -1, -1, -1), ov], dim=2)
    return layer, g, full_k, full_v


def test_a_shared_prefix_is_held_once_and_rebuilt_exactly():
    from cai.backends.kv_cache import full_keys

    layer, g, full_k, full_v = _shared(4, 2, 8, prefix=6, own=3, expect=15)
    assert layer.prefix_length == 6 and layer.get_seq_length() == 9
    assert layer.keys.shape == (4, 2, 3, 8) and layer.keys.cai_prefix.shape == (1, 2, 6, 8)
    k, v = full_keys(layer.keys, layer.values)
    assert torch.equal(k, full_k) and torch.equal(v, full_v)
    layer.batch_select_indices(torch.tensor([3, 1]))  # dropping rows keeps the prefix, once
    k, _ = full_keys(layer.keys, layer.values)
    assert torch.equal(k, full_k[[3, 1]]) and layer.keys.cai_prefix.shape[0] == 1


@pytest.mark.parametrize("with_mask", [True, False])
def test_decode_attention_over_a_shared_prefix_matches_sdpa_over_copied_rows(with_mask):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from cai.backends.decode_attention import decode_attention

    batch, kv_heads, groups, dim = 5, 2, 3, 16
    layer, g, _, _ = _shared(batch, kv_heads, dim, prefix=9, own=4, expect=25)
    new_k, new_v = torch.randn(batch, kv_heads, 1, dim, generator=g), torch.randn(batch, kv_heads, 1, dim, generator=g)
    keys, values = layer.update(new_k, new_v)
    assert keys.shape[2] == 5 and keys.cai_buffer.shape[2] == 16  # own positions, then a free tail
    full_k = torch.cat([layer._pk.expand(batch, -1, -1, -1), keys], dim=2)
    full_v = torch.cat([layer._pv.expand(batch, -1, -1, -1), values], dim=2)
    query = torch.randn(batch, kv_heads * groups, 1, dim, generator=g)
    mask = None
    if with_mask:  # padding at the start of a row's own positions, and a hole
        mask = torch.ones(batch, 1, 1, 14, dtype=torch.bool)
        mask[0, ..., 9:11] = False
        mask[3, ..., 12] = False
    ref, _ = sdpa_attention_forward(_Module(), query, full_k, full_v, mask, scaling=0.3)
    ours, _ = decode_attention(_Module(), query, keys, values, mask, scaling=0.3)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    # a prefill over the same cache (several queries) goes to SDPA with the rows' whole keys
    q4 = torch.randn(batch, kv_heads * groups, 4, dim, generator=g)
    ref4, _ = sdpa_attention_forward(_Module(), q4, full_k, full_v, None)
    assert torch.equal(decode_attention(_Module(), q4, keys, values, None)[0], ref4)


def _greedy_ids(backend, convs, n: int, logits: list | None = None) -> list[list[int]]:
    """The decode loop's token ids (the tiny random model's text decodes mostly to nothing), no end token.

    ``logits``: where to put every step's logits (a tiny random model's argmax barely
    depends on attention, so equal ids alone would prove little).
    """
    from cai.backends.base import SamplingParams

    seqs = [backend._encode(backend.render(c)) for c in convs]
    hook = None
    if logits is not None:
        head = backend.model.get_output_embeddings()
        hook = head.register_forward_hook(lambda m, args, out: logits.append(out.detach().float().clone()))
    try:
        return backend._decode(seqs, SamplingParams(max_new_tokens=n, temperature=0.0), set(), None)
    finally:
        if hook is not None:
            hook.remove()


@pytest.mark.parametrize("chunked", [False, True])
def test_backend_decodes_the_same_tokens_with_the_shared_prefix_held_once(tiny_model_dir, monkeypatch, chunked):
    import cai.backends.kv_cache as kv
    import cai.backends.transformers as tb
    from cai.backends.transformers import TransformersBackend

    system = {"role": "system", "content": "You are a careful critic of replies. " * 5}
    convs = [[system, {"role": "user", "content": c}] for c in
             ("hi", "tell me a long story about a fox " * 3, "what is 2+2?", "name three colours", "a")]
    if chunked:
        monkeypatch.setattr(tb, "CHUNK_OVERHEAD", 0)  # a prefill pass per distinct length, merged
    ours = TransformersBackend(str(tiny_model_dir), batch_size=5, device="cpu", dtype="float32", progress=False)
    shared = []
    real = kv.share_prefix
    monkeypatch.setattr(kv, "share_prefix", lambda cache: shared.append(real(cache)) or shared[-1])
    la, lb = [], []
    a = _greedy_ids(ours, convs, 20, la)
    assert shared == [True]  # the batch's common prefix was held once
    monkeypatch.setenv("CAI_SHARED_PREFIX_KV", "0")
    plain = TransformersBackend(str(tiny_model_dir), batch_size=5, device="cpu", dtype="float32", progress=False)
    b = _greedy_ids(plain, convs, 20, lb)
    assert shared == [True]
    assert a == b and [len(x) for x in a] == [20] * 5
    assert len(la) == len(lb) > 19  # the prefill's passes, then 19 decode steps
    for x, y in zip(la[-19:], lb[-19:]):
        assert torch.allclose(x, y, atol=1e-5), (x - y).abs().max()
