"""``preferences``: AI preference labels on the SFT model's responses (RL-CAI)."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.spec import DEFAULT_USES, RoundStage, register_stage
from cai.stages.label import LabelConfig


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.rounds.stages._common import counts
    from cai.stages.label import make_judge, run_preferences

    policy = ctx.res.backend(str(ctx.input_dir("sft")))
    feedback = ctx.res.backend(ctx.feedback_spec)
    check = None
    if ctx.cfg.prompts.labelled_pairs:
        # The labeller as configured, on pairs whose answer is known: label_source: auto reads this.
        from cai.evaluation.labeller import measure_signal
        from cai.labelled_pairs import load_labelled_pairs

        judge = make_judge(ctx.res.constitution, feedback, ctx.section, ctx.res.templates())
        check = measure_signal("judge", feedback, load_labelled_pairs(ctx.cfg.prompts.labelled_pairs),
                               make_judge=lambda backend, principles: judge)
    res = run_preferences(ctx.prompts("red_team"), ctx.out, ctx.res.constitution, policy, feedback,
                          config=ctx.section, templates=ctx.res.templates(), overwrite=ctx.fresh,
                          progress=ctx.res.progress, chunk_size=ctx.cfg.chunk_size)
    return {**counts(res), "feedback_model": ctx.feedback_spec, **({"labeller_check": check} if check else {})}


STAGE = register_stage(RoundStage(
    name="preferences", run=run, config=LabelConfig, inputs=("sft",),
    uses=DEFAULT_USES + ("models.feedback", "constitution", "prompts.labelled_pairs"),
    templates=("preference", "preference_cot"),
    description="Soft (A)/(B) labels from the feedback model, both orders.",
))
