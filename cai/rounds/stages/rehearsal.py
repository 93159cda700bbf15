"""``rehearsal``: a short, gentle SFT pass of the round's newest policy on the helpful rows alone.

Why it exists (issue 15's measurements): after SFT on the distilled rows the 135M policy
refuses its *training* helpful prompts rarely (0.11) but unseen ordinary ones often (0.34):
the refusal generalises more broadly than the answers do. A few steps on the helpful
rows alone, at a low learning rate, lower the refusal everywhere, most where the model
was least sure, so harmful prompts stay refused more often than ordinary ones. It is one
knob (steps x learning rate) that trades harmlessness for helpfulness: choose it on the
validation slice (``prompts.validation``), never on the eval sets. Too much of it undoes
the round (after 10 steps at 5e-5 the probability of opening with "I can't" passed 0.5
on 8% of validation red-team prompts, from 88% before).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cai.errors import UserInputError
from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.stages._common import TrainSection, check_data_trainer, data_stage, train_summary

DATA_STAGES = ("distill", "helpful")
#: Small on purpose: see the module docstring; fields given in the section override these.
DEFAULTS = {"max_steps": 10, "learning_rate": 1.0e-5, "lr_scheduler_type": "constant",
            "per_device_train_batch_size": 8, "max_length": 192}


class RehearsalSection(TrainSection):
    data: Literal["auto", "distill", "helpful"] = Field(
        "auto", description="Where the helpful rows come from: distill (its helpful-set rows) or the helpful "
                            "stage; auto: whichever comes first in the pipeline.")


def helpful_rows(ctx: StageContext, stage: str) -> list[dict[str, Any]]:
    from cai.data import read_rows

    rows = read_rows(ctx.input_dir(stage))
    # distill rows carry their prompt set; the helpful stage's rows are all helpful.
    return [r for r in rows if r.get("set") == "helpful"] if stage == "distill" else rows


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.data import DatasetWriter
    from cai.training import train_sft

    stage = data_stage(ctx.cfg, "rehearsal", DATA_STAGES, ctx.cfg.pipeline_of(ctx.k))
    rows = helpful_rows(ctx, stage)
    if not rows:
        raise UserInputError(f"{ctx.input_dir(stage)}: no helpful rows to rehearse on; see its failures")
    start = str(ctx.input_dir(ctx.new_policy_stage)) if ctx.new_policy_stage else ctx.policy
    # The rows it trained on sit in the model directory's hidden .cai/, beside nothing of the user's.
    data = ctx.out / ".cai" / "rows"
    writer = DatasetWriter(data, kind="sft", overwrite=True, fingerprint={"stage": "rehearsal", "from": stage})
    writer.write([{"id": r["id"], "messages": r["messages"],
                   "source_prompt": r.get("source_prompt", r.get("prompt"))} for r in rows])
    writer.finalize({"rows": len(rows)}, title=f"cai round {ctx.k} rehearsal rows")
    s = ctx.section
    res = train_sft(data, start, ctx.out, config={**DEFAULTS, **s.config}, lora=s.lora,
                    average_tail=s.average_tail, resume=not ctx.fresh)
    from cai.provenance import provenance_shares

    return {**train_summary(res.summary), "data": stage, "rows": len(rows), "from": ctx.new_policy_stage or "round policy",
            "provenance": provenance_shares(rows)}


STAGE = register_stage(RoundStage(
    name="rehearsal", run=run, config=RehearsalSection, optional_inputs=DATA_STAGES, reads_new_policy=True,
    restart=True, checkpoints=True, produces_policy=True, uses=("seed",),
    check=check_data_trainer("rehearsal", "sft", DATA_STAGES, "the helpful rows"),
    description="A few low-LR SFT steps of the newest policy on helpful rows alone (trades refusal for helpfulness).",
))
