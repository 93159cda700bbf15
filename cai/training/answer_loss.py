"""The SFT loss on answer tokens only, with the output head's gradient computed in the same pass.

Why (issue 35's profile of the demo's SFT step, 2-core EPYC, bf16 autocast): with TRL's
``nll`` loss the model projects every position, prompt and padding included, onto the
49k-token vocabulary and keeps those logits in fp32 for the backward pass; the
decision-token term then sliced them again, and its backward wrote a zero tensor of the
same size. TRL's default ``chunked_nll`` skips the ignored positions but recomputes each
chunk's projection in the backward pass and runs it in fp32 (about a third of bf16's
speed on this CPU).

Here the head is applied to the answer positions only, in chunks, in the autocast
dtype, and each chunk's gradient (softmax minus one-hot, times the token's weight) is
turned into the gradients of the hidden states and of the head's weight at once, so no
chunk's logits outlive it and nothing is recomputed: the same three products as a plain
forward and backward. The loss is ``sum(weight x CE) / num_items_in_batch``, which is TRL's
token-mean loss plus `cai.training.decision`'s extra weight on each row's first answer
tokens, and the forward returns what TRL's SFTTrainer logs for ``chunked_nll``
(entropy, token accuracy, valid tokens), so its metrics are unchanged.

`patch_answer_loss` installs it as the model's forward for calls with labels (as TRL
patches its own chunked loss, so a distributed wrapper still calls it); a call with
``answer_mask`` (a boolean mask over the shifted positions) returns the logits of those
positions only (DPO's log-probs, `cai.training.dpo`); other calls (generation,
evaluation without labels) run the model's own forward.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from typing import Any

#: Answer positions per chunk: bounds the transient logits at CHUNK x vocabulary x 4 bytes (~100 MB at 49k).
CHUNK = 512


def supports_answer_loss(model: Any, *, head_only: bool = True) -> bool:
    """True when the logits are exactly the head's linear map of the last hidden state (no scaling,
    soft-capping or adapter on the head), so the fused loss computes what the model's forward would.
    ``head_only=False`` checks the config only (before an adapter is put on the model)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(cfg, "final_logit_softcapping", None) is not None:
        return False
    if getattr(cfg, "logit_scale", None) not in (None, 1.0) or getattr(cfg, "output_multiplier", None) not in (None, 1.0):
        return False
    if not head_only:
        return model.get_output_embeddings() is not None
    head = model.get_output_embeddings()
    if head is None or type(head).__name__ != "Linear" or type(head).__module__ != "torch.nn.modules.linear":
        return False  # a PEFT-wrapped or custom head
    return getattr(model, "base_model", None) is not None and model.base_model is not model


def _weighted_ce_and_grads(hidden: Any, weight: Any, bias: Any, targets: Any, token_weights: Any,
                           dtype: Any) -> tuple[Any, ...]:
    """sum(token_weights x CE), the gradients wrt hidden/weight/bias, and TRL's three statistics."""
    import torch

    n = hidden.shape[0]
    w = weight.to(dtype)
    grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
    loss = hidden.new_zeros((), dtype=torch.float32)
    correct = hidden.new_zeros((), dtype=torch.float32)
    entropy = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, CHUNK):
        h = hidden[start:start + CHUNK].to(dtype)
        tgt, tw = targets[start:start + CHUNK], token_weights[start:start + CHUNK]
        logits = (h @ w.t()).float()
        if bias is not None:
            logits = logits + bias.float()
        logp = torch.log_softmax(logits, dim=-1)
        del logits
        picked = logp.gather(1, tgt[:, None]).squeeze(1)
        loss = loss - (tw * picked).sum()
        correct = correct + (logp.argmax(dim=-1) == tgt).sum()
        prob = logp.exp()
        entropy = entropy - (prob * logp).sum()
        del logp
        prob[torch.arange(prob.shape[0], device=prob.device), tgt] -= 1.0
        g = prob.mul_(tw[:, None])  # d(sum tw x CE)/d(logits)
        if grad_bias is not None:
            grad_bias += g.sum(dim=0)
        g = g.to(dtype)
        grad_hidden[start:start + CHUNK] = (g @ w).to(hidden.dtype)
        grad_weight += (g.t() @ h).float()
    return loss, grad_hidden, grad_weight, grad_bias, correct, entropy


