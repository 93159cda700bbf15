"""HTTP to an OpenAI-compatible server: one request with retries, errors, the API key.

- Retries: 429, 5xx, timeouts and dropped connections are retried with
  exponential backoff, honouring ``Retry-After``; other 4xx fail at once.
  ``timeout`` bounds each socket operation (connect, each read), as in urllib.
- A request the server refuses as longer than its context window raises
  ``ContextLengthError`` with the numbers the server gives (how servers say it varies).
- The API key is read from an environment variable (surrounding whitespace
  stripped; a key with a line break or control character inside is refused
  without being shown), sent only in the ``Authorization`` header, and redacted
  from every error (keys of 8+ characters); it is never logged nor put in provenance.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from cai.errors import CaiError, UserInputError

log = logging.getLogger("cai.backends.openai")

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class BackendRequestError(CaiError):
    """The server kept failing after every retry (exit code 1; rerun the command to resume)."""


class RowError(UserInputError):
    """One request cannot be answered (too long, unsafe to send): that row fails, the others go on."""

    prompt_tokens: int | None = None


class ContextLengthError(RowError):
    """The server refused a request as longer than its context window (or it cannot fit one)."""

    def __init__(self, message: str, limit: int | None = None, prompt_tokens: int | None = None) -> None:
        super().__init__(message)
        self.limit, self.prompt_tokens = limit, prompt_tokens  # as the server says them, where it does


#: How servers say a prompt is too long: OpenAI/vLLM, llama.cpp, llama-cpp-python, TGI, ...
_CONTEXT_RE = re.compile(
    r"context[ _](length|window|size)|maximum context|exceeds? (the )?(available )?context|"
    r"too many tokens|prompt is too long|input is too long|input_validation_error.*tokens", re.I)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


def public_url(url: str) -> str:
    """The URL without any user:password part, for provenance and errors."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class HttpClient:
    """POSTs JSON to ``base_url`` (which ends in ``/v1``) with retries; the key stays in here."""

    def __init__(self, base_url: str, *, api_key_env: str, timeout: float, max_retries: int, backoff: float,
                 max_backoff: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url
        self.api_key_env = api_key_env
        # Kept private and out of repr: the key goes only into the Authorization header.
        self.__key = read_api_key(api_key_env)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._stats_lock = threading.Lock()
        self.retries = 0  # total retried requests, for the run summary

    @property
    def has_key(self) -> bool:
        return self.__key is not None

    def post(self, body: dict[str, Any], path: str = "/chat/completions") -> dict[str, Any]:
        """One request, retried with exponential backoff on 429/5xx/timeouts."""
        url = self.base_url + path
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
                log.info("retrying %s in %.2fs (%s)", public_url(url), delay, last)
                self._sleep(delay)
        raise BackendRequestError(
            f"{public_url(url)} failed {self.max_retries + 1} times; last error: {last}. "
            "Check the server, then rerun the same command to resume"
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.__key}"} if self.__key else {}

    def _once(self, url: str, data: bytes | None, headers: dict[str, str]) -> dict[str, Any]:
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            info = error_info(e)
            detail = self._redact(info["message"])
            if e.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code} {detail}", _parse_retry_after(e.headers.get("Retry-After"))) from None
            if e.code in (401, 403):
                raise UserInputError(
                    f"{public_url(url)} refused the request (HTTP {e.code}: {detail}); "
                    f"set a valid key in ${self.api_key_env}"
                ) from None
            message = f"{public_url(url)} rejected the request (HTTP {e.code}: {detail})"
            if e.code in (400, 413, 422) and is_context_error(info):
                raise ContextLengthError(message, *context_numbers(info)) from None
            raise UserInputError(message) from None
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

    def context_window(self, model_id: str) -> int | None:
        """``model_id``'s context window from ``GET /models`` (one try; None when not said)."""
        try:
            listing = self._once(self.base_url + "/models", None, self._headers())
        except (_Retryable, UserInputError) as e:
            log.info("no context window from %s/models (%s); using 8192", public_url(self.base_url), e)
            return None
        entries = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            return None
        mine = [m for m in entries if isinstance(m, dict) and m.get("id") == model_id] or \
            [m for m in entries if isinstance(m, dict)][:1]
        for m in mine:
            for source in (m, m.get("meta") or {}):
                for key in ("max_model_len", "context_length", "context_window", "n_ctx", "n_ctx_train"):
                    v = source.get(key) if isinstance(source, dict) else None
                    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                        return v
        return None

    def _redact(self, text: str) -> str:
        return redact(text, self.__key)[:300]


def error_info(e: urllib.error.HTTPError) -> dict[str, Any]:
    """The error body's message (first line), code, type and any token counts."""
    info: dict[str, Any] = {"message": str(e.reason), "code": None, "type": None, "raw": {}}
    try:
        body = e.read().decode(errors="replace")
    except Exception:  # noqa: BLE001
        return info
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body
    err = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(err, dict):
        info.update(code=err.get("code"), type=err.get("type"), raw=err)
        msg = err.get("message", err)
    else:
        msg = err
    if isinstance(parsed, dict) and "detail" in parsed and not isinstance(err, dict):  # FastAPI-style
        msg = parsed["detail"]
    text = str(msg)
    info["full"] = text
    info["message"] = text.splitlines()[0] if text else str(e.reason)
    return info


def is_context_error(info: dict[str, Any]) -> bool:
    if info.get("code") == "context_length_exceeded" or info.get("type") == "exceed_context_size_error":
        return True
    return bool(_CONTEXT_RE.search(str(info.get("full") or info.get("message") or "")))


def context_numbers(info: dict[str, Any]) -> tuple[int | None, int | None]:
    """(context window, prompt tokens) from the error, where the server says them."""
    raw, text = info.get("raw") or {}, str(info.get("full") or "")
    limit = raw.get("n_ctx") if isinstance(raw.get("n_ctx"), int) else None
    prompt = raw.get("n_prompt_tokens") if isinstance(raw.get("n_prompt_tokens"), int) else None
    m = re.search(r"maximum context length is (\d+)", text)
    if m and limit is None:
        limit = int(m.group(1))
    m = re.search(r"\((\d+) in the messages", text) or re.search(r"(\d+) (input|prompt) tokens", text)
    if m and prompt is None:
        prompt = int(m.group(1))
    return limit, prompt
