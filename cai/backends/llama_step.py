"""One decode step of a Llama-shaped model on the CPU, without transformers' per-layer machinery.

At one new token per row, a decode step is ~30 layers of small products and many
smaller ops; at batch 128 on a 2-core CPU each op costs ~10-20 us whatever its size.
transformers' forward adds its own per-layer work on top: keyword plumbing through
decorated forwards, a mask built per step, the attention-function lookup, the cache's
update wrapper, and rotary and RMSNorm in their generic form. Under
benchmarks/profile_decode.py (bf16, AVX512-BF16 EPYC, 2 threads) 11% of a generate call
was outside any torch op and 9% in elementwise ops. This step does the same arithmetic,
in the same order and dtypes, as transformers' LlamaDecoderLayer does with cai's decode
attention: same projections (the layers' own modules, oneDNN-packed), the same
RMSNorm and rotary expressions, the same attention (decode_attention.attend), residual
adds and the MLP's product done in place. fp32 logits are bit-identical to
transformers' (tests/test_llama_step.py); ``CAI_LEAN_DECODE=0`` turns it off.

It applies only where it can be exact: a ``LlamaForCausalLM`` whose layers are the stock
``LlamaDecoderLayer`` with SiLU, running cai's decode attention, and a cache of
kv_cache.GrowingLayer. Everything else (prefill, other models, other caches) goes
through the model's own forward.
"""

from __future__ import annotations

from typing import Any


class LeanLlamaDecode:
    """The decode step for one model: ``step(ids, positions, attention, cache) -> logits [batch, vocab]``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = inner.norm
        self.head = model.lm_head
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = [
            (layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm, layer.mlp)
            for layer in inner.layers[: config.num_hidden_layers]
        ]

    def step(self, ids: Any, positions: Any, attention: Any, cache: Any) -> Any:
        """Logits ``[batch, vocab]`` for one new token per row.

        ``ids``, ``positions``: ``[batch]``; ``attention``: ``[batch, L]`` (1 attends, 0 not),
        L = every cached position, shared prefix included, plus the new one; ``cache``: a
        growing cache, which gains the new position.
        """
        import torch

        from cai.backends.decode_attention import additive_mask, attend

        batch = ids.shape[0]
        hidden = self.embed(ids)  # [batch, hidden]
        # [batch, 1, dim] each: the model's own rotary (any rope type it implements)
        cos, sin = self.rotary(hidden, position_ids=positions[:, None])
        half = self.dim // 2
        # rotate_half(x) * sin == swap_halves(x) * (-sin1, sin2): negation is exact, so this is
        # bit-identical to transformers' expression with one op fewer per tensor
        sin_signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        layer0 = cache.layers[0]
        shared = layer0.prefix_length
        mask = None
        for n, (norm_in, attn, norm_post, mlp) in enumerate(self.layers):
            layer = cache.layers[n]
            x = _rms_norm(norm_in, hidden)
            q = attn.q_proj(x).view(batch, self.heads, self.dim)
            k = attn.k_proj(x).view(batch, self.kv_heads, self.dim)
            v = attn.v_proj(x).view(batch, self.kv_heads, self.dim)
            q = _rotate(q, cos, sin_signed, half)
            k = _rotate(k, cos, sin_signed, half)
            layer.update(k[:, :, None], v[:, :, None])
            if mask is None:  # one mask for every layer: the same lengths and capacity
                mask = additive_mask(attention.bool(), shared + layer._len, shared + layer._k.shape[2])
            prefix = None if layer._pk is None else (layer._pk, layer._pv)
            out = attend(q, layer._k, layer._v, prefix, mask, attn.scaling)
            hidden = hidden + attn.o_proj(out.reshape(batch, self.heads * self.dim))
            x = _rms_norm(norm_post, hidden)
            gate = mlp.gate_proj(x)
            hidden.add_(mlp.down_proj(torch.nn.functional.silu(gate, inplace=True).mul_(mlp.up_proj(x))))
        return self.head(_rms_norm(self.norm, hidden))


def _rms_norm(norm: Any, x: Any) -> Any:
    """transformers' LlamaRMSNorm, op for op (fp32 statistics, weight applied in the model's dtype)."""
    import torch

    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate(x: Any, cos: Any, sin_signed: Any, half: int) -> Any:
    """``x * cos + rotate_half(x) * sin`` for ``x`` ``[batch, heads, dim]``, cos/sin ``[batch, 1, dim]``."""
    import torch

    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return (x * cos) + (swapped * sin_signed)


def lean_decoder(model: Any) -> LeanLlamaDecode | None:
    """The lean step for ``model`` where it computes exactly what the model's forward would; None elsewhere."""
    from cai.backends.decode_attention import NAME

    config = getattr(model, "config", None)
    if (type(model).__name__ != "LlamaForCausalLM" or getattr(config, "_attn_implementation", None) != NAME
            or getattr(config, "pretraining_tp", 1) != 1 or getattr(config, "hidden_act", None) != "silu"):
        return None
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or type(getattr(inner, "norm", None)).__name__ != "LlamaRMSNorm":
        return None
    for layer in layers:
        if (type(layer).__name__ != "LlamaDecoderLayer" or type(layer.self_attn).__name__ != "LlamaAttention"
                or type(layer.mlp).__name__ != "LlamaMLP"
                or type(layer.input_layernorm).__name__ != "LlamaRMSNorm"
                or type(layer.post_attention_layernorm).__name__ != "LlamaRMSNorm"):
            return None
    return LeanLlamaDecode(model)
