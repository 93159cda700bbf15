"""A backend over any OpenAI-compatible chat completions server (OpenAI, vLLM, llama.cpp, `cai serve`).

Stdlib only (urllib + a thread pool): no client SDK to keep in step with.

- Generation: one request per conversation, at most ``concurrency`` in flight,
  results in input order.
- Choice scoring: ``max_tokens=1, temperature=0, logprobs=true, top_logprobs=k``;
  each option is matched against the returned top tokens of the first generated
  token, forgiving whitespace and bracket variants ("A", " A", "(A", "A)").
  An option absent from the top-k gets a floor log-prob (the lowest returned
  one: its true value is at most that) and is listed in ``extra["missing"]``.
- Retries: 429, 5xx, timeouts and dropped connections are retried with
  exponential backoff, honouring ``Retry-After``; other 4xx fail at once.
  ``timeout`` bounds each socket operation (connect, each read), as in urllib.
- The API key is read from an environment variable (surrounding whitespace
  stripped; a key with a line break or control character inside is refused
  without being shown), sent only in the ``Authorization`` header, and redacted
  from every error (keys of 8+ characters); it is never logged nor put in provenance.

A conversation ending with an assistant message is sent as is. Servers differ:
OpenAI starts a new assistant turn after it; vLLM and `cai serve` continue it
when asked (``continue_final_message=True`` adds vLLM's
``continue_final_message``/``add_generation_prompt`` fields, which OpenAI rejects).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from cai.backends.base import ChoiceScores, Conversation, Generation, SamplingParams
from cai.errors import CaiError, UserInputError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class BackendRequestError(CaiError):
    """The server kept failing after every retry (exit code 1; rerun the command to resume)."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def option_key(text: str) -> str:
    """How an option or a returned token is compared: no spaces, brackets, or trailing punctuation."""
    return text.strip().lstrip("([{").rstrip(")]}.:,").strip()


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


#: Shorter keys are not secrets worth hiding, and replacing them would mangle messages
#: (the key "x" turned "maximum context length" into "ma***imum conte***t length").
MIN_REDACTED_KEY = 8


def read_api_key(env: str | None) -> str | None:
    """The key in ``$env`` with surrounding whitespace (a pasted newline, a CRLF file) removed.

    A key an HTTP header cannot carry (a line break, control or non-ASCII character
    inside) is refused with a one-line error that never shows the key.
    """
    if not env:
        return None
    key = (os.environ.get(env) or "").strip()
    if not key:
        return None
    bad = next((ch for ch in key if not 0x20 < ord(ch) < 0x7F), None)
    if bad is not None:
        if bad in "\r\n":
            what = "a line break"
        elif bad.isspace():
            what = "a space"
        elif ord(bad) < 0x80:
            what = "a control character"
        else:
            what = "a non-ASCII character"
        raise UserInputError(
            f"${env} holds {what} inside the key, which an HTTP header cannot carry; "
            f"set ${env} to the key alone"
        )
    return key


def redact(text: str, key: str | None) -> str:
    """``text`` with every copy of ``key`` replaced by ``***`` (keys of 8+ characters only)."""
    if key and len(key) >= MIN_REDACTED_KEY:
        text = text.replace(key, "***")
    return text


