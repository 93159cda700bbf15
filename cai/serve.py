"""An OpenAI-compatible server over any cai backend (`cai serve`), on Starlette + uvicorn.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (raw-prompt
continuation: a string, a list of token ids, or a list of either), ``GET /v1/models``,
``GET /v1/models/{id}`` and ``GET /health``. Both completion endpoints stream
(``stream: true``, server-sent events, ``stream_options.include_usage``), take ``n``,
``stop``, ``seed``, ``temperature``, ``top_p`` and ``max_tokens``, and return
log-probs of the *sampled* tokens, one entry per generated token (``logprobs`` /
``top_logprobs`` on chat, ``logprobs: k`` on completions). The ``developer`` role is
read as ``system``. A model name other than the served one is a 404, and anything
cai serve does not do (``response_format``, tools, non-zero penalties, ``logit_bias``,
unknown fields, ...) is refused with a 400; both with OpenAI-shaped error bodies.

Semantics worth knowing:

- A chat conversation ending with an assistant message is continued (vLLM's
  ``continue_final_message``, which is also accepted), not answered with a new turn.
- Message content never becomes control tokens: conversations are encoded by the
  backend's ``encode`` (``ChatEncoder``), so content spelling ``<|im_start|>`` stays
  text. A raw ``/v1/completions`` prompt is the client's own rendering: its text is
  tokenized as is (special tokens included, as vLLM and llama.cpp do); send token
  ids to control every token.
- A prompt plus ``max_tokens`` longer than the context window is refused (400,
  ``context_length_exceeded``), never cut silently. Without ``max_tokens``, chat
  answers get up to 256 tokens and completions 16 (OpenAI's default), within the window.
- Generated text is returned as decoded, untrimmed; a stop string ends the text
  before it (``finish_reason: "stop"``). The end-of-turn token counts as a generated
  token (in ``usage`` and ``logprobs``), as in vLLM, but is not part of the text.
- Log-probs are the model's own (before temperature and top-p).

Concurrent requests are gathered for a few milliseconds into one batch (``n``
samples are rows of it). Over a transformers backend the server runs its own decode
loop on the backend's model (``_prefill`` and its KV cache), so rows can differ in
``max_tokens``, temperature, top-p, seed, stop strings and log-probs; a seeded row
draws from its own generator, so the same request and seed give the same answer
whatever else is in the batch. Any other backend (vLLM, Ray, an OpenAI-compatible
one) is driven through ``generate``: stop strings are applied to its text afterwards,
a stream sends the text in one piece, and log-probs are available only where the
backend has ``top_logprobs`` (greedy, ``max_tokens=1``), else refused.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
import json
import logging
import math
import queue
import re
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

from cai.backends.base import Backend, Conversation, SamplingParams
from cai.errors import UserInputError

log = logging.getLogger(__name__)

ROLES = {"system", "developer", "user", "assistant"}
MAX_TOP_LOGPROBS = 20
MAX_N = 64
MAX_STOP = 16
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16
TopTokens = list[tuple[str, float]]


# --- errors -------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than 200, with an OpenAI-shaped body."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def body(self) -> dict[str, Any]:
        return error_body(str(self), self.kind, self.param, self.code)


class RequestError(ApiError):
    """A bad request: answered with HTTP 400 and the message."""


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _unsupported(name: str, why: str = "") -> RequestError:
    return RequestError(f"'{name}' is not supported by cai serve{why}", param=name, code="unsupported_parameter")


# --- top-k next tokens (the log-prob path of backends without a decode loop) ---------


def top_logprobs(backend: Backend, conversations: Sequence[Conversation], k: int) -> list[TopTokens]:
    """The k most likely next tokens (decoded text, log-prob) after each conversation."""
    own = getattr(backend, "top_logprobs", None)
    if callable(own):
        return own(conversations, k)
    if all(hasattr(backend, a) for a in ("model", "tokenizer", "encode")):
        return _transformers_top_logprobs(backend, conversations, k)
    raise RequestError(f"backend {type(backend).__name__} cannot return logprobs")


def _transformers_top_logprobs(backend: Any, conversations: Sequence[Conversation], k: int) -> list[TopTokens]:
    import torch

    tok = backend.tokenizer
    limit = max(1, backend.context_window - 1)
    # backend.encode: content that spells special tokens stays plain text (no forged turns)
    logits = _last_logits(backend, [backend.encode(c)[-limit:] for c in conversations])
    values, indices = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return [[(tok.decode([i]), v) for i, v in zip(idx, vals)] for vals, idx in zip(values.tolist(), indices.tolist())]


def _last_logits(backend: Any, seqs: list[list[int]]):
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


# --- one sample: what to generate and what came out --------------------------------


@dataclass
class SampleResult:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    #: one entry per generated token: {"token", "logprob", "bytes", "top_logprobs": [...]}
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Sample:
    """One output sequence (a request with ``n=3`` is three samples)."""

    prompt: list[int] | Conversation  # token ids (raw completions) or a conversation
    prompt_tokens: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    logprobs: bool
    top_k: int
    #: streaming: called from the batch thread with (text delta, log-prob entries of its tokens)
    emit: Callable[[str, list[dict[str, Any]]], None] | None = None
    cancelled: bool = False
    future: Future = field(default_factory=Future)


def find_stop(text: str, stop: Sequence[str], start: int = 0) -> int:
    """Where the earliest stop string begins in ``text`` (searching from ``start``), or -1."""
    hits = [i for i in (text.find(s, start) for s in stop) if i >= 0]
    return min(hits) if hits else -1


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters a stream must hold: a possible start of a stop string,
    or an incomplete UTF-8 character (decoded as U+FFFD)."""
    hold = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    tail = len(text) - len(text.rstrip("\ufffd"))
    return max(hold, tail)


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


