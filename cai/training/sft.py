"""Supervised fine-tuning on SFT rows (revisions, chain-of-thought) with TRL's SFTTrainer.

The loss covers the final assistant turn only. TRL's ``assistant_only_loss``
needs a chat template with ``{% generation %}`` tags, which SmolLM2's ChatML
template lacks; instead each conversation becomes a conversational
prompt/completion pair, and TRL trains prompt/completion rows on the completion
only (``completion_only_loss`` defaults to on for them).

TRL is handed those rows tokenized (``input_ids`` and ``completion_mask``, which its
``_prepare_dataset`` takes as processed: it skips its own tokenizing, then builds the
labels from the mask, truncates to ``max_length`` and drops rows left without answer
tokens, as before). The ids come from `ChatEncoder`, the way TRL's tokenizing would
make them, except that special-token text inside a prompt or an answer stays plain
text: ``<|im_end|>\n<|im_start|>system`` in a training row trains as those characters,
never as a forged turn.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cai.errors import DataError, UserInputError
from cai.training.answer_loss import patch_answer_loss, supports_answer_loss
from cai.training.common import TrainResult, as_messages, policy_trainer
from cai.training.decision import decision_sft_trainer
from cai.training.runner import train
from cai.training.spec import TrainerSpec, TrainJob, register_trainer


def sft_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """SFT rows -> conversational prompt/completion rows (the last assistant turn is the completion)."""
    out = []
    for i, row in enumerate(rows):
        at = f"{where}[row {i}]"
        if "messages" in row:
            msgs = as_messages(row["messages"], "user", at)
        elif "prompt" in row and "completion" in row:
            msgs = as_messages(row["prompt"], "user", at) + as_messages(row["completion"], "assistant", at)
        else:
            raise DataError(f"{at}: an SFT row needs 'messages' (or 'prompt' and 'completion')")
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise DataError(f"{at}: 'messages' must end with the assistant turn to train on")
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    if not out:
        raise DataError(f"{where}: no rows to train on; generate some with cai generate revisions")
    return out


log = logging.getLogger(__name__)


def tokenized_sft_rows(rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Prompt/completion rows -> TRL's processed rows: ``input_ids`` and ``completion_mask``.

    As TRL's SFTTrainer tokenizes a conversational prompt/completion row: the prompt
    with the generation prompt, the whole conversation closed, and the mask 1 on what the
    whole adds after the prompt (the final assistant turn). Through `ChatEncoder`, so a
    control token comes only from the chat template, never from message content.
    """
    from cai.backends.chat import ChatEncoder

    prompts, wholes = ChatEncoder(tokenizer), ChatEncoder(tokenizer, closed=True)
    out, mismatched = [], 0
    for row in rows:
        prompt = prompts.encode(row["prompt"])
        ids = wholes.encode(row["prompt"] + row["completion"])
        mismatched += ids[: len(prompt)] != prompt
        n = min(len(prompt), len(ids))
        out.append({"input_ids": ids, "completion_mask": [0] * n + [1] * (len(ids) - n)})
    if mismatched:  # TRL warns of the same and masks the same way
        log.warning("%d SFT row(s): the tokenized prompt is not a prefix of the tokenized conversation; "
                    "the loss starts after the prompt's length anyway", mismatched)
    return out


def _rows(raw: list[dict[str, Any]], job: TrainJob) -> list[dict[str, Any]]:
    """The conversational rows, checked; the settings that need TRL's own tokenizing refused before any model loads."""
    cfg = job.config
    if getattr(cfg, "assistant_only_loss", False):
        raise UserInputError("cai train sft: assistant_only_loss is not needed (the loss already covers the final "
                             "assistant turn only); remove it")
    path = getattr(cfg, "chat_template_path", None)
    if path is not None and not (os.path.isfile(path) and str(path).endswith((".jinja", ".j2"))):
        raise UserInputError(f"cai train sft: chat_template_path '{path}' must be a .jinja/.j2 file "
                             "(cloning another model's template is not supported)")
    return sft_rows(raw, job.where)


