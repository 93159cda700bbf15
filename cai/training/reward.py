"""A reward model on AI preference rows, with TRL's RewardTrainer.

When rows carry ``p_chosen`` (the labeller's soft label), the loss is the
cross-entropy against that probability,

    loss = -[p * log sigmoid(r_c - r_r) + (1 - p) * log sigmoid(r_r - r_c)],

which is RewardTrainer's Bradley-Terry loss at p = 1. A labeller that could not
tell two responses apart (p near 0.5) then pushes their rewards together instead
of apart. Without ``p_chosen`` the hard (TRL) loss is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import DataError
from cai.training.common import (
    TrainResult,
    as_messages,
    base_summary,
    build_config,
    data_provenance,
    load_reward_model,
    lora_config,
    require_kind,
    run_training,
    save_trained,
    split_eval,
)

REWARD_DEFAULTS: dict[str, Any] = {"max_length": 512, "learning_rate": 1e-4}
SOFT_COLUMN = "p_chosen"


def soft_preference_loss(rewards_chosen: Any, rewards_rejected: Any, p_chosen: Any) -> Any:
    """Mean cross-entropy of sigmoid(r_c - r_r) against the soft label p (a tensor per pair)."""
    import torch.nn.functional as F

    diff = rewards_chosen - rewards_rejected
    p = p_chosen.to(diff.dtype)
    return -(p * F.logsigmoid(diff) + (1 - p) * F.logsigmoid(-diff)).mean()


def preference_rows(rows: list[dict[str, Any]], where: str, *, keep_soft: bool) -> list[dict[str, Any]]:
    """Explicit-prompt conversational rows (prompt, chosen, rejected[, p_chosen]); other columns dropped."""
    out = []
    for i, row in enumerate(rows):
        at = f"{where}[row {i}]"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise DataError(f"{at}: a preference row needs prompt, chosen and rejected (missing {', '.join(missing)})")
        item = {
            "prompt": as_messages(row["prompt"], "user", at),
            "chosen": as_messages(row["chosen"], "assistant", at),
            "rejected": as_messages(row["rejected"], "assistant", at),
        }
        if keep_soft:
            p = row.get(SOFT_COLUMN)
            if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
                raise DataError(f"{at}: '{SOFT_COLUMN}' must be a probability in [0, 1], got {p!r}")
            item[SOFT_COLUMN] = float(p)
        out.append(item)
    if not out:
        raise DataError(f"{where}: no preference rows; generate some with cai generate preferences")
    return out


def _soft_trainer_classes():
    """Built on first use so that importing this module does not import trl."""
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    @dataclass
    class SoftPreferenceCollator(DataCollatorForPreference):
        """TRL's collator, plus the p_chosen column as a tensor."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().torch_call(examples)
            if SOFT_COLUMN in examples[0]:
                batch[SOFT_COLUMN] = torch.tensor([float(e[SOFT_COLUMN]) for e in examples], dtype=torch.float)
            return batch

    class SoftLabelRewardTrainer(RewardTrainer):
        """RewardTrainer whose loss follows p_chosen when the batch has it (TRL's loss otherwise)."""

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if SOFT_COLUMN not in self._signature_columns:  # keep the column through remove_unused_columns
                self._signature_columns = [*self._signature_columns, SOFT_COLUMN]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p = inputs.pop(SOFT_COLUMN, None)
            # TRL's loss also records accuracy/margin metrics; reuse it, then swap in the soft loss.
            hard_loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                      num_items_in_batch=num_items_in_batch)
            if p is None:
                return (hard_loss, outputs) if return_outputs else hard_loss
            rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = soft_preference_loss(rewards_chosen, rewards_rejected, p.to(rewards_chosen.device))
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean(
                    (rewards_chosen + rewards_rejected) ** 2)
            return (loss, outputs) if return_outputs else loss

    return SoftPreferenceCollator, SoftLabelRewardTrainer


def build_reward_trainer(
    data_dir: str | Path,
    model: str,
    out_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    soft_labels: bool | None = None,
    eval_fraction: float = 0.1,
    **overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    """The reward trainer and its context. ``soft_labels=None`` means: soft when every row has p_chosen."""
    from datasets import Dataset
    from trl import RewardConfig

    from cai.data import read_rows

    meta = require_kind(data_dir, "preference", "cai train reward")
    cfg, settings = build_config(RewardConfig, out_dir, defaults=REWARD_DEFAULTS, config=config,
                                 config_file=config_file, overrides=overrides)
    raw = read_rows(data_dir)
    has_soft = bool(raw) and all(row.get(SOFT_COLUMN) is not None for row in raw)
    if soft_labels and not has_soft:
        raise DataError(f"{data_dir}: soft labels asked for, but not every row has '{SOFT_COLUMN}'; "
                        "drop --soft-labels to train on hard pairs")
    soft = has_soft if soft_labels is None else soft_labels
    rows = preference_rows(raw, str(data_dir), keep_soft=soft)
    train_rows, eval_rows = split_eval(rows, eval_fraction, seed=cfg.seed)
    rm, tok = load_reward_model(model, from_policy=True)
    collator_cls, trainer_cls = _soft_trainer_classes()
    trainer = trainer_cls(
        model=rm, args=cfg, train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tok,
        data_collator=collator_cls(pad_token_id=tok.pad_token_id, pad_to_multiple_of=cfg.pad_to_multiple_of),
        peft_config=lora_config("SEQ_CLS", modules_to_save=["score"]) if lora else None,
    )
    kept = len(trainer.train_dataset)
    if kept < len(train_rows):  # RewardTrainer drops (not truncates) pairs over max_length
        trainer_note = f"{len(train_rows) - kept} training pairs longer than max_length={cfg.max_length} were dropped"
    else:
        trainer_note = None
    ctx = {
        "cfg": cfg, "settings": settings, "tokenizer": tok, "soft_labels": soft,
        "data": {**data_provenance(data_dir, meta, len(rows)), "train_pairs": kept, "eval_pairs": len(eval_rows),
                 "note": trainer_note},
    }
    return trainer, ctx


def train_reward(
    data_dir: str | Path,
    model: str,
    out_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    soft_labels: bool | None = None,
    eval_fraction: float = 0.1,
    **overrides: Any,
) -> TrainResult:
    """Train a reward model (a one-output classifier on ``model``'s weights) on preference rows.

    Reports held-out pairwise accuracy (``eval_fraction`` of the pairs, when there
    are at least 4) as ``summary["eval"]["accuracy"]``.
    """
    trainer, ctx = build_reward_trainer(data_dir, model, out_dir, config=config, config_file=config_file,
                                        lora=lora, soft_labels=soft_labels, eval_fraction=eval_fraction,
                                        **overrides)
    if len(trainer.train_dataset) == 0:
        raise DataError(f"{data_dir}: no training pairs fit in max_length={ctx['cfg'].max_length}; raise max_length")
    seconds = run_training(trainer)
    evaluation = None
    if trainer.eval_dataset is not None and len(trainer.eval_dataset):
        metrics = trainer.evaluate()
        evaluation = {"pairs": len(trainer.eval_dataset), "accuracy": metrics.get("eval_accuracy"),
                      "loss": metrics.get("eval_loss"), "margin": metrics.get("eval_margin")}
    summary = base_summary("reward", model=model, settings=ctx["settings"], config=ctx["cfg"], lora=lora,
                           data=ctx["data"], seconds=seconds, trainer=trainer)
    summary["soft_labels"] = ctx["soft_labels"]
    summary["eval"] = evaluation
    return save_trained(trainer.model, ctx["tokenizer"], out_dir, summary)
