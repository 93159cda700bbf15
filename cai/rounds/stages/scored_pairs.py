"""``scored-pairs``: the policy's own samples, best vs worst by the feedback model's own pointwise signal."""

from __future__ import annotations

from typing import Any

from cai.rounds.context import StageContext
from cai.rounds.spec import DEFAULT_USES, RoundStage, register_stage
from cai.stages.scored_pairs import ScoredPairsConfig


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.evaluation.labeller import NEEDS_REFERENCE, measure_signal
    from cai.rounds.stages._common import counts
    from cai.stages.scored_pairs import run_scored_pairs

    s = ctx.section
    policy = ctx.res.backend(ctx.policy)
    feedback = ctx.res.backend(ctx.feedback_spec)
    reference = ctx.res.backend(ctx.cfg.models.policy) if s.signal in NEEDS_REFERENCE else None
    check = None
    if ctx.cfg.prompts.labelled_pairs:
        # The signal as configured, on pairs whose answer is known: label_source: auto reads this.
        from cai.labelled_pairs import load_labelled_pairs

        check = measure_signal(s.signal, feedback, load_labelled_pairs(ctx.cfg.prompts.labelled_pairs),
                               reference=reference)
    res = run_scored_pairs(_slice(ctx, "red_team"), _slice(ctx, "helpful"), ctx.out, ctx.res.constitution, policy,
                           feedback, config=s, templates=ctx.res.templates(), reference=reference,
                           overwrite=ctx.fresh, progress=ctx.res.progress, chunk_size=ctx.cfg.chunk_size)
    return {**counts(res), "no_pair": _no_pair(ctx.out), "feedback_model": ctx.feedback_spec, "signal": s.signal,
            **({"labeller_check": check} if check else {})}


def _no_pair(out: Any) -> int:
    """Recorded failures that are no fault: prompts whose samples gave nothing to rank (all alike, all of one
    decision, or too close). The report does not count them as failed rows."""
    from cai.data import FAILURES_FILE, read_jsonl
    from cai.stages.scored_pairs import NO_PAIR_REASONS

    path = out / FAILURES_FILE
    return sum(1 for f in read_jsonl(path) if f.get("reason") in NO_PAIR_REASONS) if path.exists() else 0


def _slice(ctx: StageContext, which: str) -> list[Any]:
    """The round's prompts of one set, cut to ``prompts_per_set``: round k takes the k-th slice (wrapping)."""
    recs = ctx.prompts(which)
    n = ctx.section.prompts_per_set
    if not n or n >= len(recs):
        return recs
    start = ((ctx.k - 1) * n) % len(recs)
    return (recs + recs)[start : start + n]


STAGE = register_stage(RoundStage(
    name="scored-pairs", run=run, config=ScoredPairsConfig, reads_policy=True,
    uses=DEFAULT_USES + ("models.feedback", "constitution", "prompts.labelled_pairs"), templates=("initial_response",),
    description="The policy's own samples, best vs worst by an own-feedback signal (self-rewarding pairs).",
))