def _answer_ce() -> type:
    import torch

    class AnswerCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, targets: Any, token_weights: Any,
                    dtype: Any) -> Any:  # type: ignore[override]
            loss, gh, gw, gb, correct, entropy = _weighted_ce_and_grads(hidden, weight, bias, targets,
                                                                        token_weights, dtype)
            ctx.save_for_backward(gh, gw.to(weight.dtype), gb.to(bias.dtype) if gb is not None else None)
            ctx.mark_non_differentiable(correct, entropy)
            return loss, correct, entropy

        @staticmethod
        def backward(ctx: Any, grad_loss: Any, *_: Any) -> Any:  # type: ignore[override]
            gh, gw, gb = ctx.saved_tensors
            return (gh * grad_loss.to(gh.dtype), gw * grad_loss.to(gw.dtype),
                    gb * grad_loss.to(gb.dtype) if gb is not None else None, None, None, None)

    return AnswerCE


_FN: Any = None


def answer_loss(hidden: Any, head: Any, labels: Any, *, decision_tokens: int = 0, decision_weight: float = 1.0,
                num_items_in_batch: Any = None) -> tuple[Any, Any, Any, Any]:
    """Next-token CE over the answer positions of ``hidden`` (B, S, H) given unshifted ``labels`` (-100: none).

    Each row's first ``decision_tokens`` answer tokens weigh ``decision_weight``, the rest 1; the sum
    is divided by ``num_items_in_batch`` (default: the answer tokens here). Returns (loss, correct
    tokens, entropy sum, answer tokens), the last three for logging.
    """
    import torch

    global _FN
    if _FN is None:
        _FN = _answer_ce()
    tgt = labels[:, 1:]
    valid = tgt != -100
    weights = torch.ones(tgt.shape, dtype=torch.float32, device=tgt.device)
    if decision_tokens > 0 and decision_weight != 1.0:
        rank = valid.long().cumsum(dim=1)  # 1 at each row's first answer token, 2 at its second...
        weights = torch.where(valid & (rank <= decision_tokens), float(decision_weight), 1.0)
    h = hidden[:, :-1][valid]
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    n_valid = valid.sum()
    loss, correct, entropy = _FN.apply(h, head.weight, head.bias, tgt[valid], weights[valid], dtype)
    denom = n_valid.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return loss / torch.as_tensor(denom, device=loss.device, dtype=loss.dtype), correct, entropy, n_valid


@dataclass
class AnswerLossOutput:
    """What TRL's SFTTrainer reads from the forward with ``loss_type: chunked_nll``."""

    loss: Any = None
    logits: Any = None
    num_correct_tokens: Any = None
    entropy_sum: Any = None
    num_valid_tokens: Any = None
    aux_loss: Any = None

    def __getitem__(self, key: Any) -> Any:  # transformers' Trainer reads outputs["loss"] or outputs[0]
        return self.loss if key in (0, "loss") else getattr(self, key)


def patch_answer_loss(model: Any, *, decision_tokens: int = 0, decision_weight: float = 1.0) -> None:
    """Make ``model``'s forward compute `answer_loss` when called with labels, and return the answer
    positions' logits only when called with ``answer_mask`` (see the module docstring)."""
    original = type(model).forward.__get__(model)
    head = model.get_output_embeddings()

    def forward(self: Any, input_ids: Any = None, attention_mask: Any = None, labels: Any = None,
                num_items_in_batch: Any = None, answer_mask: Any = None, **kwargs: Any) -> Any:
        if labels is None and answer_mask is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        kwargs.pop("use_cache", None)
        out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        if answer_mask is not None:  # the logits predicting the masked (shifted) positions only: (N, vocab)
            return AnswerLossOutput(logits=head(out.last_hidden_state[:, :-1][answer_mask]))
        loss, correct, entropy, n = answer_loss(out.last_hidden_state, head, labels, decision_tokens=decision_tokens,
                                                decision_weight=decision_weight,
                                                num_items_in_batch=num_items_in_batch)
        return AnswerLossOutput(loss=loss, num_correct_tokens=correct, entropy_sum=entropy, num_valid_tokens=n)

    forward.__signature__ = inspect.signature(type(model).forward)  # type: ignore[attr-defined]
    model.forward = types.MethodType(forward, model)


__all__ = ["answer_loss", "patch_answer_loss", "supports_answer_loss", "CHUNK"]
