"""Where a round's preference signal comes from, chosen by measurement (recorded in the summary).

``auto``: the judge's labels when the round's labeller is informative, else
contrastive pairs, else revision ≻ initial pairs. Informative means, with a labelled
pair set (``prompts.labelled_pairs``): agreement at or above ``min_agreement`` in
*every* direction (refusal, answer, quality) and position consistency at or above
``min_position_consistency``; a labeller that just prefers refusals passes one
direction and fails another. Without a pair set only the position consistency on its
own pairs is known, and that alone decides. A labeller at chance gives noise, and a
reward model or DPO trained on noise does not make the policy better.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.errors import UserInputError
from cai.rounds.context import StageContext

#: The stages that hold each source's preference rows (and where, inside their output).
SOURCES = {"judge": ("preferences", ""), "scored": ("scored-pairs", ""), "contrastive": ("contrastive", ""),
           "revision": ("revisions", ".cai/preference")}  # revision_pairs.PREFERENCE_DIR
#: Sources labelled by a model: used by ``auto`` only where its pair-set figures pass.
MODEL_LABELLED = ("judge", "scored")


class LabelSourceChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label_source: Literal["auto", "judge", "scored", "contrastive", "revision"] = Field(
        "auto", description="Which preference rows to train on; auto chooses by the labeller's agreement with "
                            "the labelled pair set in every direction, and its position consistency.")
    min_agreement: float = Field(
        0.75, ge=0, le=1, description="auto: the judge's labels are used only if it agrees with the labelled "
                                      "pair set at least this often in every direction.")
    min_position_consistency: float = Field(
        0.6, ge=0, le=1, description="auto: the judge's labels are used only at or above this consistency.")


def labeller_consistency(ctx: StageContext) -> float | None:
    from cai.data import meta_path, read_meta

    if meta_path(ctx.input_dir("preferences")) is None:
        return None
    stats = read_meta(ctx.input_dir("preferences")).get("summary", {}).get("labeller", {})
    value = stats.get("position_consistency_rate")
    return float(value) if isinstance(value, (int, float)) else None


def labeller_check(ctx: StageContext, source: str = "judge") -> dict[str, Any] | None:
    """A model-labelled source's measurement of its labeller on the labelled pair set, if its stage made one."""
    check = ctx.res.stage_summary(f"round-{ctx.k}/{SOURCES[source][0]}").get("labeller_check")
    return check if isinstance(check, dict) and check.get("directions") else None


def _judge_verdict(check: dict[str, Any], section: LabelSourceChoice) -> tuple[bool, str]:
    """Whether pair-set figures make the labeller informative, and the sentence that says why."""
    rates = {d: v["rate"] for d, v in check["directions"].items()}
    # A signal that never labels a direction's kind of pair (vote: no two answers) is held to the others.
    labelled = [d for d in check.get("labelled_directions") or rates if d in rates] or list(rates)
    weakest = min(rates[d] for d in labelled)
    pc = check.get("position_consistency")
    ok = weakest >= section.min_agreement and (pc is None or pc >= section.min_position_consistency)
    figures = ", ".join(f"{d} {r:.2f}" for d, r in rates.items())
    why = (f"labeller agreement with the labelled pairs {figures}: weakest {weakest:.2f} "
           f"{'>=' if weakest >= section.min_agreement else '<'} {section.min_agreement}")
    unlabelled = [d for d in rates if d not in labelled]
    if unlabelled:
        why += (f" ({', '.join(unlabelled)} measured, not counted: {check.get('signal') or 'this signal'} "
                "makes no such pairs)")
    if pc is not None:
        why += (f"; position consistency {pc:.2f} "
                f"{'>=' if pc >= section.min_position_consistency else '<'} {section.min_position_consistency}")
    return ok, why


@dataclass(frozen=True)
class LabelChoice:
    """The preference rows a stage trains on, why, and whether their labeller passed its check."""

    source: str
    data: Path
    why: str
    #: False when model labels were taken only because no other source was in the pipeline.
    trusted: bool = True


