"""A small OpenAI-compatible chat completions server over any cai backend (`cai serve`).

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions`` (no streaming,
``n=1``), with ``logprobs``/``top_logprobs`` for the first generated token.
Concurrent requests are gathered for a few milliseconds into one backend call,
so the backend still sees whole batches (the protocol's rule) while clients
send one conversation per request.

Semantics worth knowing:
- A conversation ending with an assistant message is continued (as every cai
  backend does), not answered with a new turn.
- ``logprobs`` describe the first generated position only: the top-k next tokens
  after the prompt. With ``max_tokens=1`` and ``temperature=0`` the answer is the
  top token itself and no generation runs (the choice-scoring path).
- Requests grouped into one batch share sampling settings; per-request ``seed``s
  in one batch collapse to the first one's (the transformers backend seeds per batch).

Top log-probs come from a backend's ``top_logprobs(conversations, k)`` method if
it has one, else from a transformers model and its ``encode`` (``TransformersBackend``), so
special-token text in a request stays plain text there too.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

from cai.backends.base import Backend, Conversation, SamplingParams
from cai.errors import UserInputError

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}
MAX_TOP_LOGPROBS = 20
TopTokens = list[tuple[str, float]]


class RequestError(Exception):
    """A bad request: answered with HTTP 400 and the message."""


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
    encoded = [backend.encode(c)[-limit:] for c in conversations]
    out: list[TopTokens] = []
    step = getattr(backend, "batch_size", 8)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for start in range(0, len(encoded), step):
        batch = encoded[start : start + step]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):  # left padding: the next token sits at the last column
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
        dev = backend.model.device
        with torch.inference_mode():
            logits = backend.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits[:, -1, :]
        values, indices = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
        for vals, idx in zip(values.tolist(), indices.tolist()):
            out.append([(tok.decode([i]), v) for i, v in zip(idx, vals)])
    return out


# --- micro-batching ---------------------------------------------------------------


@dataclass
class _Job:
    kind: str  # "generate" or "logprobs"
    key: Any  # jobs with equal keys can share one backend call
    conversation: Conversation
    arg: Any  # SamplingParams or k
    future: Future = field(default_factory=Future)


class _Batcher:
    """One worker thread: gathers jobs for ``wait_s`` into batches and calls the backend once per batch."""

    def __init__(self, backend: Backend, max_batch: int, wait_s: float) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._held: list[_Job] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cai-serve-batcher", daemon=True)
        self._thread.start()
        self.batches = 0

    def submit(self, job: _Job) -> Future:
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _next(self, timeout: float) -> _Job | None:
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
            batch, others = [first], []
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                # Held-back jobs first (they are older), then new arrivals until the deadline.
                job = self._held.pop(0) if self._held else None
                if job is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        job = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                (batch if job.key == first.key else others).append(job)
            self._held = others + self._held
            self._execute(batch)

    def _execute(self, batch: list[_Job]) -> None:
        convs = [j.conversation for j in batch]
        try:
            if batch[0].kind == "generate":
                results: list[Any] = self.backend.generate(convs, batch[0].arg)
            else:
                results = top_logprobs(self.backend, convs, batch[0].arg)
                results = [(r, self.backend.count_tokens(c)) for r, c in zip(results, convs)]
            self.batches += 1
        except BaseException as e:  # hand the failure to every waiting request
            for j in batch:
                j.future.set_exception(e)
            return
        for j, r in zip(batch, results):
            j.future.set_result(r)


# --- HTTP -------------------------------------------------------------------------


def _parse_messages(raw: Any) -> Conversation:
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list")
    conv: Conversation = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"messages[{i}]: needs a role of {sorted(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}]: content must be a string")
        conv.append({"role": m["role"], "content": content})
    return conv


def _number(body: dict[str, Any], name: str, default: Any, kind: type, lo: float, hi: float) -> Any:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RequestError(f"'{name}' must be a number in [{lo}, {hi}]")
    return kind(value)


class ChatServer:
    """Serve ``backend`` at ``http://host:port/v1``; ``port=0`` picks a free port.

    Use as a context manager, or ``start()`` (background thread) / ``serve_forever()``
    and ``close()``. If ``api_key_env`` names a set variable, requests must carry
    ``Authorization: Bearer <that key>``.
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
        self.batcher = _Batcher(backend, max_batch, batch_wait_s)
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._serving = False  # shutdown() would wait forever on a server that never served

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ChatServer":
        self._serving = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="cai-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._serving = True
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._serving:
            self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- request handling ----------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self._key is None:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {self._key}".encode())

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "owned_by": "cai",
                      "max_model_len": self.backend.context_window}],
        }

    def chat_completion(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        conv = _parse_messages(body.get("messages"))
        if body.get("stream"):
            raise RequestError("streaming is not supported by cai serve; send stream=false")
        if body.get("n", 1) != 1:
            raise RequestError("only n=1 is supported")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", 256, int, 1, 1_000_000)
        temperature = _number(body, "temperature", 1.0, float, 0, 2)
        top_p = _number(body, "top_p", 1.0, float, 0, 1)
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError("'seed' must be an integer")
        want_logprobs = bool(body.get("logprobs"))
        k = _number(body, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS)

        lp_future = None
        if want_logprobs:
            lp_future = self.batcher.submit(_Job("logprobs", ("logprobs", max(k, 1)), conv, max(k, 1)))
        if want_logprobs and max_tokens == 1 and temperature == 0:
            top, prompt_tokens = lp_future.result()
            text, finish, completion = top[0][0], "length", 1
        else:
            params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
            key = ("generate", max_tokens, temperature, top_p)
            gen = self.batcher.submit(_Job("generate", key, conv, params)).result()
            text, finish = gen.text, gen.finish_reason
            prompt_tokens, completion = gen.prompt_tokens, gen.completion_tokens
            top = lp_future.result()[0] if lp_future else None
        logprobs = None
        if top is not None:
            logprobs = {"content": [{
                "token": top[0][0], "logprob": top[0][1], "bytes": list(top[0][0].encode()),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top[:k]],
            }]}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish, "logprobs": logprobs}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "cai-serve"

            def log_message(self, fmt: str, *args: Any) -> None:  # never print headers (keys)
                log.debug("%s %s", self.address_string(), fmt % args)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
                self._send(status, {"error": {"message": message, "type": kind, "code": None}})

            def do_GET(self) -> None:
                if not server.authorized(self.headers.get("Authorization")):
                    return self._error(401, "invalid API key", "authentication_error")
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, server.models())
                self._error(404, f"no route {self.path}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not server.authorized(self.headers.get("Authorization")):
                    return self._error(401, "invalid API key", "authentication_error")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._error(404, f"no route {self.path}")
                try:
                    body = json.loads(raw or b"null")
                    self._send(200, server.chat_completion(body))
                except (ValueError, RequestError, UserInputError) as e:
                    self._error(400, str(e) or "invalid JSON")
                except Exception as e:  # a backend failure: the client may retry
                    log.exception("chat completion failed")
                    self._error(500, f"backend error: {type(e).__name__}", "server_error")

        return Handler


__all__ = ["ChatServer", "top_logprobs"]
