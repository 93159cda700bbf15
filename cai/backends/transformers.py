"""The default backend: a transformers causal LM on one machine, batched.

Prompts are sorted by length and padded on the left, so each batch wastes
little compute on padding; results come back in input order.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from cai.backends.base import (
    ChoiceScores, Conversation, Generation, SamplingParams, common_prefix_len, normalise_choices,
)
from cai.backends.chat import FALLBACK_CHAT_TEMPLATE, ChatEncoder, RenderedChat  # noqa: F401 (re-exported)
from cai.backends.decode_attention import use_decode_attention
from cai.backends.llama_step import LeanLlamaDecode, lean_decoder
from cai.backends.onednn import use_onednn_linears
from cai.backends.kv_cache import cache_keyword, is_growing
from cai.backends.precision import (  # noqa: F401 (choose_dtype re-exported)
    PreciseHeadBase, choose_dtype, precise_logits, use_bf16_with_fp32_logits,
)
from cai.backends.prefix import Stage, plan_prefill, split_by_width
from cai.backends.sampling import _positions, keep_freed_memory, sample_next  # noqa: F401 (sample_next re-exported)
from cai.errors import UserInputError
from cai.models import LoadedModel, load_model, pick_device
from cai.progress import progress_bar

log = logging.getLogger(__name__)

#: What one more prefill pass costs, in padded tokens (see prefix.split_by_width).
CHUNK_OVERHEAD = 64


class TransformersBackend:
    """Generation and option scoring with a Hugging Face causal LM."""

    def __init__(
        self,
        model: str | LoadedModel,
        *,
        batch_size: int = 64,
        device: str | None = None,
        dtype: str | None = None,
        progress: bool = True,
        max_context: int | None = None,
        prefix_sharing: bool = True,
    ) -> None:
        if isinstance(model, LoadedModel):
            self.loaded, self.dtype_choice = model, "given model"
        else:
            dev = pick_device(device)
            want, self.dtype_choice = choose_dtype(dev, dtype)
            bf16_cpu = dev == "cpu" and want == "bfloat16"
            # bf16 on the CPU: loaded in fp32 so the fp32 copy of the vocabulary projection
            # that choice scoring reads is the checkpoint's, not bf16-rounded (backends/precision.py).
            self.loaded = load_model(model, device=dev, dtype="float32" if bf16_cpu else want)
            if bf16_cpu:
                import torch

                use_bf16_with_fp32_logits(self.loaded.model)
                self.loaded.dtype = torch.bfloat16
            log.info("%s: %s on %s (%s)", model, str(self.loaded.dtype).replace("torch.", ""), dev,
                     self.dtype_choice)
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.model_id = self.loaded.model_id
        self._cache_kw = cache_keyword(self.model)
        self.batch_size = batch_size
        self.progress = progress
        self._max_context = max_context
        #: compute prompt prefixes shared within a batch once (see backends/prefix.py)
        self.prefix_sharing = prefix_sharing
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._uses_fallback_template = not getattr(self.tokenizer, "chat_template", None)
        self.chat = ChatEncoder(self.tokenizer, FALLBACK_CHAT_TEMPLATE if self._uses_fallback_template else None)
        #: counted before any layer swap below (swapped weights are no longer parameters)
        self.parameter_count = sum(p.numel() for p in self.model.parameters())
        #: hold a prompt prefix that every row of a batch shares once in the KV cache (kv_cache.share_prefix)
        self._share_prefixes = False
        #: the lean decode step (backends/llama_step.py), where it applies
        self._lean: LeanLlamaDecode | None = None
        if self.loaded.device == "cpu":
            keep_freed_memory()
            if not isinstance(model, LoadedModel):
                # Only a model this backend loaded itself: a caller's model may be trained later.
                use_onednn_linears(self.model, rows=batch_size)
                if os.environ.get("CAI_DECODE_ATTENTION", "1") != "0":
                    # the shared-prefix cache needs a reader that knows it: decode attention
                    self._share_prefixes = use_decode_attention(self.model) and \
                        os.environ.get("CAI_SHARED_PREFIX_KV", "1") != "0"
                    if os.environ.get("CAI_LEAN_DECODE", "1") != "0":
                        # a Llama-shaped model's decode step without transformers' per-layer plumbing
                        self._lean = lean_decoder(self.model)

    # --- protocol ------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        if self._max_context:
            return self._max_context
        n = getattr(self.model.config, "max_position_embeddings", None) or 2048
        return int(n)

    def describe(self) -> dict[str, Any]:
        return {
            "device": self.loaded.device,
            "dtype": str(self.loaded.dtype).replace("torch.", ""),
            "dtype_choice": self.dtype_choice,
            # choice scoring reads fp32 logits of a bf16 CPU model (backends/precision.py)
            "scoring_logits": "float32" if any(isinstance(m, PreciseHeadBase) for m in self.model.modules())
            else str(self.loaded.dtype).replace("torch.", ""),
            "batch_size": self.batch_size,
            "model_path": self.loaded.path,
            "chat_template": "fallback" if self._uses_fallback_template else "tokenizer",
        }

    def render(self, conversation: Conversation) -> str:
        """The exact text the model sees for a conversation (its ids: ``encode``)."""
        return self.chat.render(conversation).text

    def encode(self, conversation: Conversation) -> list[int]:
        """The token ids the model is fed: control tokens only where the chat template put them."""
        return self.chat.encode(conversation)

    def _encode(self, text: str) -> list[int]:
        # Plain text of our own (option strings), tokenized as a whole.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, conversation: Conversation) -> int:
        return len(self.encode(conversation))

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams
    ) -> list[Generation]:
        import torch

        if not conversations:
            return []
        encoded = [self.encode(c) for c in conversations]
        budget = max(1, self.context_window - params.max_new_tokens)
        truncated = [len(ids) > budget for ids in encoded]
        encoded = [ids[-budget:] for ids in encoded]  # keep the end: the question and the turn
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(encoded)
        eos_ids = self._eos_ids()
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.model.device).manual_seed(params.seed)
        with progress_bar(total=len(order), desc="generate", unit="seq", enabled=self.progress) as bar:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                new = self._decode([encoded[i] for i in idx], params, eos_ids, generator)
                for row, i in enumerate(idx):
                    toks = new[row]
                    stopped = bool(toks) and toks[-1] in eos_ids
                    kept = toks[:-1] if stopped else toks
                    text = self.tokenizer.decode(kept, skip_special_tokens=True)
                    results[i] = Generation(
                        text=text.strip(),
                        prompt_tokens=len(encoded[i]),
                        completion_tokens=len(toks),
                        finish_reason="stop" if stopped else "length",
                        truncated=truncated[i],
                    )
                bar.update(len(idx))
        return [r for r in results if r is not None]

    def check_options(self, options: Sequence[str]) -> None:
        if len(options) < 2:
            raise UserInputError("choice scoring needs at least two options")
        seqs = []
        unk = self.tokenizer.unk_token_id
        for opt in options:
            if not opt:
                raise UserInputError("an option is empty; options must be non-empty strings like 'A'")
            ids = self._encode("(" + opt)[len(self._encode("(")) :] or self._encode(opt)
            if not ids or (unk is not None and unk in ids):
                raise UserInputError(
                    f"option '{opt}' cannot be represented by the tokenizer of {self.model_id}; "
                    "use plain letters like 'A' and 'B'"
                )
            seqs.append(tuple(ids))
        if len(set(seqs)) != len(seqs):
            raise UserInputError(
                f"options {list(options)} tokenize identically for {self.model_id}; use distinct options"
            )

    def choice_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[ChoiceScores]:
        self.check_options(options)
        if not conversations:
            return []
        budget = self.context_window - 8
        # Per conversation: prompt ids, and per option the (context, continuation) split.
        jobs: list[tuple[list[int], list[tuple[list[int], list[int]]], bool]] = []
        for conv in conversations:
            rendered = self.chat.render(conv)
            prompt = self.chat.encode(rendered)
            splits = []
            for opt in options:
                full = self.chat.encode(rendered, opt)  # the option is scored as content too
                common = common_prefix_len(prompt, full)
                if common == len(full):  # option vanished into the prompt's last token
                    common = len(full) - 1
                splits.append((full[:common], full[common:]))
            cut = max(0, max(len(c) + len(o) for c, o in splits) - budget)
            splits = [(c[cut:], o) for c, o in splits]
            jobs.append((prompt[cut:], splits, cut > 0))

        # fp32 logits even for a bf16 model: bf16's logit steps moved soft labels by up to ~0.05
        with precise_logits(self.model):
            return self._score(jobs, options)

    def response_logprobs(self, requests: Sequence[tuple[Conversation, str]]) -> list[float]:
        """log p(text | conversation) summed over the text's tokens, for many (conversation, text) pairs at once.

        The text is scored as the assistant's answer (as ``choice_logprobs`` scores an option),
        in the same length-sorted batches; a conversation too long is cut from the left.
        """
        budget = self.context_window - 8
        jobs = []
        for conv, text in requests:
            rendered = self.chat.render(conv)
            prompt = self.chat.encode(rendered)
            full = self.chat.encode(rendered, text)
            common = min(common_prefix_len(prompt, full), len(full) - 1)
            context, cont = full[:common], full[common:]
            cut = max(0, len(context) + len(cont) - budget)
            jobs.append((prompt[cut:], [(context[cut:], cont)], cut > 0))
        with precise_logits(self.model):
            return [s.extra["raw_logprobs"][0] for s in self._score(jobs, ["text"])]

    def _score(self, jobs, options: Sequence[str]) -> list[ChoiceScores]:
        import torch

        results: list[ChoiceScores | None] = [None] * len(jobs)
        fast = [
            i
            for i, (prompt, splits, _) in enumerate(jobs)
            if all(c == prompt and len(o) == 1 for c, o in splits)
        ]
        slow = [i for i in range(len(jobs)) if i not in set(fast)]
        total = len(fast) + len(slow) * len(options)
        with progress_bar(total=total, desc="score", unit="seq", enabled=self.progress) as bar:
            # Fast path: every option is one next token after the same prompt -> one forward pass.
            order = sorted(fast, key=lambda i: -len(jobs[i][0]))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                with torch.inference_mode():
                    _, logits, _, _ = self._prefill([jobs[i][0] for i in idx])
                logp = torch.log_softmax(logits.float(), dim=-1)
                for row, i in enumerate(idx):
                    raw = [logp[row, o[0]].item() for _, o in jobs[i][1]]
                    results[i] = normalise_choices(raw, jobs[i][2])
                bar.update(len(idx))
            # General path: score each option's continuation tokens (multi-token or boundary merges).
            seqs = [(i, k) for i in slow for k in range(len(options))]
            seqs.sort(key=lambda ik: -sum(map(len, jobs[ik[0]][1][ik[1]])))
            raw_scores: dict[tuple[int, int], float] = {}
            for start in range(0, len(seqs), self.batch_size):
                chunk = seqs[start : start + self.batch_size]
                full = [jobs[i][1][k][0] + jobs[i][1][k][1] for i, k in chunk]
                ids, mask = self._left_pad(full)
                with torch.inference_mode():
                    logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits.float(), -1)
                width = ids.shape[1]
                for row, (i, k) in enumerate(chunk):
                    cont = jobs[i][1][k][1]
                    n = len(cont)
                    positions = torch.arange(width - n - 1, width - 1)
                    targets = torch.tensor(cont)
                    raw_scores[(i, k)] = logp[row, positions, targets].sum().item()
                bar.update(len(chunk))
            for i in slow:
                results[i] = normalise_choices([raw_scores[(i, k)] for k in range(len(options))], jobs[i][2])
        return [r for r in results if r is not None]

    # --- helpers -------------------------------------------------------------------

    def _prefill(self, seqs: list[list[int]], room: int = 0):
        """Run a batch of prompts into a new KV cache, computing each shared prefix once.

        The last stage (each row's own tokens) runs in chunks of rows of similar
        length, merged into one cache, where that saves more padding than the extra
        passes cost. Returns the cache, the last position's logits per row, the
        attention mask over the cache (with holes where stages were padded) and each
        row's last position id. ``room``: tokens the caller will append (buffer headroom).
        """
        from cai.backends.kv_cache import growing_cache, is_growing, share_prefix

        config = self.model.config
        stages = plan_prefill(seqs) if self.prefix_sharing else [Stage("rows", None, seqs)]
        # the cache's final length: every stage's padded width, then the new tokens
        expect = sum(max(len(t) for t in stage.tokens) for stage in stages) + room
        cache = growing_cache(config, expect)
        mask = None
        *before, final = stages
        for n, stage in enumerate(before):
            cache, mask = self._expand(cache, mask, stage.parents)
            _, mask, _ = self._forward_stage(stage.tokens, cache, mask)
            if n == 0 and len(stage.tokens) == 1 and self._share_prefixes:
                # every later row continues this one: its KV is held once, not copied per row
                share_prefix(cache)
        chunks = split_by_width([len(t) for t in final.tokens], CHUNK_OVERHEAD)
        if len(chunks) > 1 and is_growing(cache):
            return self._prefill_chunks(final, chunks, cache, mask, room, expect)
        cache, mask = self._expand(cache, mask, final.parents)
        logits, mask, last = self._forward_stage(final.tokens, cache, mask)
        return cache, logits, mask, last

    def _expand(self, cache, mask, parents: list[int] | None):
        """Copy cache and mask rows so row i continues row ``parents[i]`` (None: as is)."""
        import torch

        if parents is None:
            return cache, mask
        index = torch.tensor(parents, device=self.model.device)
        cache.batch_select_indices(index)
        return cache, mask[index]

    def _forward_stage(self, tokens: list[list[int]], cache, mask):
        """One left-padded forward pass appending ``tokens`` to every row of ``cache``."""
        import torch

        ids, part = self._left_pad(tokens)
        mask = part if mask is None else torch.cat([mask, part], dim=1)
        positions = _positions(mask)[:, -ids.shape[1]:]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1).logits[:, -1, :]
        return logits, mask, positions[:, -1]

    def _prefill_chunks(self, stage: Stage, chunks: list[list[int]], cache, mask, room: int, expect: int):
        """The last stage in row chunks, each from a copy of the rows' parents, merged."""
        import torch

        from cai.backends.kv_cache import fork, growing_cache, merge_chunks

        config = self.model.config
        start = 0 if mask is None else mask.shape[1]
        n = len(stage.tokens)
        parts, pieces = [], []
        for rows in chunks:
            if stage.parents is None:
                sub, sub_mask = growing_cache(config, expect), None
            else:
                index = torch.tensor([stage.parents[r] for r in rows], device=self.model.device)
                sub, sub_mask = fork(cache, index, config, expect), mask[index]
            logits, sub_mask, last = self._forward_stage([stage.tokens[r] for r in rows], sub, sub_mask)
            width = sub_mask.shape[1] - start
            parts.append((sub, rows, width))
            pieces.append((rows, logits, sub_mask, last, width))
        wide = max(p[4] for p in pieces)
        logits_all = pieces[0][1].new_empty((n, pieces[0][1].shape[-1]))
        mask_all = pieces[0][2].new_zeros((n, start + wide))
        last_all = pieces[0][3].new_empty(n)
        for rows, logits, sub_mask, last, width in pieces:
            index = torch.tensor(rows, device=self.model.device)
            logits_all[index] = logits
            last_all[index] = last
            mask_all[index, :start] = sub_mask[:, :start]
            mask_all[index, start + wide - width :] = sub_mask[:, start:]
        merged = merge_chunks(parts, n, start, config, room)
        return merged, logits_all, mask_all, last_all

    def _decode(self, seqs: list[list[int]], params: SamplingParams, eos_ids: set[int], generator) -> list[list[int]]:
        """Our own decode loop over one batch of prompts.

        Unlike `model.generate`, it computes shared prompt prefixes once, drops
        finished rows from the batch (and the KV cache) once enough of them have
        ended, and computes the vocabulary projection only for the last position.
        """
        import torch

        model = self.model
        n = len(seqs)
        outputs: list[list[int]] = [[] for _ in range(n)]
        alive = torch.arange(n)
        eos = torch.tensor(sorted(eos_ids), device=model.device)
        sample = bool(params.temperature and params.temperature > 0)
        with torch.inference_mode():
            cache, logits, attention, last = self._prefill(seqs, room=params.max_new_tokens)
            lean = self._lean if self._lean is not None and is_growing(cache) else None
            finished = torch.zeros(n, dtype=torch.bool, device=model.device)
            for step in range(params.max_new_tokens):
                nxt = sample_next(logits, params.temperature, params.top_p, generator) if sample \
                    else logits.argmax(dim=-1)
                for row, tok, done_before in zip(alive.tolist(), nxt.tolist(), finished.tolist()):
                    if not done_before:
                        outputs[row].append(tok)
                if step == params.max_new_tokens - 1:
                    break
                finished |= torch.isin(nxt, eos)
                dead = int(finished.sum())
                if dead == finished.numel():
                    break
                # Dropping rows copies the whole cache; a finished row left in costs one
                # row of compute per step. Drop once they are an eighth of the batch.
                if dead and dead * 8 >= finished.numel():
                    keep = (~finished).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    alive, nxt, attention, last = alive[keep.cpu()], nxt[keep], attention[keep], last[keep]
                    finished = finished[keep]
                attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
                last = last + 1
                if lean is not None:
                    logits = lean.step(nxt, last, attention, cache)
                else:
                    logits = model(input_ids=nxt[:, None], attention_mask=attention, position_ids=last[:, None],
                                   **{self._cache_kw: cache}, use_cache=True).logits[:, -1, :]
        return outputs

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return ids

    def _left_pad(self, seqs: list[list[int]]):
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            if s:
                ids[row, width - len(s) :] = torch.tensor(s)
                mask[row, width - len(s) :] = 1
        dev = self.model.device
        return ids.to(dev), mask.to(dev)