def _public_url(url: str) -> str:
    """The URL without any user:password part, for provenance and errors."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class OpenAIBackend:
    """Chat completions against ``base_url`` (which ends in ``/v1``) for ``model``."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        context_window: int = 8192,
        top_logprobs: int = 20,
        continue_final_message: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        **_ignored: Any,  # batch_size/device/dtype from the shared CLI options mean nothing here
    ) -> None:
        if concurrency < 1:
            raise UserInputError("concurrency must be at least 1")
        self.model_id = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise UserInputError(f"base URL '{_public_url(self.base_url)}' must start with http:// or https://")
        self.api_key_env = api_key_env
        # Kept private and out of describe()/repr: the key goes only into the Authorization header.
        self.__key = read_api_key(api_key_env)
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._context = context_window
        self.top_logprobs = top_logprobs
        self.continue_final_message = continue_final_message
        self._sleep = sleep
        self._stats_lock = threading.Lock()
        self.retries = 0  # total retried requests, for the run summary

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_id!r}, base_url={_public_url(self.base_url)!r})"

    # --- protocol ------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        return self._context

    def describe(self) -> dict[str, Any]:
        return {
            "base_url": _public_url(self.base_url),
            "api_key_env": self.api_key_env,
            "api_key_set": self.__key is not None,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout,
            "max_retries": self.max_retries,
        }

    def count_tokens(self, conversation: Conversation) -> int:
        # No tokenizer on this side: an estimate (~4 characters a token, plus per-message overhead).
        return sum(len(m["content"]) // 4 + 4 for m in conversation)

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        bodies = []
        for i, conv in enumerate(conversations):
            body = self._body(conv, max_tokens=params.max_new_tokens, temperature=params.temperature)
            if params.temperature > 0:
                body["top_p"] = params.top_p
            if params.seed is not None:
                body["seed"] = params.seed + i  # distinct but reproducible per row
            bodies.append(body)
        return [self._generation(r) for r in self._post_all(bodies)]

    def check_options(self, options: Sequence[str]) -> None:
        if len(options) < 2:
            raise UserInputError("choice scoring needs at least two options")
        keys = [option_key(o) for o in options]
        if any(not k for k in keys):
            raise UserInputError(f"options {list(options)}: each needs a letter or word, like 'A' and 'B'")
        if len(set(keys)) != len(keys):
            raise UserInputError(
                f"options {list(options)} look the same once spaces and brackets are removed; use distinct options"
            )

    def choice_logprobs(self, conversations: Sequence[Conversation], options: Sequence[str]) -> list[ChoiceScores]:
        self.check_options(options)
        bodies = [
            self._body(conv, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.top_logprobs)
            for conv in conversations
        ]
        return [self._scores(r, options) for r in self._post_all(bodies)]

    # --- requests ------------------------------------------------------------------

    def _body(self, conv: Conversation, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_id, "messages": [dict(m) for m in conv], **fields}
        if self.continue_final_message and conv and conv[-1]["role"] == "assistant":
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    def _post_all(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not bodies:
            return []
        if len(bodies) == 1 or self.concurrency == 1:
            return [self._post(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            return list(pool.map(self._post, bodies))  # map keeps input order

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion, retried with exponential backoff on 429/5xx/timeouts."""
        url = self.base_url + "/chat/completions"
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._once(url, data, headers)
            except _Retryable as e:
                last = str(e)
                if attempt == self.max_retries:
                    break
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.75 + 0.5 * random.random())
                if e.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, e.retry_after))
                with self._stats_lock:
                    self.retries += 1
                log.info("retrying %s in %.2fs (%s)", _public_url(url), delay, last)
                self._sleep(delay)
        raise BackendRequestError(
            f"{_public_url(url)} failed {self.max_retries + 1} times; last error: {last}. "
            "Check the server, then rerun the same command to resume"
        )

    def _once(self, url: str, data: bytes, headers: dict[str, str]) -> dict[str, Any]:
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            detail = self._redact(_error_detail(e))
            if e.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code} {detail}", _parse_retry_after(e.headers.get("Retry-After"))) from None
            if e.code in (401, 403):
                raise UserInputError(
                    f"{_public_url(url)} refused the request (HTTP {e.code}: {detail}); "
                    f"set a valid key in ${self.api_key_env}"
                ) from None
            raise UserInputError(f"{_public_url(url)} rejected the request (HTTP {e.code}: {detail})") from None
        except (TimeoutError, socket.timeout):
            raise _Retryable(f"timed out after {self.timeout}s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {self.timeout}s") from None
            raise _Retryable(f"cannot connect ({self._redact(str(e.reason))})") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise _Retryable(f"connection dropped ({type(e).__name__})") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise _Retryable("server answered with invalid JSON") from None

    def _redact(self, text: str) -> str:
        return redact(text, self.__key)[:300]

    # --- responses -----------------------------------------------------------------

    def _generation(self, resp: dict[str, Any]) -> Generation:
        choice = _first_choice(resp)
        usage = resp.get("usage") or {}
        text = (choice.get("message") or {}).get("content") or ""
        return Generation(
            text=text.strip(),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )

    def _scores(self, resp: dict[str, Any], options: Sequence[str]) -> ChoiceScores:
        choice = _first_choice(resp)
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content:
            raise BackendRequestError(
                f"{_public_url(self.base_url)} returned no logprobs; choice scoring needs a server "
                "that supports logprobs and top_logprobs on chat completions"
            )
        first = content[0]
        top: dict[str, float] = {}
        for entry in first.get("top_logprobs") or []:
            top.setdefault(entry["token"], float(entry["logprob"]))
        top.setdefault(first.get("token", ""), float(first.get("logprob", -math.inf)))
        floor = min(top.values()) if top else -30.0
        keys = [option_key(o) for o in options]
        raw: list[float] = []
        missing: list[str] = []
        for opt, key in zip(options, keys):
            # Several tokens can spell the same option ("A", " A", "(A"): add their probabilities.
            hits = [lp for tok, lp in top.items() if option_key(tok) == key]
            if hits:
                m = max(hits)
                raw.append(m + math.log(sum(math.exp(h - m) for h in hits)))
            else:
                raw.append(floor)
                missing.append(opt)
        m = max(raw)
        z = m + math.log(sum(math.exp(r - m) for r in raw))
        extra: dict[str, Any] = {"raw_logprobs": raw, "top_tokens": top}
        if missing:
            extra["missing"] = missing
            extra["floor_logprob"] = floor
        return ChoiceScores(logprobs=[r - z for r in raw], extra=extra)


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode(errors="replace")
        msg = json.loads(body).get("error", body)
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        return str(msg).splitlines()[0] if str(msg) else e.reason
    except Exception:
        return str(e.reason)


def _first_choice(resp: dict[str, Any]) -> dict[str, Any]:
    choices = resp.get("choices") or []
    if not choices:
        raise BackendRequestError("server answered without choices")
    return choices[0]


__all__ = ["OpenAIBackend", "BackendRequestError", "option_key"]
