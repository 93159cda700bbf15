"""A backend over any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, `cai serve`).

Stdlib only (urllib + a thread pool): no client SDK to keep in step with.

- Generation: one chat completion per conversation, at most ``concurrency`` in
  flight, results in input order. A conversation ending with an assistant message
  is continued through raw completions when ``scoring="completions"`` (below), else
  sent as is (``continue_final_message=True`` adds vLLM's fields for it).
- Choice scoring asks the server to *continue* the judge's assistant prefix; how is the
  ``scoring`` mode (``completions``, ``continue_final``, ``chat``; `cai.backends.openai_scoring`).
  ``completions`` renders the chat template here, with the served model's tokenizer
  (``tokenizer=``, a local dir or hub id; ``chat_template=`` overrides its template), and
  sends token ids (``raw_prompt="ids"``, so content never becomes control tokens) or text
  (``raw_prompt="text"``, for servers that take no ids; a row whose content spells special
  tokens then fails). Default: ``completions`` when a tokenizer is known (``tokenizer=``,
  ``--tokenizer``, ``$CAI_OPENAI_TOKENIZER``, or ``model`` is a local model dir), ``chat`` for
  api.openai.com, else ``continue_final``.
- A request the server refuses as longer than its context window fails that item
  only: a scoring row becomes a failure (``error_kind: context_length``); a
  generation is retried with the completion budget the server reports room for, else
  comes back empty and marked truncated. When every request of a call is refused so,
  generation raises ``ContextLengthError`` (the settings are wrong, not one prompt).
  The context window is read from the server's ``/v1/models`` (``max_model_len``,
  llama.cpp's ``n_ctx_train``) unless given; token counts are exact with a tokenizer.
- Retries, errors and the API key: `cai.backends.openai_http` (the key is sent only in the
  ``Authorization`` header, redacted from errors, never logged nor put in provenance).

On the CLI, ``--scoring`` and ``--tokenizer`` (every command with ``--backend``) set the
first two; otherwise they, and the options not on the CLI, come from the environment:
``$CAI_OPENAI_SCORING``, ``$CAI_OPENAI_TOKENIZER``, ``$CAI_OPENAI_CHAT_TEMPLATE`` (a
template file or text), ``$CAI_OPENAI_RAW_PROMPT``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from cai.backends.base import ChoiceScores, Conversation, Generation, SamplingParams
from cai.backends.openai_http import (  # noqa: F401 (re-exported: cai.backends.openai is where callers look)
    DEFAULT_BASE_URL,
    BackendRequestError,
    ContextLengthError,
    HttpClient,
    RowError,
    public_url,
    read_api_key,
    redact,
)
from cai.backends.openai_scoring import (  # noqa: F401 (re-exported)
    RAW_PROMPTS,
    SCORING_CHOICES,
    SCORING_MODES,
    check_options,
    choice_failure,
    choice_scores,
    failed,
    option_key,
    resolve_scoring,
)
from cai.errors import UserInputError

log = logging.getLogger(__name__)


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
            raise UserInputError(f"base URL '{public_url(self.base_url)}' must start with http:// or https://")
        self.api_key_env = api_key_env
        # The key lives in the client alone (never in describe() or repr).
        self._http = HttpClient(self.base_url, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                                backoff=backoff, max_backoff=max_backoff, sleep=sleep)
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
        self.scoring = resolve_scoring(scoring or os.environ.get("CAI_OPENAI_SCORING") or "auto", self.tokenizer_source,
                                       self.base_url)
        self.raw_prompt = (raw_prompt or os.environ.get("CAI_OPENAI_RAW_PROMPT") or "ids").strip().lower()
        if self.raw_prompt not in RAW_PROMPTS:
            raise UserInputError(f"raw_prompt '{self.raw_prompt}' unknown; use one of: {', '.join(RAW_PROMPTS)}")
        self._encoder: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_id!r}, base_url={public_url(self.base_url)!r})"

    @property
    def retries(self) -> int:
        """Requests retried so far, for the run summary."""
        return self._http.retries

    # --- protocol ------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        if self._context is None:
            with self._lock:
                if self._context is None:
                    self._context = self._http.context_window(self.model_id) or 8192
        return self._context

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "base_url": public_url(self.base_url),
            "api_key_env": self.api_key_env,
            "api_key_set": self._http.has_key,
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
        check_options(options)

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
                out.append(failed(options, str(r), kind, self.scoring))
            else:
                out.append(choice_scores(_first_choice(r), options, self.scoring, public_url(self.base_url)))
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
                return self._http.post(body, path)
            except ContextLengthError as e:
                room = (e.limit - e.prompt_tokens) if e.limit and e.prompt_tokens is not None else 0
                if retry_shorter and room >= 1 and body.get("max_tokens", 0) > room:
                    try:  # the prompt fits: answer within the room left
                        return self._http.post({**body, "max_tokens": room}, path)
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


def _local_model_dir(model: str) -> str | None:
    """``model`` when it names a local model dir with a tokenizer (the served model's files)."""
    if model and os.path.isdir(model) and any(
            os.path.isfile(os.path.join(model, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return model
    return None


def _first_choice(resp: dict[str, Any]) -> dict[str, Any]:
    choices = resp.get("choices") or []
    if not choices:
        raise BackendRequestError("server answered without choices")
    return choices[0]


__all__ = ["OpenAIBackend", "BackendRequestError", "ContextLengthError", "RowError", "choice_failure", "option_key",
           "SCORING_MODES"]
