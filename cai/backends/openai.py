"""A backend over any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, `cai serve`).

Stdlib only (urllib + a thread pool): no client SDK to keep in step with.

- Generation: one chat completion per conversation, at most ``concurrency`` in
  flight, results in input order. A conversation ending with an assistant message
  is continued through raw completions when ``scoring="completions"`` (below), else
  sent as is (``continue_final_message=True`` adds vLLM's fields for it).
- Choice scoring (``max_tokens=1, temperature=0`` and the top-k log-probs of the
  next token) asks the server to *continue* the judge's assistant prefix
  (``The better response is (``); how is the ``scoring`` option, recorded in
  provenance:

  * ``"completions"``: the chat template is rendered here, with the served model's
    tokenizer (``tokenizer=``, a local dir or hub id; ``chat_template=`` overrides its
    template), and sent to ``/v1/completions`` as token ids (``raw_prompt="ids"``, so
    content never becomes control tokens) or as text (``raw_prompt="text"``, for
    servers that take no ids; a row whose content spells special tokens then fails).
    Works with every server that has raw completions (vLLM, llama.cpp, `cai serve`).
  * ``"continue_final"``: chat completions with ``continue_final_message: true,
    add_generation_prompt: false`` (vLLM, `cai serve`).
  * ``"chat"``: plain chat completions (OpenAI itself, which answers an assistant
    prefix with a new turn: scores there only mean something without a prefix).

  Default: ``completions`` when a tokenizer is known (``tokenizer=``,
  ``$CAI_OPENAI_TOKENIZER``, or ``model`` is a local model dir), ``chat`` for
  api.openai.com, else ``continue_final``. Each option is matched against the top
  tokens, forgiving whitespace and bracket variants ("A", " A", "(A", "A)"). An option
  absent from the top-k makes that row a failure, never a floor value: its log-probs
  are NaN and ``extra["error"]`` says why (``extra["error_kind"]``: ``option_missing``).
- A request the server refuses as longer than its context window fails that item
  only: a scoring row becomes a failure (``error_kind: context_length``); a
  generation is retried with the completion budget the server reports room for, else
  comes back empty and marked truncated. When every request of a call is refused so,
  generation raises ``ContextLengthError`` (the settings are wrong, not one prompt).
  The context window is read from the server's ``/v1/models`` (``max_model_len``,
  llama.cpp's ``n_ctx_train``) unless given; token counts are exact with a tokenizer.
- Retries: 429, 5xx, timeouts and dropped connections are retried with
  exponential backoff, honouring ``Retry-After``; other 4xx fail at once.
  ``timeout`` bounds each socket operation (connect, each read), as in urllib.
- The API key is read from an environment variable (surrounding whitespace
  stripped; a key with a line break or control character inside is refused
  without being shown), sent only in the ``Authorization`` header, and redacted
  from every error (keys of 8+ characters); it is never logged nor put in provenance.

Options not on the CLI come from the environment: ``$CAI_OPENAI_SCORING``,
``$CAI_OPENAI_TOKENIZER``, ``$CAI_OPENAI_CHAT_TEMPLATE`` (a template file or text),
``$CAI_OPENAI_RAW_PROMPT``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import random
import re
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
SCORING_MODES = ("completions", "continue_final", "chat")
RAW_PROMPTS = ("ids", "text")


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
    """Chat (and raw) completions against ``base_url`` (which ends in ``/v1``) for ``model``."""

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
        context_window: int | None = None,
        top_logprobs: int = 20,
        continue_final_message: bool = False,
        scoring: str | None = None,
        tokenizer: str | None = None,
        chat_template: str | None = None,
        raw_prompt: str | None = None,
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
        self.tokenizer_source = tokenizer or os.environ.get("CAI_OPENAI_TOKENIZER") or _local_model_dir(model)
        self.chat_template = chat_template or os.environ.get("CAI_OPENAI_CHAT_TEMPLATE") or None
        self.scoring = self._scoring_mode(scoring or os.environ.get("CAI_OPENAI_SCORING") or "auto")
        self.raw_prompt = (raw_prompt or os.environ.get("CAI_OPENAI_RAW_PROMPT") or "ids").strip().lower()
        if self.raw_prompt not in RAW_PROMPTS:
            raise UserInputError(f"raw_prompt '{self.raw_prompt}' unknown; use one of: {', '.join(RAW_PROMPTS)}")
        self._encoder: Any = None
        self._lock = threading.Lock()
        self._sleep = sleep
        self._stats_lock = threading.Lock()
        self.retries = 0  # total retried requests, for the run summary

    def _scoring_mode(self, value: str) -> str:
        mode = value.strip().lower().replace("-", "_")
        if mode == "auto":
            if self.tokenizer_source:
                return "completions"
            host = urllib.parse.urlsplit(self.base_url).hostname or ""
            return "chat" if host.endswith("openai.com") else "continue_final"
        if mode not in SCORING_MODES:
            raise UserInputError(f"scoring '{value}' unknown; use one of: auto, {', '.join(SCORING_MODES)}")
        if mode == "completions" and not self.tokenizer_source:
            raise UserInputError(
                "scoring=completions renders the chat template here: give the served model's tokenizer "
                "(tokenizer=, a local model dir or hub id, or $CAI_OPENAI_TOKENIZER)"
            )
        return mode

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_id!r}, base_url={_public_url(self.base_url)!r})"

    # --- protocol ------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        if self._context is None:
            with self._lock:
                if self._context is None:
                    self._context = self._server_context_window() or 8192
        return self._context

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "base_url": _public_url(self.base_url),
            "api_key_env": self.api_key_env,
            "api_key_set": self.__key is not None,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout,
            "max_retries": self.max_retries,
            "scoring": self.scoring,
            "top_logprobs": self.top_logprobs,
        }
        if self.scoring == "completions":
            info.update(tokenizer=self.tokenizer_source, raw_prompt=self.raw_prompt,
                        chat_template="given" if self.chat_template else "tokenizer")
        return info

    def count_tokens(self, conversation: Conversation) -> int:
        if self.tokenizer_source:
            return len(self.encoder.encode(conversation))
        # No tokenizer on this side: an estimate (~4 characters a token, plus per-message overhead).
        return sum(len(m["content"]) // 4 + 4 for m in conversation)

    @property
    def encoder(self) -> Any:
        """The served model's chat template and tokenizer, here (a ``ChatEncoder``)."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._load_encoder()
        return self._encoder

    def _load_encoder(self) -> Any:
        from transformers import AutoTokenizer

        from cai.backends.transformers import FALLBACK_CHAT_TEMPLATE, ChatEncoder

        try:
            tok = AutoTokenizer.from_pretrained(self.tokenizer_source)
        except Exception as e:  # noqa: BLE001 - any loader failure is a bad setting
            raise UserInputError(
                f"cannot load tokenizer '{self.tokenizer_source}' for scoring=completions "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); give the served model's "
                "tokenizer (a local model dir or hub id)"
            ) from None
        template = self.chat_template
        if template and os.path.isfile(template):
            with open(template, encoding="utf-8") as f:
                template = f.read()
        if not template and not getattr(tok, "chat_template", None):
            template = FALLBACK_CHAT_TEMPLATE
        return ChatEncoder(tok, template)

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        requests = []
        for i, conv in enumerate(conversations):
            fields: dict[str, Any] = {"max_tokens": params.max_new_tokens, "temperature": params.temperature}
            if params.temperature > 0:
                fields["top_p"] = params.top_p
            if params.seed is not None:
                fields["seed"] = params.seed + i  # distinct but reproducible per row
            if self.scoring == "completions" and conv and conv[-1]["role"] == "assistant":
                requests.append(self._raw_request(conv, fields))  # continue the prefix, whatever the server
            else:
                requests.append(("/chat/completions", self._body(conv, **fields)))
        replies = self._post_all(requests, rows_fail=True, retry_shorter=True)
        errors = [r for r in replies if isinstance(r, RowError)]
        if errors and len(errors) == len(replies):
            raise errors[0]  # every prompt refused: the settings, not one prompt
        out = []
        for conv, req, r in zip(conversations, requests, replies):
            if isinstance(r, RowError):
                log.warning("one generation failed: %s", r)
                out.append(Generation(text="", prompt_tokens=r.prompt_tokens or self.count_tokens(conv),
                                      completion_tokens=0, finish_reason="length", truncated=True))
            else:
                out.append(self._generation(r, req[0]))
        return out

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
        """Per conversation, the options' log-probs as the next token; a failed row has NaN
        log-probs and ``extra["error"]`` (an option absent from the top tokens, a prompt too long)."""
        self.check_options(options)
        fields = {"max_tokens": 1, "temperature": 0.0}
        requests: list[Any] = []
        for conv in conversations:
            if self.scoring == "completions":
                requests.append(self._raw_request(conv, {**fields, "logprobs": self.top_logprobs}))
            else:
                body = self._body(conv, force_continue=self.scoring == "continue_final", **fields,
                                  logprobs=True, top_logprobs=self.top_logprobs)
                requests.append(("/chat/completions", body))
        replies = self._post_all(requests, rows_fail=True)
        out = []
        for r in replies:
            if isinstance(r, RowError):
                kind = "context_length" if isinstance(r, ContextLengthError) else "refused"
                out.append(self._failed(options, str(r), kind))
            else:
                out.append(self._scores(r, options))
        return out

    # --- requests ------------------------------------------------------------------

    def _body(self, conv: Conversation, force_continue: bool = False, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_id, "messages": [dict(m) for m in conv], **fields}
        if (self.continue_final_message or force_continue) and conv and conv[-1]["role"] == "assistant":
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    def _raw_request(self, conv: Conversation, fields: dict[str, Any]) -> Any:
        """``("/completions", body)`` with the conversation rendered here; or, when it cannot be
        sent safely as text, the exception that makes this row fail."""
        enc = self.encoder
        rendered = enc.render(conv)
        ids = enc.encode(rendered)
        if self.raw_prompt == "ids":
            prompt: Any = ids
        else:
            # The server tokenizes text with special tokens parsed: content that spells them would forge turns.
            if list(enc.tokenizer(rendered.text, add_special_tokens=False)["input_ids"]) != list(ids):
                return RowError("the conversation spells special tokens, which raw_prompt=text would send "
                                "as control tokens; use raw_prompt=ids")
            prompt = rendered.text
        limit = self._context
        if limit is not None and len(ids) >= limit:
            return ContextLengthError(f"the prompt needs {len(ids)} tokens; the context window is {limit}",
                                      limit, len(ids))
        return ("/completions", {"model": self.model_id, "prompt": prompt, **fields})

    def _post_all(self, requests: list[Any], rows_fail: bool = False, retry_shorter: bool = False) -> list[Any]:
        """Replies in input order. With ``rows_fail``, a ``RowError`` (a prompt too long, or a request
        refused before sending, given as that error) is returned in its slot instead of raised."""
        if not requests:
            return []

        def one(req: Any) -> Any:
            if isinstance(req, RowError):
                if rows_fail:
                    return req
                raise req
            path, body = req
            try:
                return self._post(body, path)
            except ContextLengthError as e:
                room = (e.limit - e.prompt_tokens) if e.limit and e.prompt_tokens is not None else 0
                if retry_shorter and room >= 1 and body.get("max_tokens", 0) > room:
                    try:  # the prompt fits: answer within the room left
                        return self._post({**body, "max_tokens": room}, path)
                    except ContextLengthError as again:
                        e = again
                if rows_fail:
                    return e
                raise

        if len(requests) == 1 or self.concurrency == 1:
            replies = [one(r) for r in requests]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
                replies = list(pool.map(one, requests))  # map keeps input order
        return replies

    def _post(self, body: dict[str, Any], path: str = "/chat/completions") -> dict[str, Any]:
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
                log.info("retrying %s in %.2fs (%s)", _public_url(url), delay, last)
                self._sleep(delay)
        raise BackendRequestError(
            f"{_public_url(url)} failed {self.max_retries + 1} times; last error: {last}. "
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
            info = _error_info(e)
            detail = self._redact(info["message"])
            if e.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code} {detail}", _parse_retry_after(e.headers.get("Retry-After"))) from None
            if e.code in (401, 403):
                raise UserInputError(
                    f"{_public_url(url)} refused the request (HTTP {e.code}: {detail}); "
                    f"set a valid key in ${self.api_key_env}"
                ) from None
            message = f"{_public_url(url)} rejected the request (HTTP {e.code}: {detail})"
            if e.code in (400, 413, 422) and _is_context_error(info):
                raise ContextLengthError(message, *_context_numbers(info)) from None
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

    def _server_context_window(self) -> int | None:
        """The served model's context window from ``GET /models`` (one try; None when not said)."""
        try:
            listing = self._once(self.base_url + "/models", None, self._headers())
        except (_Retryable, UserInputError) as e:
            log.info("no context window from %s/models (%s); using 8192", _public_url(self.base_url), e)
            return None
        entries = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            return None
        mine = [m for m in entries if isinstance(m, dict) and m.get("id") == self.model_id] or \
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

    # --- responses -----------------------------------------------------------------

    def _generation(self, resp: dict[str, Any], path: str = "/chat/completions") -> Generation:
        choice = _first_choice(resp)
        usage = resp.get("usage") or {}
        if path == "/completions":
            text = choice.get("text") or ""
        else:
            text = (choice.get("message") or {}).get("content") or ""
        return Generation(
            text=text.strip(),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )

    def _failed(self, options: Sequence[str], reason: str, kind: str, **extra: Any) -> ChoiceScores:
        nan = float("nan")
        return ChoiceScores(logprobs=[nan] * len(options),
                            extra={"error": reason, "error_kind": kind, "scoring": self.scoring, **extra})

    def _scores(self, resp: dict[str, Any], options: Sequence[str]) -> ChoiceScores:
        top = _top_tokens(_first_choice(resp))
        if top is None:
            where = "/v1/completions" if self.scoring == "completions" else "chat completions"
            raise BackendRequestError(
                f"{_public_url(self.base_url)} returned no logprobs; choice scoring needs a server "
                f"that returns logprobs on {where}"
            )
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
                raw.append(float("nan"))
                missing.append(opt)
        if missing:
            best = ", ".join(f"{t!r} {v:.2f}" for t, v in sorted(top.items(), key=lambda kv: -kv[1])[:5])
            if self.scoring == "completions":
                hint = "the model puts its mass elsewhere; raise top_logprobs or check the prompt's prefix"
            else:
                hint = ("the server may have closed the assistant prefix and started a new turn; score through "
                        "raw completions: scoring=completions with the served model's tokenizer")
            reason = (f"option {', '.join(map(repr, missing))} not among the server's top {len(top)} next tokens "
                      f"({best}); {hint}")
            return self._failed(options, reason, "option_missing", missing=missing, top_tokens=top,
                                upper_bound_logprob=min(top.values()) if top else None)
        m = max(raw)
        z = m + math.log(sum(math.exp(r - m) for r in raw))
        extra: dict[str, Any] = {"raw_logprobs": raw, "top_tokens": top, "scoring": self.scoring}
        return ChoiceScores(logprobs=[r - z for r in raw], extra=extra)


