"""``dpo``: DPO from the round's SFT model on the preference rows the label-source choice picks."""

from __future__ import annotations

import shutil
from typing import Any, Literal

from pydantic import Field

from cai.rounds.context import StageContext
from cai.rounds.label_source import OPTIONAL_INPUTS, LabelSourceChoice, decide, describe, provenance
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.stages._common import TrainSection, check_trainer, train_summary


class DPOSection(TrainSection, LabelSourceChoice):
    if_untrusted: Literal["train", "skip"] = Field("train", description=(
        "When the only preference rows are model labels that failed their pair-set check: train on them "
        "anyway, or skip (the round's policy passes through unchanged, and the summary says why)."))


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.training import train_dpo

    choice = decide(ctx, ctx.section)
    source, data, why = choice.source, choice.data, choice.why
    s = ctx.section
    # From this round's SFT model when the round has one; else (an own-feedback round) from its policy.
    start = str(ctx.input_dir("sft")) if ctx.has_input("sft") else ctx.policy
    if s.if_untrusted == "skip" and not choice.trusted:
        # Training on labels at chance does not improve a policy (docs/own-feedback.md): keep it as it was.
        return _pass_through(ctx, start, describe(source, data, why + "; if_untrusted: skip, so no training"), data)
    if not _has_rows(data):
        # An own-feedback round can find nothing to vote on (every prompt's samples decided alike).
        return _pass_through(ctx, start, describe(source, data, why + "; no preference rows, so no training"), data)
    res = train_dpo(data, start, ctx.out, config=s.config, lora=s.lora, average_tail=s.average_tail, resume=not ctx.fresh)
    return {**train_summary(res.summary), **describe(source, data, why), "provenance": provenance(data)}


def _has_rows(data: Any) -> bool:
    from pathlib import Path

    f = Path(data) / "data.jsonl"
    return not f.exists() or any(line.strip() for line in f.open(encoding="utf-8"))


def _pass_through(ctx: StageContext, start: str, summary: dict[str, Any], data: Any) -> dict[str, Any]:
    """The round's starting policy, copied as this stage's output, with why nothing was trained."""
    from pathlib import Path

    from cai.errors import UserInputError
    from cai.models import resolve_model_path

    path = Path(resolve_model_path(start))
    if not path.is_dir():
        raise UserInputError(f"stages.dpo passes {start} through untrained ({summary.get('label_source_why')}), "
                             "which needs a local model directory; use if_untrusted: train or a local policy")
    shutil.copytree(path, ctx.out, dirs_exist_ok=True)
    return {**summary, "skipped": True, "provenance": provenance(data)}


STAGE = register_stage(RoundStage(
    name="dpo", run=run, config=DPOSection, optional_inputs=("sft", *OPTIONAL_INPUTS), reads_policy=True, restart=True, checkpoints=True,
    produces_policy=True, uses=("seed",), check=check_trainer("dpo", "dpo"),
    description="DPO from the SFT model (else the round's policy) on judge, scored, contrastive or revision pairs "
                "(chosen by measurement).",
))
