"""Extra weight on the first answer tokens in SFT: where a chat model decides to answer or to refuse.

Why (issue 15's measurements on the embedded 135M model): the SFT loss is a mean over
every answer token, so the one decision that matters for harmlessness (do the first
tokens open a refusal or an answer?) gets a few tokens' share of the gradient among
~60 tokens of content. Weighting the first ``tokens`` answer tokens ``weight`` times
trains that decision harder without more steps. On a validation slice of the training
sets (64 red-team + 64 helpful prompts, never the eval files), first 2 tokens x 20
moved SFT from refusing 0.656 of harmful / 0.125 of ordinary prompts to 0.734 / 0.109.
The held-out eval files did not confirm the gain: the quickstart round with it refused
0.88 of eval harmful and 0.22 of eval benign prompts (issue 15's notes).

The added term is ``(weight - 1) * sum(CE of the first tokens) / (answer tokens)``, so
the loss is the weighted token mean with TRL's own normaliser, and TRL's logging
(entropy, token accuracy) is unchanged.
"""

from __future__ import annotations

from functools import cache
from typing import Any


def decision_term(logits: Any, labels: Any, tokens: int, weight: float, normaliser: Any = None) -> Any:
    """``(weight - 1) x`` the summed cross-entropy of each row's first ``tokens`` answer tokens, over ``normaliser``.

    ``labels`` are the unshifted labels (-100 where no loss), as the causal LM shifts them;
    ``normaliser`` defaults to the number of answer tokens in the batch.
    """
    import torch
    import torch.nn.functional as F

    tgt = labels[:, 1:]
    valid = tgt != -100
    rank = valid.long().cumsum(dim=1)  # 1 for each row's first answer token, 2 for its second...
    first = valid & (rank <= tokens)
    if not bool(first.any()):
        return logits.new_zeros(())
    chosen = logits[:, :-1][first].float()  # only the decision positions: no full-vocab fp32 copy of the batch
    ce = F.cross_entropy(chosen, tgt[first], reduction="sum")
    denom = normaliser if normaliser is not None else valid.sum()
    denom = torch.as_tensor(denom, device=ce.device, dtype=ce.dtype).clamp(min=1)
    return (weight - 1.0) * ce / denom


@cache
def decision_sft_trainer() -> type:
    """TRL's SFTTrainer whose loss adds `decision_term` when ``decision = (tokens, weight)`` is set on it."""
    from trl import SFTTrainer

    class DecisionSFTTrainer(SFTTrainer):
        decision: tuple[int, float] = (0, 1.0)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
            tokens, weight = self.decision
            labels = inputs.get("labels") if tokens > 0 and weight != 1.0 else None
            if labels is None:  # off (or labels pre-shifted for sequence parallelism): TRL's loss as it is
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            extra = decision_term(outputs.logits, labels.to(outputs.logits.device), tokens, weight, num_items_in_batch)
            loss = loss + extra.to(loss.dtype)
            return (loss, outputs) if return_outputs else loss

    return DecisionSFTTrainer


__all__ = ["decision_sft_trainer", "decision_term"]