def _encode(job: TrainJob) -> Any:
    def encode(rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, list[int]]]:
        path = getattr(job.config, "chat_template_path", None)
        if path is not None:  # what SFTTrainer sets on the tokenizer before it tokenizes
            tokenizer.chat_template = Path(path).read_text(encoding="utf-8")
        return tokenized_sft_rows(rows, tokenizer)

    return encode


def _check(job: TrainJob) -> None:
    tokens, weight = job.options["decision_tokens"], job.options["decision_weight"]
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise UserInputError(f"cai train sft: decision_tokens must be a whole number >= 0, got {tokens!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 1:
        raise UserInputError(f"cai train sft: decision_weight must be a number >= 1, got {weight!r}")


def _build(job: TrainJob) -> Any:
    tokens, weight = job.options["decision_tokens"], job.options["decision_weight"]
    decision = bool(tokens and weight != 1)
    loss_type = job.settings.get("loss_type")
    if decision and (getattr(job.config, "packing", False) or getattr(job.config, "padding_free", False)):
        raise UserInputError("cai train sft: decision_tokens counts each row's first answer tokens, which "
                             "packing and padding_free run together; turn those off or set decision_tokens: 0")
    if decision and loss_type not in (None, "nll", "chunked_nll"):
        raise UserInputError(f"cai train sft: decision_tokens needs the plain token loss (got loss_type: "
                             f"{loss_type!r}); remove loss_type or set decision_tokens: 0")
    if getattr(job.config, "completion_only_loss", None) is None:
        # TRL's default for prompt/completion rows; tokenized rows carry no 'prompt' column to tell it so.
        job.config.completion_only_loss = True
    # cai's answer loss (cai.training.answer_loss) replaces TRL's default chunked one where the head allows:
    # same math, a third less work on CPU, and it carries the decision weights. Otherwise the decision
    # term reads the full logits, which only loss_type nll keeps.
    fused = loss_type in (None, "chunked_nll") and not getattr(job.config, "use_liger_kernel", False)

    def prepare(model: Any) -> None:
        nonlocal fused
        fused = fused and supports_answer_loss(model, head_only=False)
        job.config.loss_type = "chunked_nll" if fused else ("nll" if decision else job.config.loss_type)

    trainer = policy_trainer(job, encode=_encode(job), prepare=prepare)
    kept = len(trainer.train_dataset)
    if kept == 0:  # TRL drops rows whose answer was cut off entirely by max_length
        raise DataError(f"{job.source}: no row keeps any answer tokens within max_length={job.config.max_length}; "
                        "raise --max-length")
    job.info["rows_trained"] = kept
    target = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if fused and supports_answer_loss(target):
        patch_answer_loss(target, decision_tokens=tokens if decision else 0, decision_weight=float(weight))
        job.info["loss"] = "answer_loss"
    else:
        trainer.decision = (tokens, float(weight))
        job.info["loss"] = job.config.loss_type
    return trainer


def _summary(trainer: Any, job: TrainJob) -> dict[str, Any]:
    return {"decision_tokens": job.options["decision_tokens"], "decision_weight": job.options["decision_weight"],
            "loss": job.info.get("loss")}


SFT = register_trainer(TrainerSpec(
    name="sft", config_class="trl:SFTConfig", trainer_class=decision_sft_trainer, data_kind="sft",
    defaults={"max_length": 512, "learning_rate": 2e-5}, rows=_rows,
    options={"decision_tokens": 0, "decision_weight": 1.0}, check=_check, summary=_summary,
    build=_build, description="Supervised fine-tuning on SFT rows; the loss covers the assistant's answer only.",
))


def train_sft(data_dir: str | Path, model: str, out_dir: str | Path, *, config: dict[str, Any] | None = None,
              config_file: str | Path | None = None, lora: bool = False, **overrides: Any) -> TrainResult:
    """Fine-tune ``model`` on an SFT dataset directory; ``overrides`` are SFTConfig fields (``max_steps=3``...)
    and the options ``decision_tokens``/``decision_weight`` (`cai.training.decision`)."""
    return train(SFT, data_dir, model, out_dir, config=config, config_file=config_file, lora=lora, **overrides)
