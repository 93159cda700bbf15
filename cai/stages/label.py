"""RL-CAI preference labels: sample K responses per prompt, pair them, label each pair with the judge.

Rows are TRL explicit-prompt conversational preference rows (``prompt``, ``chosen``,
``rejected``) plus the soft label and everything the judge saw:

* ``p_chosen`` — P(chosen better than rejected), >= 0.5 by construction;
* ``p_first_order`` / ``p_second_order`` — the same probability from the order
  that showed the chosen response first / second (None with one order);
* ``principle_ids``, ``per_principle``, ``rationales`` (CoT), ``position_consistent``,
  ``truncated`` and ``notes`` (overflow handling), ``source_id``, ``pair``.

Pairs that are not labelled or are filtered out (empty or identical responses, an
overflow with ``on_overflow="skip"``, confidence below ``min_confidence``, or
position-inconsistent with ``require_consistent``) go to ``failures.jsonl`` with a
``reason``; filtered pairs keep their full labelled row under ``row``, so a
different threshold can be applied later without relabelling. The dataset card
reports the labeller statistics over every labelled pair, kept or not.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.backends.base import Backend, SamplingParams, provenance
from cai.constitution import Constitution
from cai.data import PromptRecord, read_jsonl, read_rows, stable_hash
from cai.judge import ConstitutionJudge, Judgement
from cai.stages.responses import TEMPLATE as POLICY_TEMPLATE
from cai.stages.responses import record_messages, sample_k
from cai.stages.runner import ChunkResult, DatasetJob, DatasetRunOptions, run_dataset
from cai.templates import PromptTemplates

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+

KIND = "preference"


class LabelConfig(BaseModel):
    """Settings of the preference labeller (the ``label`` section of a run config)."""

    model_config = ConfigDict(extra="forbid")

    k_responses: int = Field(2, ge=2, description="Responses sampled per prompt; every pair of them is labelled.")
    max_new_tokens: int = Field(128, ge=1, description="Response length limit (policy sampling).")
    temperature: float = Field(0.7, ge=0, description="Policy sampling temperature; >0 so responses differ.")
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = Field(0, description="Seeds policy sampling and the principle draw per pair.")
    principles: int | Literal["all"] = Field(1, description="Principles per pair (averaged), or 'all'.")
    both_orders: bool = Field(True, description="Score each pair in both orders and average (removes slot bias).")
    cot: bool = Field(False, description="Generate a rationale before scoring; clamp p into cot_band.")
    cot_band: tuple[float, float] = Field((0.4, 0.6), description="Clamp band for CoT probabilities.")
    cot_max_new_tokens: int = Field(128, ge=1, description="Rationale length limit in CoT mode.")
    min_confidence: float = Field(0.0, ge=0, le=0.5, description="Drop pairs with |p - 0.5| below this.")
    require_consistent: bool = Field(False, description="Drop pairs whose two orders disagree.")
    on_overflow: Literal["truncate", "skip"] = Field(
        "truncate", description="A pair too long for the feedback model: cut the responses (noted) or skip it."
    )

    @field_validator("principles", mode="before")
    @classmethod
    def _principles(cls, v: Any) -> Any:
        # "3" from a CLI flag or YAML string means 3.
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        if isinstance(v, int) and v < 1:
            raise ValueError("principles per pair must be at least 1, or 'all'")
        return v

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_p, self.seed)

    @property
    def cot_sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.cot_max_new_tokens, temperature=0.0, seed=self.seed)

    def pairs(self) -> list[tuple[int, int]]:
        return list(itertools.combinations(range(self.k_responses), 2))


def make_judge(
    constitution: Constitution,
    feedback_backend: Backend,
    config: LabelConfig,
    templates: PromptTemplates | None = None,
) -> ConstitutionJudge:
    return ConstitutionJudge(
        constitution, feedback_backend, templates=templates, principles=config.principles,
        both_orders=config.both_orders, cot=config.cot, cot_band=config.cot_band, seed=config.seed,
        cot_params=config.cot_sampling, on_overflow=config.on_overflow,
    )


def pair_id(record_id: str, i: int, j: int) -> str:
    return stable_hash("preference", record_id, i, j)


def label_preferences(
    records: Sequence[PromptRecord],
    constitution: Constitution,
    policy_backend: Backend,
    feedback_backend: Backend,
    *,
    templates: PromptTemplates | None = None,
    config: LabelConfig,
    judge: ConstitutionJudge | None = None,
) -> ChunkResult:
    """Label one chunk: one generate call (K responses per record), one judge call (all pairs)."""
    templates = templates or PromptTemplates(constitution=constitution)
    judge = judge or make_judge(constitution, feedback_backend, config, templates)
    judge.check_options()  # before any generation: a bad option set fails fast
    out = ChunkResult()
    if not records:
        return out
    k = config.k_responses
    samples = sample_k(records, policy_backend, templates, constitution, k, config.sampling, out)

    todo: list[tuple[PromptRecord, int, int, str, str]] = []
    for n, rec in enumerate(records):
        texts = samples[n]
        for i, j in config.pairs():
            pid = pair_id(rec.id, i, j)
            a, b = texts[i], texts[j]
            reason = "empty_response" if not a.strip() or not b.strip() else (
                "identical_responses" if a.strip() == b.strip() else None)
            if reason:
                out.failures.append({"id": pid, "source_id": rec.id, "reason": reason,
                                     "raw": [a, b], "prompt": rec.text})
                _tally(out, reason)
                continue
            todo.append((rec, i, j, a, b))

    verdicts = judge.compare([record_messages(r) for r, *_ in todo], [t[3] for t in todo], [t[4] for t in todo])
    for (rec, i, j, a, b), v in zip(todo, verdicts):
        pid = pair_id(rec.id, i, j)
        if v.skipped:
            reason = v.failure or "overflow"
            out.failures.append({"id": pid, "source_id": rec.id, "reason": reason,
                                 "raw": [a, b], "prompt": rec.text, "notes": v.notes})
            _tally(out, reason)
            continue
        row = _row(rec, pid, (i, j), a, b, v)
        _tally(out, "labelled")
        reason = None
        if config.require_consistent and v.position_consistent is False:
            reason = "position_inconsistent"
        elif abs(v.p_a - 0.5) < config.min_confidence:
            reason = "low_confidence"
        if reason:
            out.failures.append({"id": pid, "source_id": rec.id, "reason": reason,
                                 "raw": [a, b], "row": row})
            _tally(out, reason)
        else:
            out.rows.append(row)
    return out


def _tally(out: ChunkResult, key: str) -> None:
    out.tallies[key] = out.tallies.get(key, 0) + 1


def _row(rec: PromptRecord, pid: str, pair: tuple[int, int], a: str, b: str, v: Judgement) -> dict[str, Any]:
    """A TRL preference row; ties (p = 0.5) keep the first-sampled response as chosen."""
    a_wins = v.p_a >= 0.5
    flip = (lambda p: p) if a_wins else (lambda p: None if p is None else 1.0 - p)
    chosen, rejected = (a, b) if a_wins else (b, a)
    # p_first_order: P(chosen better) in the order that showed the chosen response first.
    first, second = (v.p_a_first, v.p_a_second) if a_wins else (flip(v.p_a_second), flip(v.p_a_first))
    row: dict[str, Any] = {
        "id": pid,
        "source_id": rec.id,
        "prompt": record_messages(rec),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": v.p_a if a_wins else 1.0 - v.p_a,
        "p_first_order": first,
        "p_second_order": second,
        "position_consistent": v.position_consistent,
        "label_source": "judge",
        "principle_ids": v.principle_ids,
        "per_principle": {k: (p if a_wins else 1.0 - p) for k, p in v.per_principle.items()},
        "rationales": v.rationales,
        "pair": list(pair),
        "chosen_index": pair[0] if a_wins else pair[1],
        "truncated": v.truncated,
        "notes": v.notes,
    }
    if rec.extra:
        row["extra"] = rec.extra
    return row


# --- statistics for the dataset card ---------------------------------------------------


def labeller_statistics(rows: Sequence[dict[str, Any]], failures: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Position consistency, confidence, label histogram and slot bias over every labelled pair.

    Filtered-out pairs (failures holding a ``row``) count too: the statistics describe
    the labeller, not the threshold.
    """
    labelled = list(rows) + [f["row"] for f in failures if isinstance(f.get("row"), dict)]
    dropped: dict[str, int] = {}
    for f in failures:
        dropped[f.get("reason", "unknown")] = dropped.get(f.get("reason", "unknown"), 0) + 1
    stats: dict[str, Any] = {"pairs_labelled": len(labelled), "pairs_kept": len(rows),
                             "pairs_dropped": dict(sorted(dropped.items()))}
    if not labelled:
        return stats
    consistent = [r["position_consistent"] for r in labelled if r.get("position_consistent") is not None]
    conf = [abs(r["p_chosen"] - 0.5) for r in labelled]
    # Label distribution: P(first-sampled response better), so it spans [0, 1].
    p_first_sampled = [r["p_chosen"] if r["chosen_index"] == r["pair"][0] else 1 - r["p_chosen"] for r in labelled]
    bins = [0] * 10
    for p in p_first_sampled:
        bins[min(int(p * 10 + 1e-9), 9)] += 1  # 1 - 0.9 is 0.0999...: keep it in its bin
    # Slot A won an order when P(chosen) > 0.5 with chosen in A, or < 0.5 with chosen in B.
    slot_a = [r["p_first_order"] > 0.5 for r in labelled]
    slot_a += [r["p_second_order"] < 0.5 for r in labelled if r.get("p_second_order") is not None]
    stats.update({
        "position_consistency_rate": round(sum(consistent) / len(consistent), 4) if consistent else None,
        "mean_confidence": round(sum(conf) / len(conf), 4),
        "label_histogram": {f"{b / 10:.1f}-{(b + 1) / 10:.1f}": n for b, n in enumerate(bins)},
        "first_slot_preference_rate": round(sum(slot_a) / len(slot_a), 4),
        "mean_p_chosen": round(sum(r["p_chosen"] for r in labelled) / len(labelled), 4),
        "truncated_pairs": sum(1 for r in labelled if r.get("truncated")),
    })
    return stats


