"""Attention for a decode step on the CPU: two batched products over the whole KV buffer.

At one new token per row, torch's CPU SDPA (the flash kernel, on the growing cache's
strided view) took 2.1-2.9 ms per layer at 128 rows, 3 KV heads x 3 queries and
150 cached positions, bf16, 2 threads, on an AVX512-BF16 EPYC: about 27% of a
generate call, ten times what reading the cache costs. ``bmm`` on that strided view
is slow too: the product copies it to make each row's block adjacent. The cache's
buffer itself is contiguous, so this reads all of it, free tail included (zeros that
the mask hides; kv_cache.GrowingLayer hands the buffer over on its views as
``cai_buffer``), in two ``bmm`` with an fp32 softmax between: 1.4 ms against SDPA's
2.8 for the same step with 40 free positions, timed alone (the share above is from
benchmarks/profile_decode.py; both in the note on issue 20).

A prompt prefix that the cache holds once for all rows (kv_cache.share_prefix) is read
once: the rows' queries of each KV head against it make one product with hundreds of
rows instead of hundreds of products of ``groups`` rows, and its scores join the rows'
own before one softmax. On the critique stage's shape (64 rows, 471 shared positions,
146 own; bf16, 2 threads, EPYC) a step's attention over 30 layers took 52 ms against
102-104 with the prefix copied into every row (figures in the note on issue 20).

Where cai's compiled kernel is available (backends/cpu_kernels.py: AVX-512, built on first
use), ``attend`` runs it instead of the products above: it reads each key and value row
once, skips the masked free tail and padding, and keeps scores and weights in fp32 (bf16
output is about twice as close to fp32's as the bmm path's). Per layer, 30 layers' caches
cold, bf16, 2 threads, EPYC: 0.71-0.76 ms against 0.98-1.10 (128 rows, 24 shared + 103
buffer positions) and 0.94 against 1.47 (the critique stage's 64 rows, 471 shared + 158).

Everything else goes to transformers' own SDPA path unchanged: prefill (more than one
query per row, so choice scoring reads the same logits as before), other devices,
caches that hand over no buffer, per-head or float masks and attention variants this does not
implement (soft-capping, sinks, position biases).
"""

from __future__ import annotations

import functools
from typing import Any

#: the name the backend registers with transformers' attention interface
NAME = "cai_cpu_decode"

#: the last mask extended to a buffer's capacity: the 30-odd layers of one step share one mask
_extended: list[Any] = [None, 0, None]


def decode_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function signature; returns ``([batch, 1, heads, dim], None)``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from cai.backends.kv_cache import full_keys

    batch, heads, q_len, dim = query.shape
    k_buf, v_buf = getattr(key, "cai_buffer", None), getattr(value, "cai_buffer", None)
    if (q_len != 1 or query.device.type != "cpu" or dropout or k_buf is None or v_buf is None
            or key.shape[-1] != dim or heads % key.shape[1]
            or (attention_mask is not None and (attention_mask.dtype != torch.bool or attention_mask.shape[1] != 1))
            or any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "position_bias"))):
        # a cache holding a shared prefix once hands over only the rows' own positions
        key, value = full_keys(key, value)
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    pk, pv = getattr(key, "cai_prefix", None), getattr(value, "cai_prefix", None)
    shared = 0 if pk is None or pv is None else pk.shape[2]
    length, capacity = key.shape[2], k_buf.shape[2]
    mask = _mask_over(attention_mask, batch, shared + length, shared + capacity, query.device)
    out = attend(query.reshape(batch, heads, dim), k_buf, v_buf, None if not shared else (pk, pv), mask,
                 dim**-0.5 if scaling is None else scaling)
    return out.reshape(batch, 1, heads, dim), None


def attend(query: Any, k_buf: Any, v_buf: Any, prefix: tuple[Any, Any] | None, mask: Any, scaling: float) -> Any:
    """One query per row over a whole KV buffer (and a prefix held once); returns ``[batch, heads, dim]``.

    ``query`` ``[batch, heads, dim]``; ``k_buf``/``v_buf`` ``[batch, kv_heads, capacity, dim]``
    (zeros past the filled length); ``prefix`` the shared prefix's (keys, values)
    ``[1, kv_heads, P, dim]`` or None; ``mask`` additive fp32, broadcastable to
    ``[batch, 1, 1, P + capacity]`` (``additive_mask``). Shared by the attention function
    above and the lean decode step (backends/llama_step.py).
    """
    import torch

    batch, heads, dim = query.shape
    kv_heads, capacity = k_buf.shape[1], k_buf.shape[2]
    groups = heads // kv_heads
    shared = 0 if prefix is None else prefix[0].shape[2]
    # The kernel reads the shared prefix again for every row; the bmm path multiplies it once
    # against all rows' queries (a real matrix product). Past the rows' own capacity the
    # prefix dominates and the kernel stops paying: on the critique stage's prompts (471 shared,
    # 158 own, 64 rows) a decode step took 109 ms with it and 106-120 without.
    kernel = _kernel(query, k_buf, v_buf, prefix, groups) if shared <= capacity else None
    if kernel is not None and mask.numel() == batch * (shared + capacity):
        # cai's AVX-512 loops (csrc/decode_attention.cpp): fp32 scores and weights, the free tail unread
        pk, pv = prefix if prefix is not None else (None, None)
        scores = kernel.decode_scores(query.contiguous(), k_buf, pk, mask.reshape(batch, -1).contiguous(), scaling)
        return kernel.decode_values(torch.softmax(scores, dim=-1), v_buf, pv)
    return attend_bmm(query, k_buf, v_buf, prefix, mask, scaling)


