"""A scripted backend for unit tests of stage logic: canned replies, recorded calls.

It implements the same protocol as the real backends, so stages cannot tell.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from cai.backends.base import ChoiceScores, Conversation, Generation, SamplingParams
from cai.errors import UserInputError

Responder = Callable[[Conversation], str]
Scorer = Callable[[Conversation, Sequence[str]], Sequence[float]]


class ScriptedBackend:
    """``respond(conversation) -> text`` and ``score(conversation, options) -> probabilities``.

    Replies can also be queued with ``enqueue``; queued replies are used first.
    Every call is recorded in ``generate_calls`` / ``score_calls`` (one entry per
    backend call, holding the whole batch), so tests can check batching.
    """

    def __init__(
        self,
        respond: Responder | None = None,
        score: Scorer | None = None,
        *,
        model_id: str = "scripted",
        context_window: int = 4096,
    ) -> None:
        self.model_id = model_id
        self._respond = respond or (lambda conv: f"reply to: {conv[-1]['content'][:40]}")
        self._score = score or (lambda conv, options: [1.0 / len(options)] * len(options))
        self._queue: list[str] = []
        self._context = context_window
        self.generate_calls: list[list[Conversation]] = []
        self.score_calls: list[list[Conversation]] = []
        self.params: list[SamplingParams] = []

    def enqueue(self, *texts: str) -> None:
        self._queue.extend(texts)

    @property
    def context_window(self) -> int:
        return self._context

    def count_tokens(self, conversation: Conversation) -> int:
        return sum(len(m["content"].split()) + 4 for m in conversation)

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        self.generate_calls.append([list(c) for c in conversations])
        self.params.append(params)
        out = []
        for conv in conversations:
            text = self._queue.pop(0) if self._queue else self._respond(conv)
            out.append(Generation(text=text, prompt_tokens=self.count_tokens(conv),
                                  completion_tokens=len(text.split())))
        return out

    def check_options(self, options: Sequence[str]) -> None:
        if len(set(options)) != len(options) or any(not o for o in options):
            raise UserInputError(f"options {list(options)} are not distinct non-empty strings")

    def choice_logprobs(self, conversations: Sequence[Conversation], options: Sequence[str]) -> list[ChoiceScores]:
        self.check_options(options)
        self.score_calls.append([list(c) for c in conversations])
        out = []
        for conv in conversations:
            probs = list(self._score(conv, options))
            total = sum(probs)
            out.append(ChoiceScores(logprobs=[math.log(max(p / total, 1e-12)) for p in probs],
                                    extra={"raw_logprobs": [math.log(max(p, 1e-12)) for p in probs]}))
        return out
