"""cai serve's own decode loop over a transformers backend's model.

Per-token log-probs, stop strings checked as tokens arrive, streaming, and per-row
sampling settings (``max_tokens``, temperature, top-p, seed): a seeded row draws from
its own generator, so the same request and seed give the same answer whatever else
is in the batch. The prefill and its KV cache are the backend's (``_prefill``).
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Sequence

from cai.backends.base import Conversation
from cai.serve.samples import Sample, SampleResult, find_stop, finite, held_back

TopTokens = list[tuple[str, float]]



def transformers_top_logprobs(backend: Any, conversations: Sequence[Conversation], k: int) -> list[TopTokens]:
    """The k most likely next tokens after each conversation, from the backend's model."""
    import torch

    tok = backend.tokenizer
    limit = max(1, backend.context_window - 1)
    # backend.encode: content that spells special tokens stays plain text (no forged turns)
    logits = last_logits(backend, [backend.encode(c)[-limit:] for c in conversations])
    values, indices = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return [[(tok.decode([i]), v) for i, v in zip(idx, vals)] for vals, idx in zip(values.tolist(), indices.tolist())]


def last_logits(backend: Any, seqs: list[list[int]]) -> Any:
    """The next-token logits after each sequence: plain left-padded forward passes, no KV cache."""
    import torch

    step = getattr(backend, "batch_size", 8)
    tok = backend.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    dev = backend.model.device
    out = []
    for start in range(0, len(seqs), step):
        batch = seqs[start : start + step]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):  # left padding: the next token sits at the last column
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = backend.model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                   position_ids=positions.to(dev)).logits[:, -1, :]
        out.append(logits)
    return torch.cat(out)


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's character -> byte table (GPT-2's ``bytes_to_unicode``, inverted)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenEngine:
    """Our own decode loop over a transformers backend's model: per-token log-probs,
    stop strings checked as tokens arrive, streaming, per-row sampling settings."""

    tokens = True

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.tok = backend.tokenizer
        self.eos = set(backend._eos_ids())
        self._pieces: dict[int, tuple[str, list[int]]] = {}
        self.vocab = int(getattr(backend.model.config, "vocab_size", 0) or len(self.tok))
        try:  # transformers 5 renamed past_key_values to cache (the old name warns on every call)
            params = inspect.signature(backend.model.forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"
        except (TypeError, ValueError, AttributeError):
            self._cache_kw = "past_key_values"

    @property
    def context_window(self) -> int:
        return int(self.backend.context_window)

    def can_logprobs(self, max_tokens: int, temperature: float) -> bool:
        return True

    def chat_ids(self, conv: Conversation) -> list[int]:
        return list(self.backend.encode(conv))  # control tokens only where the template put them

    def text_ids(self, text: str, add_special: bool | None) -> list[int]:
        plain = list(self.tok(text, add_special_tokens=False)["input_ids"])
        if add_special is False:
            return plain
        full = list(self.tok(text, add_special_tokens=True)["input_ids"])
        bos = self.tok.bos_token_id
        if add_special is None and bos is not None and plain[:1] == [bos] and full[:2] == [bos, bos]:
            return plain  # the prompt already starts with BOS (a rendered template): not twice
        return full

    def count(self, prompt: list[int] | Conversation) -> int:
        return len(prompt) if prompt and isinstance(prompt[0], int) else len(self.chat_ids(prompt))  # type: ignore[arg-type]

    def key(self, s: Sample) -> Any:
        return "next" if s.max_tokens == 1 else "decode"  # one forward pass needs no KV cache

    def piece(self, tid: int) -> tuple[str, list[int]]:
        """A token's text and its bytes (byte-level and byte-fallback tokens: the real bytes)."""
        got = self._pieces.get(tid)
        if got is None:
            text = self.tok.decode([tid], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            raw = b""
            if "\ufffd" in text:
                name = self.tok.convert_ids_to_tokens(tid) or ""
                m = _BYTE_TOKEN.fullmatch(name)
                table = _byte_decoder()
                if m:
                    raw = bytes([int(m.group(1), 16)])
                elif name and all(ch in table for ch in name):
                    raw = bytes(table[ch] for ch in name)
            got = (text, list(raw or text.encode()))
            self._pieces[tid] = got
        return got

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def run(self, batch: list[Sample]) -> list[SampleResult]:
        step = max(1, int(getattr(self.backend, "batch_size", len(batch)) or len(batch)))  # its memory setting
        return [r for start in range(0, len(batch), step) for r in self._run(batch[start : start + step])]

    def _run(self, batch: list[Sample]) -> list[SampleResult]:
        import torch

        backend, model = self.backend, self.backend.model
        dev = model.device
        seqs = [list(s.prompt) for s in batch]  # type: ignore[arg-type]
        rows = [Row(self, s) for s in batch]
        max_new = max(s.max_tokens for s in batch)
        temps = torch.tensor([s.temperature for s in batch], dtype=torch.float32, device=dev)
        top_ps = torch.tensor([s.top_p for s in batch], dtype=torch.float32, device=dev)
        gens = [torch.Generator().manual_seed(s.seed) if s.seed is not None else None for s in batch]
        kmax = max((s.top_k for s in batch if s.logprobs), default=0)
        want_lp = any(s.logprobs for s in batch)
        with torch.inference_mode():
            if max_new == 1:
                logits = last_logits(backend, seqs)
            else:
                cache, logits, attention, last = backend._prefill(seqs, room=max_new)
            alive = torch.arange(len(batch))  # tensor row -> sample index
            for step in range(max_new):
                idx = alive.tolist()
                u = torch.stack([torch.rand((), generator=gens[i]) for i in idx]).to(dev)
                nxt = _choose(logits, temps[alive.to(dev)], top_ps[alive.to(dev)], u)
                lp = top_v = top_i = None
                if want_lp:
                    lp = torch.log_softmax(logits.float(), dim=-1)
                    chosen = lp.gather(1, nxt[:, None]).squeeze(1).tolist()
                    if kmax:
                        top_v, top_i = (t.tolist() for t in lp.topk(kmax, dim=-1))
                for r, (i, t) in enumerate(zip(idx, nxt.tolist())):
                    if not rows[i].done:
                        top = list(zip(top_i[r], top_v[r])) if top_i is not None else []
                        rows[i].push(t, chosen[r] if lp is not None else None, top)
                done = torch.tensor([rows[i].done for i in idx])
                if bool(done.all()) or step == max_new - 1:
                    break
                # Dropping rows copies the whole cache; a finished row left in costs one row
                # of compute per step. Drop once they are an eighth of the batch (as _decode).
                dead = int(done.sum())
                if dead and dead * 8 >= len(idx):
                    keep = (~done).nonzero().squeeze(1)
                    cache.batch_select_indices(keep.to(dev))
                    alive, nxt = alive[keep], nxt[keep.to(dev)]
                    attention, last = attention[keep.to(dev)], last[keep.to(dev)]
                attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
                last = last + 1
                logits = model(input_ids=nxt[:, None], attention_mask=attention, position_ids=last[:, None],
                               use_cache=True, **{self._cache_kw: cache}).logits[:, -1, :]
        return [r.result() for r in rows]


def _choose(logits, temps, top_ps, uniforms):
    """One token per row: argmax where the temperature is 0, else a draw (inverse CDF with the
    row's own uniform) from softmax(logits / temperature) cut to the row's top-p nucleus."""
    import torch

    out = logits.argmax(dim=-1)
    sampled = temps > 0
    if bool(sampled.any()):
        idx = sampled.nonzero().squeeze(1)
        probs = torch.softmax(logits[idx].float() / temps[idx, None], dim=-1)
        tp = top_ps[idx]
        if bool((tp < 1).any()):
            sp, si = probs.sort(dim=-1, descending=True)
            sp[(sp.cumsum(-1) - sp) > tp[:, None]] = 0  # the top token always stays
            probs = torch.zeros_like(probs).scatter_(-1, si, sp)
        cdf = probs.cumsum(-1)
        k = torch.searchsorted(cdf, (uniforms[idx] * cdf[:, -1])[:, None], right=True).squeeze(1)
        out[idx] = k.clamp_(max=probs.shape[-1] - 1)
    return out


class Row:
    """One sample's tokens as they arrive: end of turn, stop strings, length, streaming."""

    def __init__(self, engine: TokenEngine, sample: Sample) -> None:
        self.e, self.s = engine, sample
        self.ids: list[int] = []  # generated tokens, the end-of-turn token included
        self.entries: list[dict[str, Any]] = []
        self.text = ""
        self.sent = 0  # characters streamed
        self.sent_entries = 0
        self.finish: str | None = None
        self.watch = bool(sample.stop) or sample.emit is not None

    @property
    def done(self) -> bool:
        return self.finish is not None

    def push(self, tid: int, logprob: float | None, top: list[tuple[int, float]]) -> None:
        s = self.s
        self.ids.append(tid)
        if s.logprobs and logprob is not None:
            text, raw = self.e.piece(tid)
            entry = {"token": text, "logprob": finite(logprob), "bytes": raw, "top_logprobs": []}
            for i, v in top[: s.top_k]:
                t, b = self.e.piece(i)
                entry["top_logprobs"].append({"token": t, "logprob": finite(v), "bytes": b})
            self.entries.append(entry)
        if tid in self.e.eos:
            self.finish = "stop"
        elif s.cancelled:
            self.finish = "stop"
        if self.watch and tid not in self.e.eos:
            before = len(self.text)
            self.text = self.e.decode(self.ids)
            if s.stop:
                cut = find_stop(self.text, s.stop, max(0, before - max(map(len, s.stop))))
                if cut >= 0:
                    self.text, self.finish = self.text[:cut], "stop"
        if self.finish is None and len(self.ids) >= s.max_tokens:
            self.finish = "length"
        if s.emit is not None and self.finish is None:
            safe = len(self.text) - held_back(self.text, s.stop)
            if safe > self.sent:
                s.emit(self.text[self.sent : safe], self.entries[self.sent_entries :])
                self.sent, self.sent_entries = safe, len(self.entries)

    def result(self) -> SampleResult:
        if not self.watch:
            ids = self.ids[:-1] if self.ids and self.ids[-1] in self.e.eos else self.ids
            self.text = self.e.decode(ids)
        return SampleResult(text=self.text, finish_reason=self.finish or "length",
                            prompt_tokens=self.s.prompt_tokens, completion_tokens=len(self.ids),
                            logprobs=self.entries if self.s.logprobs else None)
