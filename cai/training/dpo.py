"""Direct preference optimisation on the same preference rows, with TRL's DPOTrainer.

DPO takes hard pairs: only prompt/chosen/rejected go in (p_chosen, principle ids
and the labeller's traces stay in the dataset, not in the trainer).

TRL gets the pairs tokenized (``prompt_ids``, ``chosen_ids``, ``rejected_ids``, as its
DPOTrainer's own tokenizing makes them), built by `ChatEncoder`: special-token text in
a prompt or an answer stays plain text, never a forged turn. TRL's DPOTrainer has no
"already tokenized" path of its own, so `TokenizedDPOTrainer` skips its tokenizing for
such rows and keeps the rest of its preparation (dropping prompts that fill max_length).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from cai.training.common import TrainResult, load_policy, policy_trainer, use_training_attention
from cai.training.reward import preference_rows
from cai.training.runner import train
from cai.training.spec import TrainerSpec, TrainJob, register_trainer


def with_reference(job: TrainJob, **extra: Any) -> Any:
    """The spec's trainer with a frozen copy of the policy as reference (with LoRA, TRL disables the adapter)."""
    ref = None
    if not job.lora:
        ref, _ = load_policy(job.model)
        use_training_attention(ref, job, 2)  # chosen and rejected rows run as one batch
        ref.eval()
    return policy_trainer(job, ref_model=ref, **extra)


def tokenized_preference_rows(rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Conversational prompt/chosen/rejected rows -> DPOTrainer's tokenized rows.

    As TRL tokenizes them: the prompt with the generation prompt; each answer is what the
    whole closed conversation adds after the prompt's ids. Through `ChatEncoder`.
    """
    from cai.backends.chat import ChatEncoder

    prompts, wholes = ChatEncoder(tokenizer), ChatEncoder(tokenizer, closed=True)
    out = []
    for row in rows:
        prompt = prompts.encode(row["prompt"])
        out.append({"prompt_ids": prompt,
                    "chosen_ids": wholes.encode(row["prompt"] + row["chosen"])[len(prompt):],
                    "rejected_ids": wholes.encode(row["prompt"] + row["rejected"])[len(prompt):]})
    return out


@cache
def tokenized_dpo_trainer() -> type:
    """TRL's DPOTrainer, taking rows that already hold ``prompt_ids``/``chosen_ids``/``rejected_ids`` as they are."""
    from trl import DPOTrainer
    from trl.data_utils import get_dataset_column_names

    class TokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" not in get_dataset_column_names(dataset):
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            # What DPOTrainer does after tokenizing: drop prompts that alone fill max_length (keep_start).
            if args.max_length is not None and args.truncation_mode == "keep_start":
                dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length,
                                         num_proc=args.dataset_num_proc)
            return dataset

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            if not getattr(self, "answer_logps", False):
                return super()._compute_loss(model, inputs, return_outputs)
            return answer_dpo_loss(self, model, inputs, return_outputs)

    return TokenizedDPOTrainer


def fits_answer_logps(trainer: Any) -> bool:
    """Whether `answer_dpo_loss` computes what TRL's DPO loss would: the plain sigmoid loss with a
    reference model, and heads the answer logits can be taken from directly."""
    from cai.training.answer_loss import supports_answer_loss

    args = trainer.args
    plain = (list(trainer.loss_types) == ["sigmoid"] and trainer.f_divergence_type == "reverse_kl"
             and trainer.ld_alpha is None and not trainer.use_weighting and not trainer.precompute_ref_logps
             and not trainer.aux_loss_enabled and not getattr(args, "padding_free", False)
             and not getattr(args, "use_liger_kernel", False) and trainer.ref_model is not None
             and not hasattr(trainer.model, "get_base_model"))  # a PEFT model: TRL's path
    return plain and supports_answer_loss(trainer.model) and supports_answer_loss(trainer.ref_model)


def _sequence_logps(out: Any, targets: Any, rows: Any, n_rows: int) -> tuple[Any, Any]:
    """Per-token log-probs of ``targets`` under the answer logits, and their sum per row."""
    import torch

    logp = torch.log_softmax(out.logits.float(), dim=-1)
    token = logp.gather(1, targets[:, None]).squeeze(1)
    return logp, torch.zeros(n_rows, dtype=token.dtype, device=token.device).index_add(0, rows, token)