# --- engines: how a batch of samples is generated ----------------------------------


class _TokenEngine:
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
        rows = [_Row(self, s) for s in batch]
        max_new = max(s.max_tokens for s in batch)
        temps = torch.tensor([s.temperature for s in batch], dtype=torch.float32, device=dev)
        top_ps = torch.tensor([s.top_p for s in batch], dtype=torch.float32, device=dev)
        gens = [torch.Generator().manual_seed(s.seed) if s.seed is not None else None for s in batch]
        kmax = max((s.top_k for s in batch if s.logprobs), default=0)
        want_lp = any(s.logprobs for s in batch)
        with torch.inference_mode():
            if max_new == 1:
                logits = _last_logits(backend, seqs)
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


class _Row:
    """One sample's tokens as they arrive: end of turn, stop strings, length, streaming."""

    def __init__(self, engine: _TokenEngine, sample: Sample) -> None:
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
            entry = {"token": text, "logprob": _finite(logprob), "bytes": raw, "top_logprobs": []}
            for i, v in top[: s.top_k]:
                t, b = self.e.piece(i)
                entry["top_logprobs"].append({"token": t, "logprob": _finite(v), "bytes": b})
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
            safe = len(self.text) - _held_back(self.text, s.stop)
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


class _BackendEngine:
    """Any backend through its protocol: ``generate`` (stop strings applied to the text
    afterwards) and, for greedy one-token requests, ``top_logprobs``."""

    tokens = False

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def context_window(self) -> int:
        return int(self.backend.context_window)

    @property
    def has_top_logprobs(self) -> bool:
        return callable(getattr(self.backend, "top_logprobs", None)) or all(
            hasattr(self.backend, a) for a in ("model", "tokenizer", "encode"))

    def can_logprobs(self, max_tokens: int, temperature: float) -> bool:
        return self.has_top_logprobs and max_tokens == 1 and temperature == 0

    def count(self, prompt: Conversation) -> int:
        return int(self.backend.count_tokens(prompt))

    def key(self, s: Sample) -> Any:
        return (s.logprobs, s.max_tokens, s.temperature, s.top_p, s.seed)

    def run(self, batch: list[Sample]) -> list[SampleResult]:
        convs = [s.prompt for s in batch]
        first = batch[0]
        if first.logprobs:  # greedy, one token: the top token is the answer
            k = max(max(s.top_k for s in batch), 1)
            tops = top_logprobs(self.backend, convs, k)  # type: ignore[arg-type]
            out = []
            for s, top in zip(batch, tops):
                def entry(t: str, v: float) -> dict[str, Any]:
                    return {"token": t, "logprob": v, "bytes": list(t.encode())}
                e = {**entry(*top[0]), "top_logprobs": [entry(t, v) for t, v in top[: s.top_k]]}
                out.append(SampleResult(top[0][0], "length", s.prompt_tokens, 1, [e]))
            return out
        params = SamplingParams(max_new_tokens=first.max_tokens, temperature=first.temperature,
                                top_p=first.top_p, seed=first.seed)
        gens = self.backend.generate(convs, params)  # type: ignore[arg-type]
        out = []
        for s, g in zip(batch, gens):
            text, finish = g.text, g.finish_reason
            cut = find_stop(text, s.stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            out.append(SampleResult(text, finish, g.prompt_tokens or s.prompt_tokens, g.completion_tokens))
        return out


def make_engine(backend: Backend) -> _TokenEngine | _BackendEngine:
    """The token-level engine for a transformers backend, else the protocol-level one."""
    if all(hasattr(backend, a) for a in ("model", "tokenizer", "encode", "_prefill", "_eos_ids")):
        return _TokenEngine(backend)
    return _BackendEngine(backend)


# --- micro-batching -----------------------------------------------------------------


class _Batcher:
    """One worker thread: gathers samples for ``wait_s`` into batches and runs them on the engine."""

    def __init__(self, engine: Any, max_batch: int, wait_s: float) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[Sample] = queue.Queue()
        self._held: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cai-serve-batcher", daemon=True)
        self._thread.start()
        self.batches = 0

    def submit(self, sample: Sample) -> Future:
        self._queue.put(sample)
        return sample.future

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _next(self, timeout: float) -> Sample | None:
        if self._held:
            return self._held.pop(0)
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._next(0.1)
            if first is None:
                continue
            key = self.engine.key(first)
            batch, others = [first], []
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                # Held-back samples first (they are older), then new arrivals until the deadline.
                s = self._held.pop(0) if self._held else None
                if s is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        s = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                (batch if self.engine.key(s) == key else others).append(s)
            self._held = others + self._held
            self._execute(batch)

    def _execute(self, batch: list[Sample]) -> None:
        batch = [s for s in batch if not (s.cancelled and s.future.cancel())]
        if not batch:
            return
        try:
            results = self.engine.run(batch)
            self.batches += 1
        except BaseException as e:  # hand the failure to every waiting request
            for s in batch:
                if not s.future.done():
                    s.future.set_exception(e)
            return
        for s, r in zip(batch, results):
            if not s.future.done():
                s.future.set_result(r)


# --- request parsing ----------------------------------------------------------------

#: Fields read (or checked against their no-op value); anything else is refused.
_COMMON = {"model", "stream", "stream_options", "n", "max_tokens", "temperature", "top_p", "stop", "seed",
           "presence_penalty", "frequency_penalty", "logit_bias", "user",
           # vLLM's extensions, at their default (no-op) values only
           "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "skip_special_tokens",
           "include_stop_str_in_output", "best_of", "echo"}
_CHAT = _COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "tools",
                   "tool_choice", "functions", "function_call", "parallel_tool_calls",
                   "continue_final_message", "add_generation_prompt"}
