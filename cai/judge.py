"""The constitution judge: P(response A is better than response B) by a principle, as a soft label.

The feedback model sees the conversation, one principle's comparison question and
two options, and the judge reads the probability of the option letters as the next
token after ``The better response is (`` — one forward pass, no generation.

* **Both orders** (default): each pair is also scored with the responses swapped,
  and p = mean(P(A | A first), 1 - P(A-slot | B first)). Small models pick a
  slot rather than an answer; averaging cancels that, and ``position_consistent``
  says whether the two orders agreed at all.
* **Principle ensembling**: m principles per pair, all of them, or the ones named
  by id, averaged. Which m principles a pair gets is a deterministic function of the
  seed and the pair. ``compare(..., principles=...)`` can also name each pair's own
  principles, so pairs judged by different principles still share one scoring call.
* **Chain of thought**: generate a rationale first (``preference_cot`` template),
  then score the letter after it; each probability is clamped into ``cot_band``
  (CAI used [0.4, 0.6]) because CoT answers are overconfident.

Every ``compare`` call makes exactly one ``choice_logprobs`` call over all pairs ×
principles × orders (plus one ``generate`` call in CoT mode).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from cai.backends.base import Backend, Conversation, SamplingParams
from cai.constitution import Constitution, Principle
from cai.errors import UserInputError
from cai.templates import TEMPLATE_VARIABLES, PromptTemplates

TEMPLATE = "preference"
COT_TEMPLATE = "preference_cot"
#: What both preference templates are given (see cai.templates.TEMPLATE_VARIABLES).
PROVIDES = TEMPLATE_VARIABLES[TEMPLATE]
#: Appended after a CoT rationale so the next token is the option letter.
COT_ANSWER_PREFIX = "Therefore, the better response is ("
#: Option letters, scored as the continuation of a prefix ending in "(".
OPTIONS = ("A", "B")
#: Tokens kept free in the context window besides the prompt (the option itself, slack).
_SCORE_RESERVE = 8
_TRUNCATION_MARK = " [...]"

from cai.judge_rewards import group_rewards, reference_texts
from cai.judgement import Judgement, PromptLike, _last_user_text, as_conversation, completion_text  # noqa: F401


def named_principles(constitution: Constitution, ids: Sequence[str]) -> list[Principle]:
    """The principles with these ids, in that order; an unknown id, or one without a comparison
    question (the judge has nothing to ask), is a one-line error naming it and the usable ones.
    The messages start with "principles" so a config check can prefix the field's path."""
    if not ids:
        raise UserInputError("principles is an empty list; name at least one principle id")
    by_id = {p.id: p for p in constitution.principles}
    usable = [p.id for p in constitution.principles if p.comparison_question]
    where = constitution.source or constitution.name
    for i in ids:
        if i not in by_id:
            raise UserInputError(f"principles: unknown principle {i!r}; {where} has: {', '.join(by_id)}")
        if not by_id[i].comparison_question:
            raise UserInputError(f"principles: {where}'s principle {i!r} has no comparison_question, so the "
                                 f"judge cannot use it; ones that have: {', '.join(usable)}")
    return [by_id[i] for i in dict.fromkeys(ids)]


