"""Best-vs-worst pairs from the policy's own samples, ranked by an own-feedback signal (self-rewarding).

For each prompt the policy samples K responses; the feedback model scores each one
alone by a pointwise signal (`cai.evaluation.labeller.candidate_scores`: its Yes/No
verdict, its log-likelihood, the implicit reward log π/π_ref against round 0, or
``consensus``: how alike a sample is to the model's other samples, self-consistency; or
``vote``: how many of the other samples took the same decision, a decision read from the
implicit reward of the first words), and
the best and worst become a preference row. Both sides are model-written and the label
is model-made, so from round 2 on (``models.feedback: policy``) nothing in these rows
comes from hand-written text.

Rows are TRL explicit-prompt conversational preference rows plus ``p_chosen`` (the
logistic of the score gap), ``label_source: scored``, ``signal``, every candidate and
its score, and ``feedback_model``. A prompt whose K samples are all the same text, or
whose best and worst differ by less than ``min_margin``, is a recorded failure.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.base import Backend, SamplingParams, provenance
from cai.constitution import Constitution
from cai.data import PromptRecord, stable_hash
from cai.stages.distill import SET_KEY, tag_records
from cai.stages.responses import TEMPLATE as POLICY_TEMPLATE
from cai.stages.responses import record_messages, sample_k
from cai.stages.runner import ChunkResult, DatasetJob, DatasetRunOptions, run_dataset, stage_fingerprint
from cai.templates import PromptTemplates

if TYPE_CHECKING:
    from typing_extensions import Unpack

KIND = "preference"
LABEL_SOURCE = "scored"
#: Failure reasons that mean "nothing to rank here", not that something broke.
NO_PAIR_REASONS = ("samples_alike", "unanimous", "low_margin", "split_vote")


class ScoredPairsConfig(BaseModel):
    """Settings of the ``scored-pairs`` stage."""

    model_config = ConfigDict(extra="forbid")

    signal: Literal["loglik", "loglik_mean", "opening", "pmi", "implicit", "implicit_opening", "pmi_implicit",
                    "self_verdict", "consensus", "vote"] = Field(
        "self_verdict", description="Pointwise own-feedback signal that ranks the samples (cai/evaluation/labeller.py).")
    k_responses: int = Field(4, ge=2, description="Responses sampled per prompt; the best and worst become a pair.")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.8, gt=0, description="Sampling temperature (>0, so the samples differ).")
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = 0
    min_margin: float = Field(0.0, ge=0, description="Drop pairs whose best and worst scores differ by less.")
    sets: list[Literal["red_team", "helpful"]] = Field(
        default_factory=lambda: ["red_team", "helpful"], description="Which training prompt sets to sample on.")
    prompts_per_set: int | None = Field(None, ge=1, description=(
        "At most this many prompts of each set per round, a new slice each round (null: all)."))
    min_vote: float = Field(0.0, ge=0, le=1, description=(
        "vote: pair only where at least this share of the other samples took the chosen sample's decision "
        "(6/7 = 0.85 keeps 7-to-1 splits only; a close split is the model unsure, and its majority is more "
        "often wrong)."))
    use_system_prompt: bool = Field(True, description=(
        "Sample with the constitution's system prompt. The rows' prompt is the user's words alone, so false "
        "keeps the samples on-policy for what DPO trains and the eval asks."))

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_p, self.seed)


def row_id(record: PromptRecord) -> str:
    return stable_hash(LABEL_SOURCE, record.id)


def score_pairs(
    records: Sequence[PromptRecord],
    constitution: Constitution,
    policy: Backend,
    feedback: Backend,
    *,
    config: ScoredPairsConfig,
    templates: PromptTemplates,
    reference: Backend | None = None,
) -> ChunkResult:
    """One chunk: one generate call (K per record), one scoring pass, one row (or failure) per record."""
    from cai.evaluation.labeller import candidate_scores, decision_split

    out = ChunkResult()
    k = config.k_responses
    candidates = sample_k(records, policy, templates, constitution if config.use_system_prompt else None, k,
                          config.sampling, out)
    usable = [n for n, texts in enumerate(candidates) if len({t.strip() for t in texts if t.strip()}) >= 2]
    # Sample-reading signals with the policy as its own feedback model: the K candidates are the votes.
    own = config.signal in ("consensus", "vote") and feedback is policy
    scores = candidate_scores(config.signal, feedback, [(record_messages(records[n]), candidates[n]) for n in usable],
                              reference=reference, samples=[candidates[n] for n in usable] if own else None,
                              leave_one_out=own)
    scored = dict(zip(usable, scores))
    for n, rec in enumerate(records):
        rid = row_id(rec)
        texts = candidates[n]
        if n not in scored:
            out.failures.append({"id": rid, "source_id": rec.id, "reason": "samples_alike", "raw": texts})
            out.tallies["samples_alike"] = out.tallies.get("samples_alike", 0) + 1
            continue
        s = scored[n]
        # Empty samples never win and are the first to lose.
        ranked = sorted(range(k), key=lambda i: (bool(texts[i].strip()), s[i]))
        worst, best = ranked[0], ranked[-1]
        gap = s[best] - s[worst]
        if config.signal == "vote" and not decision_split(s):
            # Every sample took the same decision: nothing to vote on (the tie-break alone is no label).
            out.failures.append({"id": rid, "source_id": rec.id, "reason": "unanimous", "raw": texts, "scores": s})
            out.tallies["unanimous"] = out.tallies.get("unanimous", 0) + 1
            continue
        if config.signal == "vote" and s[best] < config.min_vote:
            out.failures.append({"id": rid, "source_id": rec.id, "reason": "split_vote", "raw": texts, "scores": s})
            out.tallies["split_vote"] = out.tallies.get("split_vote", 0) + 1
            continue
        if gap < config.min_margin or texts[best].strip() == texts[worst].strip():
            out.failures.append({"id": rid, "source_id": rec.id, "reason": "low_margin", "raw": texts, "scores": s})
            out.tallies["low_margin"] = out.tallies.get("low_margin", 0) + 1
            continue
        out.rows.append({
            "id": rid,
            "source_id": rec.id,
            "prompt": record_messages(rec),
            "chosen": [{"role": "assistant", "content": texts[best]}],
            "rejected": [{"role": "assistant", "content": texts[worst]}],
            "p_chosen": 1.0 / (1.0 + math.exp(-min(gap, 60.0))),
            "label_source": LABEL_SOURCE,
            "signal": config.signal,
            "feedback_model": feedback.model_id,
            "candidates": texts,
            "scores": s,
            "chosen_index": best,
            SET_KEY: rec.extra.get(SET_KEY),
        })
        out.tallies["pairs"] = out.tallies.get("pairs", 0) + 1
    return out


def run_scored_pairs(
    red_team: Sequence[PromptRecord],
    helpful: Sequence[PromptRecord],
    out_dir: Any,
    constitution: Constitution,
    policy: Backend,
    feedback: Backend,
    *,
    config: ScoredPairsConfig,
    templates: PromptTemplates | None = None,
    reference: Backend | None = None,
    **run: Unpack[DatasetRunOptions],
) -> dict[str, Any]:
    """Scored pairs for the chosen prompt sets into a resumable preference dataset directory."""
    templates = templates or PromptTemplates(constitution=constitution)
    sets = {"red_team": red_team, "helpful": helpful}
    records = [r for name in config.sets for r in tag_records(sets[name], name)]
    job = DatasetJob(
        kind=KIND,
        fingerprint=stage_fingerprint("scored-pairs", policy, templates, [POLICY_TEMPLATE],
                                      config=config.model_dump(mode="json"), feedback=feedback.model_id,
                                      reference=reference.model_id if reference is not None else None),
        provenance={"policy_backend": provenance(policy), "feedback_backend": provenance(feedback),
                    "label_source": LABEL_SOURCE, "signal": config.signal},
        process=lambda chunk: score_pairs(chunk, constitution, policy, feedback, config=config,
                                          templates=templates, reference=reference),
        done=lambda w, r: w.is_done(row_id(r)),
        desc="scored-pairs", title="cai scored pairs (own-feedback preference labels)",
    )
    return run_dataset(records, out_dir, job, **run)


__all__ = ["ScoredPairsConfig", "score_pairs", "run_scored_pairs", "LABEL_SOURCE", "NO_PAIR_REASONS"]
