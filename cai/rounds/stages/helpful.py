"""``helpful``: the round's policy answering helpful prompts, so SFT does not learn to refuse everything."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.rounds.context import StageContext
from cai.rounds.spec import DEFAULT_USES, RoundStage, register_stage


class HelpfulConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.backends.base import SamplingParams
    from cai.rounds.stages._common import counts
    from cai.stages.responses import run_responses

    h = ctx.section
    params = SamplingParams(max_new_tokens=h.max_new_tokens, temperature=h.temperature, top_p=h.top_p,
                            seed=ctx.cfg.seed + ctx.k)
    res = run_responses(ctx.prompts("helpful"), ctx.out, ctx.res.backend(ctx.policy), params=params,
                        templates=ctx.res.templates(), constitution=ctx.res.constitution, overwrite=ctx.fresh,
                        progress=ctx.res.progress, chunk_size=ctx.cfg.chunk_size)
    return counts(res)


STAGE = register_stage(RoundStage(
    name="helpful", run=run, config=HelpfulConfig, reads_policy=True,
    uses=DEFAULT_USES + ("constitution",), templates=("initial_response",),
    description="The policy's own answers to helpful prompts, mixed into SFT.",
))
