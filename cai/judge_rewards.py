"""The constitution judge as a TRL reward function: rewards against references, or within a group.

`ConstitutionJudge.as_reward_func` builds the callable; these are the two ways it turns
verdicts into rewards (probabilities in [0, 1]).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cai.errors import UserInputError
from cai.judgement import Judgement, _last_user_text, as_conversation, completion_text


def reference_texts(prompts: Sequence[Any], mapping: Mapping[str, str] | None, column: str | None,
                    kwargs: Mapping[str, Any]) -> list[str]:
    """Each prompt's reference answer: from a dataset column TRL passes through, or a prompt-text mapping."""
    if column is not None:
        if column not in kwargs:
            raise UserInputError(
                f"reference column '{column}' is not among the dataset columns passed to the reward "
                f"function ({', '.join(sorted(kwargs)) or 'none'}); add it to the dataset"
            )
        return [completion_text(r) for r in kwargs[column]]
    refs = []
    for p in prompts:
        key = _last_user_text(as_conversation(p))
        if mapping is None or key not in mapping:
            raise UserInputError(f"no reference completion for prompt {key[:60]!r}; add it to the mapping")
        refs.append(mapping[key])
    return refs


def group_rewards(compare: Callable[[list[Any], list[str], list[str]], list[Judgement]],
                  prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
    """Completions sharing a prompt judged pairwise (each unordered pair once, in one ``compare`` call):
    a completion's reward is its mean P(better) against the others in its group (0.5 when alone)."""
    if len(prompts) != len(completions):
        raise UserInputError(f"{len(prompts)} prompts but {len(completions)} completions")
    texts = [completion_text(c) for c in completions]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(json.dumps(as_conversation(p), sort_keys=True), []).append(i)
    pairs = [(g[x], g[y]) for g in groups.values() for x in range(len(g)) for y in range(x + 1, len(g))]
    totals = [0.0] * len(texts)
    if pairs:
        verdicts = compare([prompts[i] for i, _ in pairs], [texts[i] for i, _ in pairs],
                           [texts[j] for _, j in pairs])
        for (i, j), v in zip(pairs, verdicts):
            p = 0.5 if v.skipped else v.p_a
            totals[i] += p
            totals[j] += 1.0 - p
    sizes = {i: len(g) for g in groups.values() for i in g}
    return [totals[i] / (sizes[i] - 1) if sizes[i] > 1 else 0.5 for i in range(len(texts))]


__all__ = ["group_rewards", "reference_texts"]
