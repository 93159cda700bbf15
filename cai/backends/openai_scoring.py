"""Choice scoring over an OpenAI-compatible server: the modes, and reading options off the top tokens.

Choice scoring (``max_tokens=1, temperature=0`` and the top-k log-probs of the next
token) asks the server to *continue* the judge's assistant prefix
(``The better response is (``); how is the ``scoring`` mode, recorded in provenance
and in the judge's fingerprint (labels scored another way are not resumed):

* ``"completions"``: the chat template is rendered here, with the served model's
  tokenizer, and sent to ``/v1/completions`` (every server with raw completions:
  vLLM, llama.cpp, `cai serve`).
* ``"continue_final"``: chat completions with ``continue_final_message: true,
  add_generation_prompt: false`` (vLLM, `cai serve`).
* ``"chat"``: plain chat completions (OpenAI itself, which answers an assistant
  prefix with a new turn: scores there only mean something without a prefix).

``auto`` is ``completions`` when a tokenizer is known, ``chat`` for api.openai.com,
else ``continue_final``. Each option is matched against the top tokens, forgiving
whitespace and bracket variants ("A", " A", "(A", "A)"). An option absent from the
top-k makes that row a failure, never a floor value: its log-probs are NaN and
``extra["error"]`` says why (``extra["error_kind"]``: ``option_missing``).
"""

from __future__ import annotations

import math
import urllib.parse
from typing import Any, Sequence

from cai.backends.base import ChoiceScores
from cai.backends.openai_http import BackendRequestError
from cai.errors import UserInputError

SCORING_MODES = ("completions", "continue_final", "chat")
#: What ``--scoring`` / ``$CAI_OPENAI_SCORING`` accept.
SCORING_CHOICES = ("auto", *SCORING_MODES)
RAW_PROMPTS = ("ids", "text")


def option_key(text: str) -> str:
    """How an option or a returned token is compared: no spaces, brackets, or trailing punctuation."""
    return text.strip().lstrip("([{").rstrip(")]}.:,").strip()


def resolve_scoring(value: str, tokenizer_source: str | None, base_url: str) -> str:
    """The scoring mode ``value`` names (``auto``: see the module doc), or a UserInputError."""
    mode = value.strip().lower().replace("-", "_")
    if mode == "auto":
        if tokenizer_source:
            return "completions"
        host = urllib.parse.urlsplit(base_url).hostname or ""
        return "chat" if host.endswith("openai.com") else "continue_final"
    if mode not in SCORING_MODES:
        raise UserInputError(f"scoring '{value}' unknown; use one of: {', '.join(SCORING_CHOICES)}")
    if mode == "completions" and not tokenizer_source:
        raise UserInputError(
            "scoring=completions renders the chat template here: give the served model's tokenizer "
            "(tokenizer=, a local model dir or hub id, or $CAI_OPENAI_TOKENIZER)"
        )
    return mode


def check_options(options: Sequence[str]) -> None:
    """Options the top tokens can tell apart: two or more, each a distinct letter or word."""
    if len(options) < 2:
        raise UserInputError("choice scoring needs at least two options")
    keys = [option_key(o) for o in options]
    if any(not k for k in keys):
        raise UserInputError(f"options {list(options)}: each needs a letter or word, like 'A' and 'B'")
    if len(set(keys)) != len(keys):
        raise UserInputError(
            f"options {list(options)} look the same once spaces and brackets are removed; use distinct options"
        )


def failed(options: Sequence[str], reason: str, kind: str, scoring: str, **extra: Any) -> ChoiceScores:
    """A row that could not be scored: NaN log-probs and why (never a floor value)."""
    nan = float("nan")
    return ChoiceScores(logprobs=[nan] * len(options),
                        extra={"error": reason, "error_kind": kind, "scoring": scoring, **extra})


def choice_scores(choice: dict[str, Any], options: Sequence[str], scoring: str, server: str) -> ChoiceScores:
    """The options' log-probs, normalised over the options, from the first choice of a one-token reply."""
    top = top_tokens(choice)
    if top is None:
        where = "/v1/completions" if scoring == "completions" else "chat completions"
        raise BackendRequestError(
            f"{server} returned no logprobs; choice scoring needs a server "
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
        if scoring == "completions":
            hint = "the model puts its mass elsewhere; raise top_logprobs or check the prompt's prefix"
        else:
            hint = ("the server may have closed the assistant prefix and started a new turn; score through "
                    "raw completions: scoring=completions with the served model's tokenizer")
        reason = (f"option {', '.join(map(repr, missing))} not among the server's top {len(top)} next tokens "
                  f"({best}); {hint}")
        return failed(options, reason, "option_missing", scoring, missing=missing, top_tokens=top,
                            upper_bound_logprob=min(top.values()) if top else None)
    m = max(raw)
    z = m + math.log(sum(math.exp(r - m) for r in raw))
    extra: dict[str, Any] = {"raw_logprobs": raw, "top_tokens": top, "scoring": scoring}
    return ChoiceScores(logprobs=[r - z for r in raw], extra=extra)


def top_tokens(choice: dict[str, Any]) -> dict[str, float] | None:
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


def choice_failure(scores: ChoiceScores) -> str | None:
    """Why a row of ``choice_logprobs`` failed (NaN log-probs), or None for a scored row."""
    if any(isinstance(x, float) and math.isnan(x) for x in scores.logprobs):
        return str(scores.extra.get("error") or "the backend returned no score")
    return None
