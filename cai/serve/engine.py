"""How a batch of samples is generated, and the thread that gathers requests into batches.

Over a transformers backend the server runs its own decode loop (``TokenEngine``,
`cai.serve.decode`). Any other backend (vLLM, Ray, an OpenAI-compatible one) is
driven through ``generate`` (``BackendEngine``): stop strings are applied to its text
afterwards, a stream sends the text in one piece, and log-probs are available only
where the backend has ``top_logprobs`` (greedy, ``max_tokens=1``), else refused.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Sequence

from cai.backends.base import Backend, Conversation, SamplingParams
from cai.serve.decode import TokenEngine, TopTokens, transformers_top_logprobs
from cai.serve.errors import RequestError
from cai.serve.samples import Sample, SampleResult, find_stop


def top_logprobs(backend: Backend, conversations: Sequence[Conversation], k: int) -> list[TopTokens]:
    """The k most likely next tokens (decoded text, log-prob) after each conversation."""
    own = getattr(backend, "top_logprobs", None)
    if callable(own):
        return own(conversations, k)
    if all(hasattr(backend, a) for a in ("model", "tokenizer", "encode")):
        return transformers_top_logprobs(backend, conversations, k)
    raise RequestError(f"backend {type(backend).__name__} cannot return logprobs")


class BackendEngine:
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


def make_engine(backend: Backend) -> TokenEngine | BackendEngine:
    """The token-level engine for a transformers backend, else the protocol-level one."""
    if all(hasattr(backend, a) for a in ("model", "tokenizer", "encode", "_prefill", "_eos_ids")):
        return TokenEngine(backend)
    return BackendEngine(backend)




class Batcher:
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