def choice_failure(scores: ChoiceScores) -> str | None:
    """Why a row of ``choice_logprobs`` failed (NaN log-probs), or None for a scored row."""
    if any(isinstance(x, float) and math.isnan(x) for x in scores.logprobs):
        return str(scores.extra.get("error") or "the backend returned no score")
    return None


def _local_model_dir(model: str) -> str | None:
    """``model`` when it names a local model dir with a tokenizer (the served model's files)."""
    if model and os.path.isdir(model) and any(
            os.path.isfile(os.path.join(model, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return model
    return None


def _top_tokens(choice: dict[str, Any]) -> dict[str, float] | None:
    """The first generated position's top tokens, from chat-style or legacy completions log-probs."""
    lp = choice.get("logprobs") or {}
    content = lp.get("content") if isinstance(lp, dict) else None
    top: dict[str, float] = {}
    if content:
        first = content[0]
        for entry in first.get("top_logprobs") or []:
            top.setdefault(entry["token"], float(entry["logprob"]))
        if "token" in first and first.get("logprob") is not None:
            top.setdefault(first["token"], float(first["logprob"]))
        return top
    legacy = lp.get("top_logprobs") if isinstance(lp, dict) else None
    if legacy:
        for tok, v in (legacy[0] or {}).items():
            top.setdefault(tok, float(v))
        tokens, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
        if tokens and values and values[0] is not None:
            top.setdefault(tokens[0], float(values[0]))
        return top
    return None


def _error_info(e: urllib.error.HTTPError) -> dict[str, Any]:
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


def _is_context_error(info: dict[str, Any]) -> bool:
    if info.get("code") == "context_length_exceeded" or info.get("type") == "exceed_context_size_error":
        return True
    return bool(_CONTEXT_RE.search(str(info.get("full") or info.get("message") or "")))


def _context_numbers(info: dict[str, Any]) -> tuple[int | None, int | None]:
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


def _first_choice(resp: dict[str, Any]) -> dict[str, Any]:
    choices = resp.get("choices") or []
    if not choices:
        raise BackendRequestError("server answered without choices")
    return choices[0]


__all__ = ["OpenAIBackend", "BackendRequestError", "ContextLengthError", "RowError", "choice_failure", "option_key",
           "SCORING_MODES"]
