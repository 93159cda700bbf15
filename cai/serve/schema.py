"""The OpenAI request and response schema as cai serve reads and writes it.

A request body is checked field by field (anything cai serve does not do is refused
by name, with an OpenAI-shaped 400) and becomes a ``Plan``: its prompts and the
settings every sample of it shares. Results become chat or legacy completions bodies.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cai.backends.base import Conversation
from cai.serve.errors import ApiError, RequestError, unsupported
from cai.serve.samples import Sample, SampleResult, SampleSettings

ROLES = {"system", "developer", "user", "assistant"}
MAX_TOP_LOGPROBS = 20
MAX_N = 64
MAX_STOP = 16
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16


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
            raise unsupported(name)
    for name, ok in _NO_OP.items():
        value = body.get(name)
        if value is not None and not any(_same(value, o) for o in ok):
            raise unsupported(name, f" (only {' or '.join(json.dumps(o) for o in ok)})")
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise unsupported("response_format", " (only {\"type\": \"text\"}); constrain the output client-side")


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


@dataclass(kw_only=True)
class Plan(SampleSettings):
    """A validated request: its prompts and the settings its samples share."""

    kind: str  # "chat" or "completion"
    prompts: list[Any]
    prompt_tokens: list[int]
    n: int
    max_tokens: list[int]
    stream: bool
    include_usage: bool
    samples: list[Sample] = field(default_factory=list)


def check_model(name: Any, served: str) -> None:
    """Refuse a model name other than the one served (404, as OpenAI); no name means that one."""
    if name is None:
        return  # cai serve serves one model: no name means that one
    if not isinstance(name, str):
        raise RequestError("'model' must be a string", param="model")
    if name != served:
        raise ApiError(f"The model `{name}` does not exist. This server serves `{served}`.",
                       status=404, param="model", code="model_not_found")


def _common(body: Any, allowed: set[str], served: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    check_model(body.get("model"), served)
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
            raise unsupported("stream_options", " (only include_usage)")
        include_usage = bool(opts.get("include_usage"))
    n = _number(body, "n", 1, int, 1, MAX_N)
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise unsupported("best_of", " (only equal to n)")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("'seed' must be an integer", param="seed")
    return {
        "stream": stream, "include_usage": include_usage, "n": n, "seed": seed, "stop": _stop(body),
        "temperature": _number(body, "temperature", 1.0, float, 0, 2),
        "top_p": _number(body, "top_p", 1.0, float, 0, 1),
    }


def _lengths(engine: Any, body: dict[str, Any], field_name: str, counts: list[int], default: int) -> list[int]:
    """max_tokens per prompt; the request is refused when a prompt and it exceed the window."""
    window = engine.context_window
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


def plan_chat(body: Any, engine: Any, served: str) -> Plan:
    """A chat completions request, validated: its prompt (ids or the conversation) and settings."""
    c = _common(body, _CHAT, served)
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
        raise unsupported("continue_final_message", ": a final assistant message is always continued")
    if not continues and agp is False:
        raise unsupported("add_generation_prompt", ": a conversation ending with a user turn gets one")
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise RequestError("'logprobs' must be a boolean", param="logprobs")
    k = _number(body, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS)  # without logprobs: nothing to return
    prompt = engine.chat_ids(conv) if engine.tokens else conv
    count = len(prompt) if engine.tokens else engine.count(conv)
    field_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    lengths = _lengths(engine, body, field_name, [count], DEFAULT_CHAT_MAX_TOKENS)
    plan = Plan(kind="chat", prompts=[prompt], prompt_tokens=[count], max_tokens=lengths, logprobs=logprobs,
                top_k=k, **c)
    _check_logprobs(engine, plan)
    return plan


def plan_completion(body: Any, engine: Any, served: str) -> Plan:
    """A raw completions request, validated: its prompts as token ids and its settings."""
    c = _common(body, _COMPLETION, served)
    if not engine.tokens:
        raise RequestError(f"/v1/completions needs a backend with a tokenizer; {type(engine.backend).__name__} "
                           "takes conversations only: use /v1/chat/completions")
    add_special = body.get("add_special_tokens")
    if add_special is not None and not isinstance(add_special, bool):
        raise RequestError("'add_special_tokens' must be a boolean", param="add_special_tokens")
    raw = body.get("prompt")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(is_id(x) for x in raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise RequestError("'prompt' must be a string, a list of token ids, or a non-empty list of those",
                           param="prompt")
    prompts = []
    for p in raw:
        if isinstance(p, str):
            ids = engine.text_ids(p, add_special)
        elif isinstance(p, list) and all(is_id(x) for x in p):
            ids = list(p)
            if any(not 0 <= x < engine.vocab for x in ids):
                raise RequestError(f"token ids must lie in [0, {engine.vocab})", param="prompt")
        else:
            raise RequestError("each prompt must be a string or a list of token ids", param="prompt")
        if not ids:
            raise RequestError("a prompt is empty", param="prompt")
        prompts.append(ids)
    lp = body.get("logprobs")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_TOP_LOGPROBS):
        raise RequestError(f"'logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}]", param="logprobs")
    counts = [len(p) for p in prompts]
    lengths = _lengths(engine, body, "max_tokens", counts, DEFAULT_COMPLETION_MAX_TOKENS)
    return Plan(kind="completion", prompts=prompts, prompt_tokens=counts, max_tokens=lengths,
                logprobs=lp is not None, top_k=lp or 0, **c)


def _check_logprobs(engine: Any, plan: Plan) -> None:
    if plan.logprobs and not all(engine.can_logprobs(m, plan.temperature) for m in plan.max_tokens):
        name = type(engine.backend).__name__
        if not getattr(engine, "has_top_logprobs", True):
            raise RequestError(f"backend {name} cannot return logprobs", param="logprobs")
        raise RequestError(f"backend {name} returns logprobs only for greedy one-token requests "
                           "(max_tokens=1, temperature=0)", param="logprobs")


def usage(plan: Plan, results: list[SampleResult]) -> dict[str, int]:
    prompt = sum(plan.prompt_tokens)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def respond(plan: Plan, results: list[SampleResult], served: str) -> dict[str, Any]:
    """The whole (non-streamed) answer, OpenAI-shaped."""
    created = int(time.time())
    if plan.kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                    "logprobs": {"content": r.logprobs} if r.logprobs is not None else None,
                    "finish_reason": r.finish_reason} for i, r in enumerate(results)]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": created,
                "model": served, "choices": choices, "usage": usage(plan, results)}
    choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                "logprobs": legacy_logprobs(r.logprobs) if r.logprobs is not None else None}
               for i, r in enumerate(results)]
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": created,
            "model": served, "choices": choices, "usage": usage(plan, results)}


def is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def legacy_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any]:
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