def attend_bmm(query: Any, k_buf: Any, v_buf: Any, prefix: tuple[Any, Any] | None, mask: Any, scaling: float) -> Any:
    """``attend`` in torch ops: two ``bmm`` (four with a prefix) with an fp32 softmax between them."""
    import torch

    batch, heads, dim = query.shape
    kv_heads, capacity = k_buf.shape[1], k_buf.shape[2]
    groups = heads // kv_heads
    rows = batch * kv_heads
    shared = 0 if prefix is None else prefix[0].shape[2]
    # query head h reads KV head h // groups (transformers' repeat_kv): groups queries per KV head
    q = query.reshape(rows, groups, dim)
    scores = torch.bmm(q, k_buf.view(rows, capacity, dim).transpose(1, 2)).view(batch, kv_heads, groups, capacity)
    if shared:
        pk, pv = prefix
        # the prefix once for every row: one product per KV head over all rows' queries
        q_heads = query.reshape(batch, kv_heads, groups, dim).transpose(0, 1).reshape(kv_heads, batch * groups, dim)
        first = torch.bmm(q_heads, pk[0].transpose(1, 2)).view(kv_heads, batch, groups, shared).permute(1, 0, 2, 3)
        scores = torch.cat([first, scores], dim=-1)
    scores = scores.float().mul_(scaling)
    scores.add_(mask)
    probs = torch.softmax(scores, dim=-1).to(v_buf.dtype)
    own = probs[..., shared:].reshape(rows, groups, capacity)
    out = torch.bmm(own, v_buf.view(rows, capacity, dim)).view(batch, kv_heads, groups, dim)
    if shared:
        lead = probs[..., :shared].permute(1, 0, 2, 3).reshape(kv_heads, batch * groups, shared)
        out = out + torch.bmm(lead, pv[0]).view(kv_heads, batch, groups, dim).permute(1, 0, 2, 3)
    return out.reshape(batch, heads, dim)


def _kernel(query: Any, k_buf: Any, v_buf: Any, prefix: tuple[Any, Any] | None, groups: int) -> Any | None:
    """The compiled kernel where it applies to these tensors (backends/cpu_kernels.py), else None."""
    import torch

    if query.device.type != "cpu" or query.dtype not in (torch.float32, torch.bfloat16):
        return None
    tensors = (k_buf, v_buf) if prefix is None else (k_buf, v_buf, *prefix)
    if any(t.dtype != query.dtype or not t.is_contiguous() for t in tensors):
        return None
    from cai.backends.cpu_kernels import decode_attention_kernel

    kernel = decode_attention_kernel()
    return kernel if kernel is not None and kernel.supports(groups, query.shape[-1]) else None


def additive_mask(mask: Any, length: int, capacity: int) -> Any:
    """``[batch, 1, 1, capacity]`` fp32: 0 where the bool ``mask`` ``[batch, length]`` attends, -inf elsewhere and past ``length``."""
    import torch

    batch = mask.shape[0]
    out = torch.full((batch, 1, 1, capacity), float("-inf"), device=mask.device)
    out[..., :length].masked_fill_(mask.reshape(batch, 1, 1, length), 0.0)
    return out


def _mask_over(mask: Any, batch: int, length: int, capacity: int, device: Any) -> Any:
    """An additive fp32 mask ``[batch, 1, 1, capacity]``: 0 where ``mask`` attends, -inf elsewhere and past ``length``."""
    import torch

    memo_mask, memo_key, memo_out = _extended
    key = (batch, length, capacity)
    # the same mask object (kept alive here, so its identity cannot be reused) for the same shape
    if memo_out is not None and memo_mask is mask and memo_key == key:
        return memo_out
    attends = torch.ones((batch, length), dtype=torch.bool, device=device) if mask is None \
        else mask.reshape(-1, length).expand(batch, length)
    out = additive_mask(attends, length, capacity)
    _extended[:] = [mask, key, out]
    return out


@functools.cache
def register() -> str:
    """Register the function (and SDPA's mask format) with transformers once; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_decode_attention(model: Any) -> bool:
    """Switch a CPU model that runs transformers' SDPA attention to this one; False (unchanged) otherwise."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    name = register()
    try:
        model.set_attn_implementation(name)
    except (ValueError, TypeError, AttributeError):
        return False
    return getattr(model.config, "_attn_implementation", None) == name