def choose(ctx: StageContext, section: LabelSourceChoice) -> tuple[str, Path, str]:
    """(source, dataset dir, why) for this round (`decide` has the whole choice)."""
    c = decide(ctx, section)
    return c.source, c.data, c.why


def decide(ctx: StageContext, section: LabelSourceChoice) -> LabelChoice:
    """This round's label source, by the rules in the module docstring."""
    present = {name: ctx.has_input(stage) for name, (stage, _) in SOURCES.items()}
    checks = {s: labeller_check(ctx, s) for s in MODEL_LABELLED if present[s]}
    if section.label_source == "auto" and any(checks.values()):
        # Each model-labelled source in turn: the first whose labeller passes on every direction.
        reasons = []
        for source, check in checks.items():
            if check is None:
                continue
            informative, reason = _judge_verdict(check, section)
            if informative:
                return _located(ctx, source, f"{source}: {reason}")
            reasons.append(f"{source}: {reason}")
        fallback = next((s for s in ("contrastive", "revision") if present[s]), None)
        if fallback is None:
            source = next(s for s, c in checks.items() if c)
            return _located(ctx, source, "; ".join(reasons) + f"; no other source in the pipeline, so the {source} "
                                         "labels are used anyway", trusted=False)
        return _located(ctx, fallback, "; ".join(reasons) + ": model labels not trusted")
    consistency = labeller_consistency(ctx) if present["judge"] else None
    if section.label_source != "auto":
        source = section.label_source
        if not present[source]:
            raise UserInputError(f"stages.{ctx.stage}: label_source {source} needs the "
                                 f"{SOURCES[source][0]} stage in the pipeline; add it or use auto")
        why = "set in the config"
    elif present["judge"] and consistency is not None and consistency >= section.min_position_consistency:
        # Without a pair set: position consistency on its own pairs is all that is known.
        source, why = "judge", f"labeller position consistency {consistency:.2f} >= {section.min_position_consistency}"
    else:
        fallback = next((s for s in ("contrastive", "revision") if present[s]), None)
        if fallback is None:
            fallback = next((s for s in MODEL_LABELLED if present[s]), None)
            if fallback is None:
                raise UserInputError(f"stages.{ctx.stage}: no preference rows in the pipeline; add preferences, "
                                     "scored-pairs, contrastive or revisions before it")
        source = fallback
        why = ("no preferences stage" if consistency is None and not present["judge"] else
               f"labeller position consistency {consistency if consistency is not None else float('nan'):.2f} "
               f"< {section.min_position_consistency}: its labels are near chance")
        if source in MODEL_LABELLED:
            why += f"; no other source in the pipeline, so the {source} labels are used anyway"
            return _located(ctx, source, why, trusted=False)
    if source == "judge" and section.label_source == "auto":
        why += " (no labelled pair set: set prompts.labelled_pairs to measure agreement per direction)"
    return _located(ctx, source, why)


def _located(ctx: StageContext, source: str, why: str, trusted: bool = True) -> LabelChoice:
    stage, _ = SOURCES[source]
    if source == "revision":
        from cai.stages.revision_pairs import preference_view

        return LabelChoice(source, preference_view(ctx.input_dir(stage)), why, trusted)
    return LabelChoice(source, ctx.input_dir(stage), why, trusted)


def provenance(data_dir: Path) -> dict[str, Any]:
    """Text and label source shares of the preference rows a stage trains on (`cai.provenance`)."""
    from cai.data import read_rows
    from cai.provenance import provenance_shares

    return provenance_shares(read_rows(data_dir))


def describe(source: str, data_dir: Path, why: str) -> dict[str, Any]:
    return {"label_source": source, "label_source_why": why, "data": str(data_dir)}


#: The stages a label-source choice may read (declared as optional inputs).
OPTIONAL_INPUTS = tuple(stage for stage, _ in SOURCES.values())

__all__ = ["LabelSourceChoice", "LabelChoice", "choose", "decide", "describe", "provenance", "labeller_check", "labeller_consistency", "OPTIONAL_INPUTS"]
