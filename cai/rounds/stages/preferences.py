"""``preferences``: AI preference labels on the SFT model's responses (RL-CAI)."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.spec import DEFAULT_USES, RoundStage, register_stage
from cai.stages.label import LabelConfig


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.rounds.stages._common import counts
    from cai.stages.label import run_preferences

    policy = ctx.res.backend(str(ctx.input_dir("sft")))
    feedback = ctx.res.backend(ctx.feedback_spec)
    res = run_preferences(ctx.prompts("red_team"), ctx.out, ctx.res.constitution, policy, feedback,
                          config=ctx.section, templates=ctx.res.templates(), overwrite=ctx.fresh,
                          progress=ctx.res.progress, chunk_size=ctx.cfg.chunk_size)
    return counts(res)


STAGE = register_stage(RoundStage(
    name="preferences", run=run, config=LabelConfig, inputs=("sft",),
    uses=DEFAULT_USES + ("models.feedback", "constitution"),
    templates=("preference", "preference_cot"),
    description="Soft (A)/(B) labels from the feedback model, both orders.",
))