# --- the resumable run ------------------------------------------------------------------


def fingerprint(
    judge: ConstitutionJudge, policy_backend: Backend, templates: PromptTemplates, config: LabelConfig
) -> dict[str, Any]:
    return {
        "stage": "preferences",
        "policy": policy_backend.model_id,
        "policy_template": templates.digests([POLICY_TEMPLATE]),
        "label_config": config.model_dump(mode="json"),
        "judge": judge.provenance(),
        "constitution": judge.constitution.provenance(),
    }


def run_preferences(
    records: Sequence[PromptRecord],
    out_dir: str | Path,
    constitution: Constitution,
    policy_backend: Backend,
    feedback_backend: Backend | None = None,
    *,
    config: LabelConfig,
    templates: PromptTemplates | None = None,
    **run: Unpack[DatasetRunOptions],
) -> dict[str, Any]:
    """Label a prompt set into a resumable preference dataset directory; returns counts and summary.

    The feedback model defaults to the policy. Rerunning with the same settings resumes.
    """
    feedback_backend = feedback_backend or policy_backend
    templates = templates or PromptTemplates(constitution=constitution)
    judge = make_judge(constitution, feedback_backend, config, templates)
    judge.check_options()
    pairs = config.pairs()
    job = DatasetJob(
        kind=KIND, fingerprint=fingerprint(judge, policy_backend, templates, config),
        provenance={"policy_backend": provenance(policy_backend),
                    "feedback_backend": provenance(feedback_backend)},
        process=lambda chunk: label_preferences(chunk, constitution, policy_backend, feedback_backend,
                                                templates=templates, config=config, judge=judge),
        # A record is done when every one of its pairs is written (as a row or a failure).
        done=lambda w, r: all(w.is_done(pair_id(r.id, i, j)) for i, j in pairs),
        summarize=lambda w: {"labeller": labeller_statistics(read_rows(w.dir), list(read_jsonl(w.fail_path))),
                             "feedback_model": feedback_backend.model_id},
        desc="preferences", title="cai AI preference labels (RL-CAI)", chunk_size=32,
    )
    return run_dataset(records, out_dir, job, **run)


__all__ = ["LabelConfig", "label_preferences", "run_preferences", "labeller_statistics", "make_judge", "pair_id"]