_COMPLETION = _COMMON | {"prompt", "logprobs", "suffix", "add_special_tokens"}
#: field -> the values that change nothing (null always does)
_NO_OP: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "top_k": (-1, 0), "min_p": (0,),
    "repetition_penalty": (1,), "min_tokens": (0,), "ignore_eos": (False,), "skip_special_tokens": (True,),
    "include_stop_str_in_output": (False,), "echo": (False,), "tools": ([],), "functions": ([],),
    "tool_choice": ("none", "auto"), "function_call": ("none", "auto"), "suffix": ("",),
}


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise _unsupported(name)
    for name, ok in _NO_OP.items():
        value = body.get(name)
        if value is not None and not any(_same(value, o) for o in ok):
            raise _unsupported(name, f" (only {' or '.join(json.dumps(o) for o in ok)})")
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise _unsupported("response_format", " (only {\"type\": \"text\"}); constrain the output client-side")


def _same(value: Any, ok: Any) -> bool:
    """``value == ok`` without True standing in for 1 (or False for 0)."""
    if isinstance(value, bool) or isinstance(ok, bool):
        return value is ok
    return value == ok


def _number(body: dict[str, Any], name: str, default: Any, kind: type, lo: float, hi: float) -> Any:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RequestError(f"'{name}' must be a number in [{lo}, {hi}]", param=name)
    if kind is int and value != int(value):
        raise RequestError(f"'{name}' must be an integer", param=name)
    return kind(value)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    raw = body.get("stop")
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > MAX_STOP:
        raise RequestError(f"'stop' must be a non-empty string or a list of at most {MAX_STOP}", param="stop")
    return tuple(items)


