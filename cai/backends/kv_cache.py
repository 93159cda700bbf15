"""A KV cache layer for our decode loop that appends in place.

transformers' DynamicLayer appends with ``torch.cat``, copying the whole cache of
every layer at every step; at batch 64 on a 2-core CPU that was 21% of a decode step
(torch profiler, SmolLM2-135M). This layer keeps a buffer that doubles when full and
writes each new token into it, and it still supports dropping finished rows.

A prompt prefix that every row of a batch shares (the system prompt, a stage's
instructions and few-shot exemplars: 86-87% of each critique and revision prompt of the
harmless constitution's stages) can be held once instead of once per row
(``share_prefix``): the layer then keeps that prefix as ``[1, heads, P, dim]`` and only
each row's own positions per row. Decode attention (backends/decode_attention.py)
reads the prefix once for all rows; any other reader gets the rows' full keys
rebuilt (``full_keys``).
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """DynamicLayer semantics (keys/values are ``[batch, heads, seq, dim]``) on a doubling buffer.

    ``expect``: the length the caller expects to reach (prompt + new tokens). The first
    buffer is that long, so a batch whose length is known never reallocates, and never
    holds twice the memory it needs; past it the buffer doubles.
    """

    def __init__(self, expect: int = 0) -> None:
        super().__init__()
        self._expect = expect

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self._len = 0
        #: the shared prefix's keys and values, ``[1, heads, P, dim]`` (None: no shared prefix)
        self._pk = self._pv = None

    @property
    def prefix_length(self) -> int:
        return 0 if getattr(self, "_pk", None) is None else self._pk.shape[2]

    def share_prefix(self) -> None:
        """Hold the positions cached so far (one row: the prefix every row will share) once, apart from the rows' own.

        The buffer keeps its capacity for positions still to come; rows made from this
        one (``batch_select_indices``) start with no positions of their own.
        """
        if not self.is_initialized or self._k is None or self._k.shape[0] != 1 or self._pk is not None:
            raise ValueError("share_prefix needs a one-row cache layer with no shared prefix yet")
        n = self._len
        self._pk, self._pv = self._k[:, :, :n].clone(), self._v[:, :, :n].clone()
        room = max(1, self._k.shape[2] - n)
        self._k = self._k.new_zeros((*self._k.shape[:2], room, self._k.shape[3]))
        self._v = self._v.new_zeros((*self._v.shape[:2], room, self._v.shape[3]))
        self._expect = max(0, self._expect - n)
        self._len = 0
        self._views()

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._k is None or self._len + n > self._k.shape[-2]:
            needed = self._len + n
            capacity = self._expect if needed <= self._expect else max(64, 2 * needed)
            # zeros, not garbage: decode attention reads the whole buffer, masking the free tail
            # (backends/decode_attention.py), and a masked weight of 0 times a NaN is still NaN
            k = key_states.new_zeros((*key_states.shape[:2], capacity, key_states.shape[-1]))
            v = value_states.new_zeros((*value_states.shape[:2], capacity, value_states.shape[-1]))
            if self._len:
                k[:, :, : self._len] = self._k[:, :, : self._len]
                v[:, :, : self._len] = self._v[:, :, : self._len]
            self._k, self._v = k, v
        self._k[:, :, self._len : self._len + n] = key_states
        self._v[:, :, self._len : self._len + n] = value_states
        self._len += n
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self._len], self._v[:, :, : self._len]
        # The whole buffers ride along on the views: decode attention reads them contiguous
        # (positions past the length are zeros it masks) instead of the strided views.
        self.keys.cai_buffer, self.values.cai_buffer = self._k, self._v
        # With a shared prefix these views hold only the rows' own positions: the prefix rides
        # along too, and a reader that is not decode attention must call full_keys.
        self.keys.cai_prefix, self.values.cai_prefix = self._pk, self._pv

    def get_seq_length(self) -> int:
        return self.prefix_length + self._len if self.is_initialized else 0

    def load(self, keys, values, length: int, prefix: tuple[Any, Any] | None = None) -> None:
        """Start from buffers ``[batch, heads, capacity, dim]``: ``length`` positions filled, zeros after them.

        ``prefix``: the shared prefix's (keys, values), ``[1, heads, P, dim]``, before those positions.
        """
        self.lazy_initialization(keys, values)
        self._k, self._v, self._len = keys, values, length
        if prefix is not None:
            self._pk, self._pv = prefix
        self._views()

    def batch_select_indices(self, indices) -> None:
        if self.is_initialized and self._k is not None:
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()


def full_keys(key: Any, value: Any) -> tuple[Any, Any]:
    """The rows' whole keys and values: the shared prefix (if ``key`` carries one) expanded to every row, then their own."""
    import torch

    pk, pv = getattr(key, "cai_prefix", None), getattr(value, "cai_prefix", None)
    if pk is None or pv is None:
        return key, value
    rows = key.shape[0]
    return (torch.cat([pk.expand(rows, -1, -1, -1), key], dim=2),
            torch.cat([pv.expand(rows, -1, -1, -1), value], dim=2))