class ConstitutionJudge:
    """A constitution and a feedback backend that give P(A better than B) for pairs of responses."""

    def __init__(
        self,
        constitution: Constitution,
        backend: Backend,
        *,
        templates: PromptTemplates | None = None,
        principles: int | Literal["all"] | Sequence[str] = 1,
        both_orders: bool = True,
        cot: bool = False,
        cot_band: tuple[float, float] = (0.4, 0.6),
        seed: int = 0,
        cot_params: SamplingParams | None = None,
        on_overflow: Literal["truncate", "skip"] = "truncate",
        options: tuple[str, str] = OPTIONS,
        cot_answer_prefix: str = COT_ANSWER_PREFIX,
    ) -> None:
        if isinstance(principles, str):
            valid = principles == "all"
        elif isinstance(principles, int):
            valid = principles >= 1 and not isinstance(principles, bool)
        else:
            valid = isinstance(principles, Sequence) and all(isinstance(i, str) for i in principles)
        if not valid:
            raise UserInputError(f"principles per pair must be a positive integer, 'all' or a list of principle "
                                 f"ids, got {principles!r}")
        lo, hi = cot_band
        if not (0.0 <= lo <= 0.5 <= hi <= 1.0):
            raise UserInputError(f"cot_band {cot_band} must satisfy 0 <= low <= 0.5 <= high <= 1")
        if on_overflow not in ("truncate", "skip"):
            raise UserInputError(f"on_overflow must be 'truncate' or 'skip', got {on_overflow!r}")
        if len(options) != 2:
            raise UserInputError("the judge compares two responses; give exactly two options")
        self.constitution = constitution
        self.backend = backend
        self.templates = templates or PromptTemplates(constitution=constitution)
        #: A count, "all", or (given ids) the tuple of ids every pair is judged by.
        self.principles: int | Literal["all"] | tuple[str, ...] = (
            principles if isinstance(principles, (int, str)) else tuple(dict.fromkeys(principles)))
        self.both_orders = both_orders
        self.cot = cot
        self.cot_band = (float(lo), float(hi))
        self.seed = seed
        self.cot_params = cot_params or SamplingParams(max_new_tokens=128, temperature=0.0, seed=seed)
        self.on_overflow = on_overflow
        self.options = tuple(options)
        self.cot_answer_prefix = cot_answer_prefix
        self.pool: list[Principle] = [p for p in constitution.principles if p.comparison_question]
        if not self.pool:  # raises the ConstitutionError that names the file and the fix
            constitution.sample_principles(1, random.Random(0), require_comparison=True)
        if isinstance(self.principles, tuple):
            self.pool = self._named(self.principles)
        self.templates.validate({self.template_names[-1]: PROVIDES})
        self._options_checked = False

    # --- configuration --------------------------------------------------------------

    @property
    def template_names(self) -> list[str]:
        return [COT_TEMPLATE] if self.cot else [TEMPLATE]

    def provenance(self) -> dict[str, Any]:
        """Everything that determines the labels; goes into dataset fingerprints."""
        # A backend that can score choices several ways (openai: --scoring) labels differently per
        # way, so a resume with another mode must be refused; other backends add nothing (their
        # datasets' fingerprints stay as they were).
        scoring = getattr(self.backend, "scoring", None)
        return {
            "feedback_model": self.backend.model_id,
            **({"scoring": scoring} if isinstance(scoring, str) else {}),
            "constitution": self.constitution.provenance(),
            "templates": self.templates.digests(self.template_names),
            "principles_per_pair": self.principles,
            "both_orders": self.both_orders,
            "cot": self.cot,
            **({"cot_band": list(self.cot_band), "cot_sampling": self.cot_params.to_dict(),
                "cot_answer_prefix": self.cot_answer_prefix} if self.cot else {}),
            "options": list(self.options),
            "on_overflow": self.on_overflow,
            "seed": self.seed,
        }

    def check_options(self) -> None:
        """Fail before any work when the feedback tokenizer cannot tell the options apart."""
        if not self._options_checked:
            self.backend.check_options(self.options)
            self._options_checked = True

    def _named(self, ids: Sequence[str]) -> list[Principle]:
        return named_principles(self.constitution, ids)

    def select_principles(self, conversation: Conversation, response_a: str, response_b: str) -> list[Principle]:
        """The principles for one pair: all (or all the named ones), or m drawn by weight, seeded by (seed, pair)."""
        if not isinstance(self.principles, int):  # "all", or the ids given
            return list(self.pool)
        from cai.data import stable_hash

        key = stable_hash(self.seed, conversation, sorted([response_a, response_b]))
        rng = random.Random(int(key, 16))
        return self.constitution.sample_principles(self.principles, rng, unique=True, require_comparison=True)

    # --- rendering ------------------------------------------------------------------

    def render(self, conversation: Conversation, principle: Principle, first: str, second: str) -> Conversation:
        """The feedback conversation showing ``first`` as option (A) and ``second`` as (B)."""
        return self.templates.render_messages(
            self.template_names[0],
            prompt=_last_user_text(conversation),
            conversation=conversation,
            response_a=first,
            response_b=second,
            question=principle.comparison_question,
            principle=principle,
            constitution=self.constitution,
        )

    def _fit(
        self, conversation: Conversation, principles: list[Principle], a: str, b: str
    ) -> tuple[str, str, list[str], bool]:
        """Cut both responses (from the end) until the longest rendering fits the context window.

        Returns (a, b, notes, fits). Token counts come from the backend's own tokenizer.
        """
        reserve = _SCORE_RESERVE + (self.cot_params.max_new_tokens + 16 if self.cot else 0)
        budget = self.backend.context_window - reserve
        longest = max(principles, key=lambda p: len(p.comparison_question or ""))
        n = self.backend.count_tokens(self.render(conversation, longest, a, b))
        if n <= budget:
            return a, b, [], True
        if self.on_overflow == "skip":
            return a, b, [f"skipped: pair needs {n} tokens, context window allows {budget}"], False
        overhead = self.backend.count_tokens(self.render(conversation, longest, "", ""))
        room = budget - overhead
        if room < 16:
            return a, b, [f"skipped: the conversation alone needs {overhead} tokens of {budget}"], False
        note = f"truncated: pair needed {n} tokens, context window allows {budget}; responses cut from the end"
        # Shrink the longer response first, by token ratio, re-measuring each time (tokenizers differ).
        base = self.backend.count_tokens([{"role": "user", "content": ""}])
        for _ in range(16):
            ta = self.backend.count_tokens([{"role": "user", "content": a}]) - base
            tb = self.backend.count_tokens([{"role": "user", "content": b}]) - base
            excess = n - budget
            if ta >= tb:
                a = _cut(a, 1 - (excess + 4) / max(ta, 1))
            else:
                b = _cut(b, 1 - (excess + 4) / max(tb, 1))
            n = self.backend.count_tokens(self.render(conversation, longest, a, b))
            if n <= budget:
                return a, b, [note], True
        return a, b, [note + " (still too long; the backend cut the conversation from the left)"], True

    # --- judging --------------------------------------------------------------------

    def compare(
        self,
        prompts: Sequence[PromptLike],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        *,
        principles: Sequence[str | Sequence[str]] | None = None,
    ) -> list[Judgement]:
        """Judge each pair (prompts[i], responses_a[i], responses_b[i]); batched into one scoring call.

        ``principles``, when given, names each pair's own principles (an id, or a list of ids; each
        must be in the judge's pool): pair i is judged by those instead of the judge's selection.
        Pairs judged by different principles still share the one scoring call.
        """
        if not (len(prompts) == len(responses_a) == len(responses_b)):
            raise UserInputError(
                f"compare needs as many prompts as response pairs ({len(prompts)}, {len(responses_a)}, "
                f"{len(responses_b)})"
            )
        named: list[list[Principle]] | None = None
        if principles is not None:
            if len(principles) != len(prompts):
                raise UserInputError(f"compare got principles for {len(principles)} pairs but {len(prompts)} pairs")
            pool_ids = {p.id for p in self.pool}
            resolved: dict[tuple[str, ...], list[Principle]] = {}  # many pairs share a principle: check it once
            named = []
            for ids in principles:
                key = (ids,) if isinstance(ids, str) else tuple(ids)
                if key not in resolved:
                    resolved[key] = self._named(key)
                    outside = [p.id for p in resolved[key] if p.id not in pool_ids]
                    if outside:
                        raise UserInputError(f"principles: {outside[0]!r} is not among this judge's principles "
                                             f"({', '.join(p.id for p in self.pool)})")
                named.append(resolved[key])
        self.check_options()
        convs = [as_conversation(p) for p in prompts]
        orders = ("ab", "ba") if self.both_orders else ("ab",)
        plans: list[dict[str, Any]] = []
        jobs: list[tuple[int, Principle, str, Conversation]] = []  # (pair, principle, order, conversation)
        for i, (conv, a, b) in enumerate(zip(convs, responses_a, responses_b)):
            a, b = str(a), str(b)
            chosen = named[i] if named is not None else self.select_principles(conv, a, b)
            a_fit, b_fit, notes, fits = self._fit(conv, chosen, a, b)
            plans.append({"principles": chosen, "notes": notes, "skipped": not fits, "truncated": bool(notes) and fits})
            if not fits:
                continue
            for p in chosen:
                for order in orders:
                    first, second = (a_fit, b_fit) if order == "ab" else (b_fit, a_fit)
                    jobs.append((i, p, order, self.render(conv, p, first, second)))

        rationales: list[str] = [""] * len(jobs)
        to_score = [job[3] for job in jobs]
        if self.cot and jobs:
            gens = self.backend.generate(to_score, self.cot_params)
            rationales = [g.text.strip() for g in gens]
            to_score = [
                conv[:-1] + [{"role": "assistant", "content": f"{conv[-1]['content']} {r}\n{self.cot_answer_prefix}"}]
                for conv, r in zip(to_score, rationales)
            ]
        scores = self.backend.choice_logprobs(to_score, self.options) if jobs else []

        per_pair: list[list[dict[str, Any]]] = [[] for _ in plans]
        failed: dict[int, list[str]] = {}
        for (i, p, order, _), rationale, s in zip(jobs, rationales, scores):
            if any(math.isnan(x) for x in s.logprobs):  # the backend could not score it: the pair fails
                failed.setdefault(i, []).append(f"{p.id}/{order}: {s.extra.get('error') or 'no score'}")
                continue
            p_slot_a = math.exp(s.logprobs[0])
            p_a = p_slot_a if order == "ab" else 1.0 - p_slot_a
            entry: dict[str, Any] = {"principle_id": p.id, "order": order, "p_slot_a": p_slot_a}
            if self.cot:
                entry["p_a_unclamped"] = p_a
                p_a = min(max(p_a, self.cot_band[0]), self.cot_band[1])
                entry["rationale"] = rationale
            entry["p_a"] = p_a
            entry["truncated"] = s.truncated
            per_pair[i].append(entry)

        out: list[Judgement] = []
        for i, (plan, entries) in enumerate(zip(plans, per_pair)):
            ids = [p.id for p in plan["principles"]]
            if plan["skipped"] or i in failed:
                nan = float("nan")
                out.append(Judgement(p_a=nan, p_a_first=nan, p_a_second=None, position_consistent=None,
                                     principle_ids=ids, per_principle={}, skipped=True,
                                     notes=plan["notes"] + failed.get(i, []),
                                     failure="scoring_failed" if i in failed else "overflow"))
                continue
            out.append(self._aggregate(ids, entries, plan))
        return out

    def _aggregate(self, ids: list[str], entries: list[dict[str, Any]], plan: dict[str, Any]) -> Judgement:
        per_principle: dict[str, float] = {}
        for pid in dict.fromkeys(ids):
            vals = [e["p_a"] for e in entries if e["principle_id"] == pid]
            per_principle[pid] = sum(vals) / len(vals)
        # Each principle counts once per time it was drawn (sampling is without replacement, so once).
        p_a = sum(per_principle[pid] for pid in ids) / len(ids)
        first = [e["p_a"] for e in entries if e["order"] == "ab"]
        second = [e["p_a"] for e in entries if e["order"] == "ba"]
        p_first = sum(first) / len(first)
        p_second = sum(second) / len(second) if second else None
        consistent = None if p_second is None else (p_first - 0.5) * (p_second - 0.5) > 0
        notes = list(plan["notes"])
        truncated = plan["truncated"]
        if any(e["truncated"] for e in entries):
            truncated = True
            notes.append("the backend cut the feedback conversation from the left to fit its context window")
        return Judgement(
            p_a=p_a, p_a_first=p_first, p_a_second=p_second, position_consistent=consistent,
            principle_ids=ids, per_principle=per_principle,
            rationales=[e["rationale"] for e in entries] if self.cot else [],
            truncated=truncated, notes=notes, details=entries,
        )

    # --- TRL reward functions -------------------------------------------------------

    def reward_func(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """TRL ``reward_funcs`` signature; group mode (see ``as_reward_func``)."""
        return group_rewards(self.compare, prompts, completions)

    def as_reward_func(
        self,
        reference_completions: Mapping[str, str] | None = None,
        *,
        reference_column: str | None = None,
        name: str = "constitution_judge",
    ) -> Callable[..., list[float]]:
        """A callable ``(prompts, completions, **kwargs) -> list[float]`` for TRL's online trainers.

        Rewards are probabilities in [0, 1]:

        * with ``reference_completions`` (prompt text -> reference answer) or
          ``reference_column`` (a dataset column TRL passes through as a kwarg):
          P(completion better than the reference), both orders;
        * otherwise (group mode): completions sharing a prompt (GRPO/RLOO groups)
          are judged pairwise, each unordered pair once; a completion's reward is
          its mean P(better) against the others in its group (0.5 when alone).
        """
        if reference_completions is None and reference_column is None:
            def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
                return group_rewards(self.compare, prompts, completions)
        else:
            def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
                refs = reference_texts(prompts, reference_completions, reference_column, kwargs)
                texts = [completion_text(c) for c in completions]
                return [j.p_a if not j.skipped else 0.5 for j in self.compare(list(prompts), texts, refs)]
        reward.__name__ = name  # TRL logs rewards under the function's name
        reward.__qualname__ = name
        return reward


def _cut(text: str, keep: float) -> str:
    """Keep the first ``keep`` fraction of the text (at a word boundary when possible) and mark the cut."""
    text = text.removesuffix(_TRUNCATION_MARK)
    n = max(0, int(len(text) * min(max(keep, 0.0), 0.9)))
    head = text[:n]
    if " " in head[n // 2 :]:
        head = head[: head.rfind(" ")]
    return head.rstrip() + _TRUNCATION_MARK


__all__ = ["ConstitutionJudge", "Judgement", "named_principles", "as_conversation", "completion_text", "OPTIONS", "COT_ANSWER_PREFIX"]