def _parse_messages(raw: Any) -> Conversation:
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    conv: Conversation = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            hint = " (tools are not supported)" if role in ("tool", "function") else ""
            raise RequestError(f"messages[{i}]: needs a role of {sorted(ROLES)}{hint}", param="messages")
        extra = set(m) - {"role", "content", "name"}
        if m.get("name") or extra - {"tool_calls", "refusal"} or m.get("tool_calls"):
            what = "name" if m.get("name") else sorted(extra)[0]
            raise RequestError(f"messages[{i}]: '{what}' is not supported by cai serve", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if any(not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str)
                   for p in content):
                raise RequestError(f"messages[{i}]: only text content parts are supported", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}]: content must be a string", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        conv.append({"role": role, "content": content})
    return conv


@dataclass
class _Plan:
    """A validated request: its prompts and per-sample settings."""

    kind: str  # "chat" or "completion"
    prompts: list[Any]
    prompt_tokens: list[int]
    n: int
    max_tokens: list[int]
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    logprobs: bool
    top_k: int
    stream: bool
    include_usage: bool
    samples: list[Sample] = field(default_factory=list)


class ChatServer:
    """Serve ``backend`` at ``http://host:port/v1``; ``port=0`` picks a free port.

    Use as a context manager, or ``start()`` (background thread) / ``serve_forever()``
    and ``close()``. If ``api_key_env`` names a set variable, requests must carry
    ``Authorization: Bearer <that key>`` (``/health`` excepted).
    ``chat_completion(body)`` and ``completion(body)`` answer a request body in
    process (no HTTP), raising ``ApiError``.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str | None = None,
        max_batch: int = 32,
        batch_wait_s: float = 0.01,
        api_key_env: str | None = None,
    ) -> None:
        self.backend = backend
        self.model_name = model_name or backend.model_id
        from cai.backends.openai import read_api_key

        self._key = read_api_key(api_key_env)  # stripped, like the clients' copy of it
        if api_key_env and not self._key:
            raise UserInputError(f"${api_key_env} is empty; set it to the key clients must send")
        self.engine = make_engine(backend)
        self.created = int(time.time())
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise UserInputError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None
        self.batcher = _Batcher(self.engine, max_batch, batch_wait_s)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"

    # --- lifecycle -----------------------------------------------------------------

    def _uvicorn(self) -> Any:
        import uvicorn

        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, log_config=None,
                                lifespan="off", ws="none", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        return self._server

    def start(self) -> "ChatServer":
        server = self._uvicorn()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self._sock]},
                                        name="cai-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            raise RuntimeError("cai serve did not start")
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (KeyboardInterrupt, after a graceful shutdown)."""
        self._uvicorn().run(sockets=[self._sock])

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread:
            self._thread.join(timeout=10)
        self.batcher.close()
        self._sock.close()

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- requests, in process --------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self._key is None:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {self._key}".encode())

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "cai",
                "max_model_len": self.engine.context_window}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model(self.model_name)]}

    def model(self, model_id: str) -> dict[str, Any]:
        self._check_model(model_id)
        return self._model(self.model_name)

    def _check_model(self, name: Any) -> None:
        if name is None:
            return  # cai serve serves one model: no name means that one
        if not isinstance(name, str):
            raise RequestError("'model' must be a string", param="model")
        if name != self.model_name:
            raise ApiError(f"The model `{name}` does not exist. This server serves `{self.model_name}`.",
                           status=404, param="model", code="model_not_found")

    def chat_completion(self, body: Any) -> dict[str, Any]:
        plan = self.plan_chat(body)
        if plan.stream:
            raise RequestError("stream=true needs the HTTP endpoint", param="stream")
        return self._respond(plan, [f.result() for f in self._submit(plan)])

    def completion(self, body: Any) -> dict[str, Any]:
        plan = self.plan_completion(body)
        if plan.stream:
            raise RequestError("stream=true needs the HTTP endpoint", param="stream")
        return self._respond(plan, [f.result() for f in self._submit(plan)])

    # --- validation ----------------------------------------------------------------

    def _common(self, body: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        self._check_model(body.get("model"))
        _check_fields(body, allowed)
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise RequestError("'stream' must be a boolean", param="stream")
        opts = body.get("stream_options")
        include_usage = False
        if opts is not None:
            if not stream:
                raise RequestError("'stream_options' needs stream=true", param="stream_options")
            if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"} \
                    or opts.get("continuous_usage_stats"):
                raise _unsupported("stream_options", " (only include_usage)")
            include_usage = bool(opts.get("include_usage"))
        n = _number(body, "n", 1, int, 1, MAX_N)
        best_of = body.get("best_of")
        if best_of is not None and best_of != n:
            raise _unsupported("best_of", " (only equal to n)")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError("'seed' must be an integer", param="seed")
        return {
            "stream": stream, "include_usage": include_usage, "n": n, "seed": seed, "stop": _stop(body),
            "temperature": _number(body, "temperature", 1.0, float, 0, 2),
            "top_p": _number(body, "top_p", 1.0, float, 0, 1),
        }

    def _lengths(self, body: dict[str, Any], field_name: str, counts: list[int], default: int) -> list[int]:
        """max_tokens per prompt; the request is refused when a prompt and it exceed the window."""
        window = self.engine.context_window
        asked = body.get(field_name)
        if asked is not None:
            asked = _number({field_name: asked}, field_name, None, int, 1, 10_000_000)
        out = []
        for count in counts:
            room = window - count
            want = asked if asked is not None else min(default, room)
            if want < 1 or count + want > window:
                raise RequestError(
                    f"This model's maximum context length is {window} tokens. However, you requested "
                    f"{count + max(want, 1)} tokens ({count} in the messages, {max(want, 1)} in the completion). "
                    "Please reduce the length of the messages or completion.",
                    param="messages", code="context_length_exceeded")
            out.append(want)
        return out

    def plan_chat(self, body: Any) -> _Plan:
        c = self._common(body, _CHAT)
        conv = _parse_messages(body.get("messages"))
        continues = conv[-1]["role"] == "assistant"
        cfm, agp = body.get("continue_final_message"), body.get("add_generation_prompt")
        for name, v in (("continue_final_message", cfm), ("add_generation_prompt", agp)):
            if v is not None and not isinstance(v, bool):
                raise RequestError(f"'{name}' must be a boolean", param=name)
        if cfm and agp:
            raise RequestError("continue_final_message and add_generation_prompt cannot both be true")
        if cfm and not continues:
            raise RequestError("continue_final_message needs the last message to be the assistant's",
                               param="continue_final_message")
        if continues and cfm is False:
            raise _unsupported("continue_final_message", ": a final assistant message is always continued")
        if not continues and agp is False:
            raise _unsupported("add_generation_prompt", ": a conversation ending with a user turn gets one")
        logprobs = body.get("logprobs") or False
        if not isinstance(logprobs, bool):
            raise RequestError("'logprobs' must be a boolean", param="logprobs")
        k = _number(body, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS)  # without logprobs: nothing to return
        prompt = self.engine.chat_ids(conv) if self.engine.tokens else conv
        count = len(prompt) if self.engine.tokens else self.engine.count(conv)
        field_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        lengths = self._lengths(body, field_name, [count], DEFAULT_CHAT_MAX_TOKENS)
        plan = _Plan(
            "chat", [prompt], [count], c["n"], lengths, c["temperature"], c["top_p"], c["seed"], c["stop"],
            logprobs, k, c["stream"], c["include_usage"])
        self._check_logprobs(plan)
        return plan

    def plan_completion(self, body: Any) -> _Plan:
        c = self._common(body, _COMPLETION)
        if not self.engine.tokens:
            raise RequestError(f"/v1/completions needs a backend with a tokenizer; {type(self.backend).__name__} "
                               "takes conversations only: use /v1/chat/completions")
        add_special = body.get("add_special_tokens")
        if add_special is not None and not isinstance(add_special, bool):
            raise RequestError("'add_special_tokens' must be a boolean", param="add_special_tokens")
        raw = body.get("prompt")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(_is_id(x) for x in raw)):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise RequestError("'prompt' must be a string, a list of token ids, or a non-empty list of those",
                               param="prompt")
        prompts = []
        for p in raw:
            if isinstance(p, str):
                ids = self.engine.text_ids(p, add_special)
            elif isinstance(p, list) and all(_is_id(x) for x in p):
                ids = list(p)
                if any(not 0 <= x < self.engine.vocab for x in ids):
                    raise RequestError(f"token ids must lie in [0, {self.engine.vocab})", param="prompt")
            else:
                raise RequestError("each prompt must be a string or a list of token ids", param="prompt")
            if not ids:
                raise RequestError("a prompt is empty", param="prompt")
            prompts.append(ids)
        lp = body.get("logprobs")
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_TOP_LOGPROBS):
            raise RequestError(f"'logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}]", param="logprobs")
        counts = [len(p) for p in prompts]
        lengths = self._lengths(body, "max_tokens", counts, DEFAULT_COMPLETION_MAX_TOKENS)
        return _Plan("completion", prompts, counts, c["n"], lengths, c["temperature"], c["top_p"], c["seed"],
                     c["stop"], lp is not None, lp or 0, c["stream"], c["include_usage"])

    def _check_logprobs(self, plan: _Plan) -> None:
        if plan.logprobs and not all(self.engine.can_logprobs(m, plan.temperature) for m in plan.max_tokens):
            name = type(self.backend).__name__
            if not getattr(self.engine, "has_top_logprobs", True):
                raise RequestError(f"backend {name} cannot return logprobs", param="logprobs")
            raise RequestError(f"backend {name} returns logprobs only for greedy one-token requests "
                               "(max_tokens=1, temperature=0)", param="logprobs")

    def _submit(self, plan: _Plan, emit: Callable[[int, str, list], None] | None = None) -> list[Future]:
        """Queue every sample (prompt-major, then n); ``emit(choice, text, entries)`` streams."""
        futures = []
        for p, (prompt, count, max_tokens) in enumerate(zip(plan.prompts, plan.prompt_tokens, plan.max_tokens)):
            for j in range(plan.n):
                index = p * plan.n + j
                seed = plan.seed
                if seed is not None and j:
                    seed = (seed * 1_000_003 + j) % (2**63)  # n samples differ, reproducibly
                s = Sample(prompt, count, max_tokens, plan.temperature, plan.top_p, seed, plan.stop,
                           plan.logprobs, plan.top_k,
                           emit=(lambda text, entries, i=index: emit(i, text, entries)) if emit else None)
                plan.samples.append(s)
                futures.append(self.batcher.submit(s))
        return futures

    # --- responses -----------------------------------------------------------------

    def _usage(self, plan: _Plan, results: list[SampleResult]) -> dict[str, int]:
        prompt = sum(plan.prompt_tokens)
        completion = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _respond(self, plan: _Plan, results: list[SampleResult]) -> dict[str, Any]:
        created = int(time.time())
        if plan.kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                        "logprobs": {"content": r.logprobs} if r.logprobs is not None else None,
                        "finish_reason": r.finish_reason} for i, r in enumerate(results)]
            return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": created,
                    "model": self.model_name, "choices": choices, "usage": self._usage(plan, results)}
        choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                    "logprobs": _legacy_logprobs(r.logprobs) if r.logprobs is not None else None}
                   for i, r in enumerate(results)]
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": created,
                "model": self.model_name, "choices": choices, "usage": self._usage(plan, results)}

    async def _events(self, plan: _Plan) -> AsyncIterator[str]:
        """Server-sent events for a streamed request; the samples are cancelled if the client leaves."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def put(*event: Any) -> None:  # from the batch thread
            try:
                loop.call_soon_threadsafe(q.put_nowait, event)
            except RuntimeError:  # the server has shut down: nobody is listening
                pass

        futures = self._submit(plan, lambda i, text, entries: put("delta", i, text, list(entries)))
        for i, f in enumerate(futures):
            f.add_done_callback(lambda f, i=i: put("done", i, f, None))
        chat = plan.kind == "chat"
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}" if chat else f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(i: int, text: str | None, entries: list | None, finish: str | None, role: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                    {} if text is None else {"content": text})
                choice = {"index": i, "delta": delta,
                          "logprobs": {"content": entries} if entries is not None and plan.logprobs else None,
                          "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": i, "text": text or "", "finish_reason": finish,
                          "logprobs": _legacy_logprobs(entries) if entries is not None and plan.logprobs else None}
                obj = "text_completion"
            payload: dict[str, Any] = {"id": cid, "object": obj, "created": created, "model": self.model_name,
                                       "choices": [choice]}
            if plan.include_usage:
                payload["usage"] = None
            return f"data: {json.dumps(payload)}\n\n"

        sent = [0] * len(futures)
        sent_entries = [0] * len(futures)
        results: list[SampleResult | None] = [None] * len(futures)
        try:
            if chat:
                for i in range(len(futures)):
                    yield chunk(i, None, None, None, role=True)
            left = len(futures)
            while left:
                kind, i, a, b = await q.get()
                if kind == "delta":
                    sent[i] += len(a)
                    sent_entries[i] += len(b)
                    yield chunk(i, a, b, None)
                    continue
                left -= 1
                error = a.exception() if not a.cancelled() else RequestError("cancelled")
                if error is not None:
                    e = _as_api_error(error)
                    yield f"data: {json.dumps(e.body())}\n\n"
                    return
                r = results[i] = a.result()
                rest, extra = r.text[sent[i]:], (r.logprobs or [])[sent_entries[i]:]
                if rest or extra:
                    yield chunk(i, rest, extra, None)
                yield chunk(i, None, None, r.finish_reason)
            if plan.include_usage:
                usage = self._usage(plan, [r for r in results if r is not None])
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield "data: " + json.dumps({"id": cid, "object": obj, "created": created, "model": self.model_name,
                                             "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for s in plan.samples:
                s.cancelled = True  # a client that left stops its rows at the next token

    # --- the ASGI app --------------------------------------------------------------

    def app(self) -> Any:
        """The Starlette application (served by uvicorn in ``start``/``serve_forever``)."""
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        def fail(e: ApiError) -> JSONResponse:
            return JSONResponse(e.body(), status_code=e.status)

        def guarded(handler: Callable[[Request], Any], auth: bool = True) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Any:
                if auth and not self.authorized(request.headers.get("authorization")):
                    return fail(ApiError("invalid API key", 401, "authentication_error", code="invalid_api_key"))
                try:
                    return await handler(request)
                except Exception as e:  # noqa: BLE001 - every failure gets an OpenAI-shaped body
                    return fail(_as_api_error(e))
            return endpoint

        async def read(request: Request) -> Any:
            raw = await request.body()
            try:
                return json.loads(raw or b"null")
            except ValueError:
                raise RequestError("the request body is not valid JSON") from None

        async def generate(request: Request, plan_fn: Callable[[Any], _Plan]) -> Any:
            plan = plan_fn(await read(request))
            if plan.stream:
                return StreamingResponse(self._events(plan), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            results = [await asyncio.wrap_future(f) for f in self._submit(plan)]
            return JSONResponse(self._respond(plan, results))

        async def chat(request: Request) -> Any:
            return await generate(request, self.plan_chat)

        async def completions(request: Request) -> Any:
            return await generate(request, self.plan_completion)

        async def models(request: Request) -> Any:
            return JSONResponse(self.models())

        async def model(request: Request) -> Any:
            return JSONResponse(self.model(request.path_params["model_id"]))

        async def health(request: Request) -> Any:
            return JSONResponse({"status": "ok"})

        async def http_error(request: Request, exc: Exception) -> JSONResponse:
            status = getattr(exc, "status_code", 500)
            message = f"no route {request.method} {request.url.path}" if status in (404, 405) else str(exc)
            return fail(ApiError(message, status, "invalid_request_error" if status < 500 else "server_error"))

        routes = [
            Route("/health", guarded(health, auth=False), methods=["GET"]),
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", guarded(model), methods=["GET"]),
            Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
            Route("/v1/completions", guarded(completions), methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _legacy_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Chat-style entries as /v1/completions' ``tokens``/``token_logprobs``/``top_logprobs``."""
    entries = entries or []
    offsets, pos = [], 0
    tops = []
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
        top: dict[str, float] = {}
        for t in e["top_logprobs"]:
            top.setdefault(t["token"], t["logprob"])
        top.setdefault(e["token"], e["logprob"])  # the sampled token is always there (OpenAI's rule)
        tops.append(top)
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": tops, "text_offset": offsets}


def _as_api_error(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, UserInputError):
        return RequestError(str(e))
    log.error("request failed", exc_info=e)
    return ApiError(f"backend error: {type(e).__name__}", 500, "server_error")


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0


__all__ = ["ChatServer", "ApiError", "RequestError", "top_logprobs", "make_engine", "find_stop"]
