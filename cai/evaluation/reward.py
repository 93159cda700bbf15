"""Scoring with a trained reward model: held-out accuracy and the mean reward of responses.

A reward model is a directory saved by ``cai train reward`` (a one-output
``*ForSequenceClassification`` with its tokenizer). A conversation is scored the
way TRL's RewardTrainer tokenized it in training: the tokenizer's chat template
over prompt + response, right-padded, read at the last non-pad token. The ids come
from `ChatEncoder`, so special-token text inside a prompt or a response stays text
and cannot forge a turn the reward model then scores.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.backends.chat import ChatEncoder
from cai.data import Conversation
from cai.errors import DataError
from cai.evaluation.metrics import RewardAccuracy, RewardStats, reward_accuracy, reward_stats
from cai.progress import progress_bar

log = logging.getLogger(__name__)


class RewardScorer:
    """A reward model loaded for batched scoring of chat conversations."""

    def __init__(
        self,
        reward_model: str | Path | tuple[Any, Any],
        *,
        batch_size: int = 8,
        device: str = "cpu",
        progress: bool = True,
    ) -> None:
        if isinstance(reward_model, tuple):  # (model, tokenizer), already loaded
            self.model, self.tokenizer = reward_model
            self.model_id = getattr(self.model.config, "_name_or_path", "") or "in-memory"
            self.path: Path | None = None
        else:
            from cai.training.common import load_reward_model

            self.model, self.tokenizer = load_reward_model(str(reward_model))
            self.model_id = str(reward_model)
            self.path = Path(reward_model)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device)
        self.model.eval()
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self.chat = ChatEncoder(self.tokenizer, closed=True)  # a whole conversation, as RewardTrainer reads it
        #: Conversations cut from the left to fit max_length in the last ``score`` call.
        self.truncated = 0

    def encode(self, conversation: Conversation) -> list[int]:
        """The ids the reward model reads: control tokens only where the chat template wrote them."""
        return self.chat.encode(list(conversation))

    def score(self, conversations: Sequence[Conversation]) -> list[float]:
        """One scalar reward per conversation, in input order; batched, longest first."""
        import torch

        encoded = [self.encode(c) for c in conversations]
        self.truncated = 0
        if self.max_length:
            for i, ids in enumerate(encoded):
                if len(ids) > self.max_length:  # keep the end: the reward is read at the last token
                    encoded[i] = ids[-self.max_length:]
                    self.truncated += 1
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        scores = [0.0] * len(encoded)
        pad = self.model.config.pad_token_id
        with progress_bar(total=len(encoded), desc="reward", unit="seq", enabled=self.progress) as bar:
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, : len(encoded[i])] = 1
                with torch.inference_mode():
                    logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for row, i in enumerate(idx):
                    scores[i] = float(logits[row, 0])
                bar.update(len(idx))
        if self.truncated:
            log.warning("%d conversations were longer than the reward model's %d positions; scored their last tokens",
                        self.truncated, self.max_length)
        return scores

    def training_fingerprint(self) -> str | None:
        """The fingerprint of the dataset this reward model was trained on (from training_summary.json)."""
        if self.path is None:
            return None
        summary = self.path / "training_summary.json"
        if not summary.is_file():
            return None
        try:
            return (json.loads(summary.read_text(encoding="utf-8")).get("data") or {}).get("fingerprint_hash")
        except (json.JSONDecodeError, AttributeError):
            return None


def preference_conversations(data_dir: str | Path) -> tuple[list[Conversation], list[Conversation], dict[str, Any]]:
    """(prompt + chosen, prompt + rejected) conversations of a preference dataset, and its metadata."""
    from cai.data import read_meta, read_rows
    from cai.training.reward import preference_rows

    meta = read_meta(data_dir)
    kind = meta.get("kind", "unknown")
    if kind != "preference":
        raise DataError(f"{data_dir}: holds '{kind}' rows, but reward accuracy needs 'preference' rows; "
                        "make them with cai generate preferences")
    rows = preference_rows(read_rows(data_dir), str(data_dir), keep_soft=False)
    chosen = [r["prompt"] + r["chosen"] for r in rows]
    rejected = [r["prompt"] + r["rejected"] for r in rows]
    return chosen, rejected, meta


def reward_model_accuracy(
    scorer: RewardScorer, data_dir: str | Path, *, confidence: float = 0.95
) -> RewardAccuracy:
    """Accuracy of the reward model on a (held-out) preference dataset: one batched scoring call."""
    chosen, rejected, meta = preference_conversations(data_dir)
    scores = scorer.score(chosen + rejected)
    result = reward_accuracy(scores[: len(chosen)], scores[len(chosen):], confidence=confidence)
    trained_on = scorer.training_fingerprint()
    if trained_on and trained_on == meta.get("fingerprint_hash"):
        result.notes.append("this reward model was trained on this dataset: this is training accuracy, "
                            "not held-out accuracy")
    if scorer.truncated:
        result.notes.append(f"{scorer.truncated} conversations were cut to the reward model's context")
    return result


def mean_reward(scorer: RewardScorer, conversations: Sequence[Conversation]) -> tuple[RewardStats, list[float]]:
    """Reward statistics of (prompt + response) conversations, and the per-conversation scores."""
    scores = scorer.score(conversations)
    return reward_stats(scores), scores


__all__ = ["RewardScorer", "reward_model_accuracy", "mean_reward", "preference_conversations"]
