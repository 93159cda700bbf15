"""``sft``: supervised fine-tuning of the round's policy (TRL's SFTTrainer) on ``distill`` or ``sft-data`` rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cai.errors import UserInputError
from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage
from cai.rounds.stages._common import TrainSection, check_trainer, train_summary

DATA_STAGES = ("distill", "sft-data")


class SFTSection(TrainSection):
    data: Literal["auto", "distill", "sft-data"] = Field(
        "auto", description="The stage whose rows SFT trains on; auto: distill if the pipeline has it, else sft-data.")


def data_stage(cfg: Any) -> str:
    want = cfg.stages.sft.data
    present = [s for s in DATA_STAGES if s in cfg.pipeline and cfg.pipeline.index(s) < cfg.pipeline.index("sft")]
    if want != "auto":
        return want if want in present else ""
    return present[0] if present else ""


def check(cfg: Any, source: str) -> None:
    check_trainer("sft", "sft")(cfg, source)
    if not data_stage(cfg):
        raise UserInputError(f"{source}: stages.sft trains on the rows of {' or '.join(DATA_STAGES)}; "
                             "put that stage before sft in the pipeline (or fix stages.sft.data)")


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.training import train_sft

    s = ctx.section
    data = ctx.input_dir(data_stage(ctx.cfg))
    res = train_sft(data, ctx.policy, ctx.out, config=s.config, lora=s.lora)
    return {**train_summary(res.summary), "data": data.name}


STAGE = register_stage(RoundStage(
    name="sft", run=run, config=SFTSection, optional_inputs=DATA_STAGES, reads_policy=True, restart=True,
    produces_policy=True, check=check, description="SFT of the policy on the distilled rows or the SFT mix.",
))
