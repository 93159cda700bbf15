"""``sft-data``: the SFT mix of the round's revisions and helpful responses."""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.data import DatasetWriter, read_rows
from cai.errors import UserInputError
from cai.rounds.context import StageContext
from cai.rounds.spec import RoundStage, register_stage


class SFTDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    helpful_fraction: float = Field(0.5, ge=0, lt=1, description="Share of SFT rows that are helpful responses.")


def run(ctx: StageContext) -> dict[str, Any]:
    revisions = read_rows(ctx.input_dir("revisions"))
    helpful = read_rows(ctx.input_dir("helpful"))
    frac = ctx.section.helpful_fraction
    want = round(len(revisions) * frac / (1 - frac)) if frac > 0 else 0
    rng = random.Random(ctx.cfg.seed + ctx.k)
    chosen = rng.sample(helpful, min(want, len(helpful)))
    rows = [{**r, "source": "revision"} for r in revisions] + [
        {"id": r["id"], "messages": r["messages"], "source_prompt": r.get("source_prompt", r.get("prompt")),
         "source": "helpful"} for r in chosen]
    if not rows:
        raise UserInputError(
            f"{ctx.input_dir('revisions')}: no usable revisions or helpful responses to train on; "
            "see failures.jsonl there (raise max_new_tokens or stages.revisions.retries)")
    rng.shuffle(rows)
    writer = DatasetWriter(ctx.out, kind="sft", overwrite=True,
                           fingerprint={"stage": "sft-data", "helpful_fraction": frac, "round": ctx.k})
    writer.write(rows)
    return writer.finalize({"revision_rows": len(revisions), "helpful_rows": len(chosen),
                            "helpful_fraction_actual": round(len(chosen) / len(rows), 3)},
                           title=f"cai round {ctx.k} SFT mix")["summary"]


STAGE = register_stage(RoundStage(
    name="sft-data", run=run, config=SFTDataConfig, inputs=("revisions", "helpful"), restart=True,
    uses=("seed",), description="Mix revisions and helpful responses into SFT rows.",
))
