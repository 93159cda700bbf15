"""A reward model on AI preference rows, with TRL's RewardTrainer.

When rows carry ``p_chosen`` (the labeller's soft label), the loss is the
cross-entropy against that probability,

    loss = -[p * log sigmoid(r_c - r_r) + (1 - p) * log sigmoid(r_r - r_c)],

which is RewardTrainer's Bradley-Terry loss at p = 1. A labeller that could not
tell two responses apart (p near 0.5) then pushes their rewards together instead
of apart. Without ``p_chosen`` the hard (TRL) loss is used.

TRL gets the pairs tokenized (``chosen_ids``/``rejected_ids``, which its RewardTrainer
takes as processed and only filters by ``max_length``), built by `ChatEncoder` as TRL
would render the closed conversation: special-token text in a prompt or an answer stays
plain text, never a forged turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import DataError
from cai.training.common import TrainResult, as_messages, load_reward_model, lora_config, split_eval
from cai.training.runner import train
from cai.training.spec import TrainerSpec, TrainJob, register_trainer

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


def tokenized_reward_rows(rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """Conversational prompt/chosen/rejected rows -> RewardTrainer's processed rows (``p_chosen`` kept).

    As TRL tokenizes them: each side is the whole closed conversation, prompt + answer.
    Through `ChatEncoder`, so a control token comes only from the chat template.
    """
    from cai.backends.chat import ChatEncoder

    wholes = ChatEncoder(tokenizer, closed=True)
    out = []
    for row in rows:
        item: dict[str, Any] = {"chosen_ids": wholes.encode(row["prompt"] + row["chosen"]),
                                "rejected_ids": wholes.encode(row["prompt"] + row["rejected"])}
        if SOFT_COLUMN in row:
            item[SOFT_COLUMN] = row[SOFT_COLUMN]
        out.append(item)
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


def _rows(raw: list[dict[str, Any]], job: TrainJob) -> list[dict[str, Any]]:
    """Soft rows when asked for, or (``soft_labels=None``) when every row has p_chosen; hard pairs otherwise."""
    has_soft = bool(raw) and all(row.get(SOFT_COLUMN) is not None for row in raw)
    if job.options["soft_labels"] and not has_soft:
        raise DataError(f"{job.source}: soft labels asked for, but not every row has '{SOFT_COLUMN}'; "
                        "drop --soft-labels to train on hard pairs")
    if job.options["soft_labels"] is None:
        job.options["soft_labels"] = has_soft
    return preference_rows(raw, job.where, keep_soft=job.options["soft_labels"])


def _build(job: TrainJob) -> Any:
    """A one-output classifier on the policy's weights, trained on a split of the pairs (the rest held out)."""
    from datasets import Dataset

    cfg = job.config
    train_rows, eval_rows = split_eval(job.rows, job.options["eval_fraction"], seed=cfg.seed)
    rm, job.tokenizer = load_reward_model(job.model, from_policy=True)
    collator_cls, trainer_cls = _soft_trainer_classes()
    encoded = tokenized_reward_rows(train_rows, job.tokenizer), tokenized_reward_rows(eval_rows, job.tokenizer)
    trainer = trainer_cls(
        model=rm, args=cfg, train_dataset=Dataset.from_list(encoded[0]),
        eval_dataset=Dataset.from_list(encoded[1]) if eval_rows else None,
        processing_class=job.tokenizer,
        data_collator=collator_cls(pad_token_id=job.tokenizer.pad_token_id, pad_to_multiple_of=cfg.pad_to_multiple_of),
        peft_config=lora_config("SEQ_CLS", modules_to_save=["score"], settings=job.lora) if job.lora else None,
    )
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise DataError(f"{job.source}: no training pairs fit in max_length={cfg.max_length}; raise max_length")
    dropped = len(train_rows) - kept  # RewardTrainer drops (not truncates) pairs over max_length
    job.info.update(train_pairs=kept, eval_pairs=len(eval_rows),
                    note=f"{dropped} training pairs longer than max_length={cfg.max_length} were dropped"
                    if dropped else None)
    return trainer


def _summary(trainer: Any, job: TrainJob) -> dict[str, Any]:
    """Held-out pairwise accuracy, when pairs were held out."""
    evaluation = None
    if trainer.eval_dataset is not None and len(trainer.eval_dataset):
        metrics = trainer.evaluate()
        evaluation = {"pairs": len(trainer.eval_dataset), "accuracy": metrics.get("eval_accuracy"),
                      "loss": metrics.get("eval_loss"), "margin": metrics.get("eval_margin")}
    return {"soft_labels": job.options["soft_labels"], "eval": evaluation}


REWARD = register_trainer(TrainerSpec(
    name="reward", config_class="trl:RewardConfig", trainer_class=lambda: _soft_trainer_classes()[1],
    data_kind="preference", defaults=REWARD_DEFAULTS, rows=_rows, build=_build, summary=_summary,
    options={"soft_labels": None, "eval_fraction": 0.1},
    description="A reward model (a one-output head on --model) on AI preference labels.",
))


def train_reward(data_dir: str | Path, model: str, out_dir: str | Path, *, config: dict[str, Any] | None = None,
                 config_file: str | Path | None = None, lora: bool = False, soft_labels: bool | None = None,
                 eval_fraction: float = 0.1, **overrides: Any) -> TrainResult:
    """Train a reward model (a one-output classifier on ``model``'s weights) on preference rows.

    ``soft_labels=None`` means: soft when every row has p_chosen. Reports held-out
    pairwise accuracy (``eval_fraction`` of the pairs, when there are at least 4)
    as ``summary["eval"]["accuracy"]``.
    """
    return train(REWARD, data_dir, model, out_dir, config=config, config_file=config_file, lora=lora,
                 soft_labels=soft_labels, eval_fraction=eval_fraction, **overrides)
