"""``revisions``: critique-and-revise the round's red-team prompts with the round's policy (SL-CAI)."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.spec import DEFAULT_USES, RoundStage, register_stage
from cai.rounds.stages._common import counts
from cai.stages.revise import ReviseConfig


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.stages.revise import run_revisions

    res = run_revisions(ctx.prompts("red_team"), ctx.out, ctx.res.constitution, ctx.res.backend(ctx.policy),
                        config=ctx.section, templates=ctx.res.templates(), overwrite=ctx.fresh,
                        progress=ctx.res.progress, chunk_size=ctx.cfg.chunk_size)
    return counts(res)


STAGE = register_stage(RoundStage(
    name="revisions", run=run, config=ReviseConfig, reads_policy=True,
    uses=DEFAULT_USES + ("constitution",),
    templates=("initial_response", "critique", "revision"),
    description="Critique and revise red-team responses by the constitution's principles.",
))