def answer_dpo_loss(trainer: Any, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
    """TRL's sigmoid DPO loss and metrics, with the head applied to the answer tokens only.

    TRL projects every position of both models onto the vocabulary and computes its
    entropy, mean-logit and accuracy metrics over those full logits; the loss reads only
    the answer tokens' log-probs. Here both models return the answer positions' logits
    (`cai.training.answer_loss.patch_answer_loss`), in fp32 for the log-softmax, and
    every metric TRL logs is taken from them, as TRL's masks would.
    """
    import torch
    import torch.nn.functional as F

    mode = "train" if trainer.model.training else "eval"
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    mask = inputs["completion_mask"][:, 1:].bool()
    targets = ids[:, 1:][mask]
    n_rows = ids.shape[0]
    rows = torch.arange(n_rows, device=ids.device)[:, None].expand_as(mask)[mask]
    outputs = model(input_ids=ids, attention_mask=attention, use_cache=False, answer_mask=mask)
    logp, logps = _sequence_logps(outputs, targets, rows, n_rows)
    with torch.no_grad():
        _, ref_logps = _sequence_logps(
            trainer.ref_model(input_ids=ids, attention_mask=attention, use_cache=False, answer_mask=mask),
            targets, rows, n_rows)
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)
    ref_chosen, ref_rejected = ref_logps.chunk(2, dim=0)
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen, rejected_logps - ref_rejected
    loss = -F.logsigmoid(trainer.beta * (chosen_ratio - rejected_ratio)).mean() * trainer.loss_weights[0]

    gather = trainer.accelerator.gather_for_metrics
    metrics = trainer._metrics[mode]
    with torch.no_grad():
        chosen = rows < n_rows // 2
        tokens = gather(mask.sum()).sum()
        entropy = -(logp.exp() * logp).sum(-1)
        metrics["entropy"].append((gather(entropy.sum()).sum() / tokens.clamp(min=1)).item())
        if mode == "train":
            trainer._total_train_tokens += gather(attention.sum()).sum().item()
        metrics["num_tokens"] = [trainer._total_train_tokens]
        mean_logit = outputs.logits.float().mean(-1)
        for side, pick in (("chosen", chosen), ("rejected", ~chosen)):
            count = gather(pick.sum()).sum().item()
            metrics[f"logits/{side}"].append(gather(mean_logit[pick].sum()).sum().item() / count if count else 0.0)
        right = gather(((outputs.logits.argmax(-1) == targets) & chosen).sum()).sum()
        n_chosen = gather(chosen.sum()).sum()
        metrics["mean_token_accuracy"].append((right / n_chosen).item() if n_chosen > 0 else 0.0)
        chosen_rewards, rejected_rewards = trainer.beta * chosen_ratio, trainer.beta * rejected_ratio
        metrics["rewards/chosen"].append(trainer.accelerator.gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(trainer.accelerator.gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(
            trainer.accelerator.gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(trainer.accelerator.gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(trainer.accelerator.gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(trainer.accelerator.gather(rejected_logps).mean().item())
    return (loss, outputs) if return_outputs else loss


def _build(job: TrainJob) -> Any:
    trainer = with_reference(job, encode=tokenized_preference_rows)
    trainer.answer_logps = fits_answer_logps(trainer)
    if trainer.answer_logps:
        from cai.training.answer_loss import patch_answer_loss

        patch_answer_loss(trainer.model)
        patch_answer_loss(trainer.ref_model)
    job.info["loss"] = "answer_logps" if trainer.answer_logps else "trl"
    return trainer


DPO = register_trainer(TrainerSpec(
    name="dpo", config_class="trl:DPOConfig", trainer_class=tokenized_dpo_trainer, data_kind="preference",
    defaults={"max_length": 512, "learning_rate": 1e-6, "beta": 0.1},
    rows=lambda raw, job: preference_rows(raw, job.where, keep_soft=False), build=_build,
    description="Direct preference optimisation on preference rows.",
))


def train_dpo(data_dir: str | Path, model: str, out_dir: str | Path, *, config: dict[str, Any] | None = None,
              config_file: str | Path | None = None, lora: bool = False, **overrides: Any) -> TrainResult:
    """DPO-train ``model`` on a preference dataset directory (``overrides`` are DPOConfig fields)."""
    return train(DPO, data_dir, model, out_dir, config=config, config_file=config_file, lora=lora, **overrides)
