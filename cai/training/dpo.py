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

    return TokenizedDPOTrainer


def _build(job: TrainJob) -> Any:
    return with_reference(job, encode=tokenized_preference_rows)


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
