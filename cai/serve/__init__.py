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

The package: ``app`` (``ChatServer``: lifecycle, streaming, routes), ``schema`` (the
OpenAI request and response bodies), ``engine`` (batching; any backend through its
protocol), ``decode`` (the decode loop over a transformers model), ``samples`` and
``errors``.
"""

from cai.serve.app import ChatServer
from cai.serve.engine import make_engine, top_logprobs
from cai.serve.errors import ApiError, RequestError, error_body
from cai.serve.samples import find_stop

__all__ = ["ChatServer", "ApiError", "RequestError", "error_body", "top_logprobs", "make_engine", "find_stop"]