def share_prefix(cache) -> bool:
    """Turn a one-row growing cache's positions into a prefix shared by the rows made from it; False if it is not one."""
    layers = cache.layers
    if not layers or not is_growing(cache) or any(
            not layer.is_initialized or layer._k is None or layer._k.shape[0] != 1 or layer._pk is not None
            for layer in layers):
        return False
    for layer in layers:
        layer.share_prefix()
    return True


def is_growing(cache) -> bool:
    return all(type(layer) is GrowingLayer for layer in cache.layers)


def fork(cache, indices, config, expect: int = 0):
    """A new growing cache holding copies of rows ``indices`` of ``cache``."""
    new = growing_cache(config, expect)
    for src, dst in zip(cache.layers, new.layers):
        if src.is_initialized:
            dst.load(src._k[indices], src._v[indices], src._len,
                     None if src._pk is None else (src._pk, src._pv))
    return new


def merge_chunks(parts, n_rows: int, start: int, config, room: int = 0):
    """One growing cache for ``n_rows`` rows from caches of row chunks.

    ``parts`` is a list of (cache, row indices, width): every chunk cache holds
    ``start`` positions common to all chunks (a shared prefix included), then ``width`` of its own. Each chunk's
    own positions are right-aligned to the widest chunk; the gap is zero-filled (the
    attention mask hides it; zeros, not garbage, so masked weights times values stay 0).
    The buffers leave ``room`` positions free for tokens still to come.
    """
    import torch

    wide = max(width for _, _, width in parts)
    merged = growing_cache(config, start + wide + room)
    for layer, dst in enumerate(merged.layers):
        lead = parts[0][0].layers[layer]
        first = lead._k
        # positions before the final stage that each row holds itself (the shared prefix is held once)
        own_start = start - lead.prefix_length
        length = own_start + wide
        shape = (n_rows, first.shape[1], length + room, first.shape[3])
        k, v = first.new_zeros(shape), first.new_zeros(shape)
        for cache, rows, width in parts:
            src = cache.layers[layer]
            index = torch.as_tensor(rows, device=first.device)
            k[index, :, :own_start] = src._k[:, :, :own_start]
            v[index, :, :own_start] = src._v[:, :, :own_start]
            k[index, :, length - width : length] = src._k[:, :, own_start : own_start + width]
            v[index, :, length - width : length] = src._v[:, :, own_start : own_start + width]
        dst.load(k, v, length, None if lead._pk is None else (lead._pk, lead._pv))
    return merged


def growing_cache(config, expect: int = 0):
    """A DynamicCache for ``config`` whose full-attention layers append in place.

    ``expect``: the sequence length the caller expects to reach (see GrowingLayer).
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer(expect) for _ in cache.layers]
    return cache


def cache_keyword(model: Any) -> str:
    """The forward() argument that takes a KV cache: ``cache`` since transformers 5.x, ``past_key_values`` before.

    Passing the old name to a newer model warns (FutureWarning) on every call of the
    decode loop, so ask the model's own signature which name it takes.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"
