"""Evaluate several models at once: one batched generate call per model, one batched judge call in all.

What is measured (each only when its inputs are given):

* **win rate** of every model against ``baseline`` on the win-rate prompts, judged
  by the constitution judge in both orders (see ``metrics`` for ties and the CI);
* **harmlessness** on red-team prompts: the refusal detector's refusal rate, and
  the judge's view — each response is compared with a canned refusal
  (``EvalConfig.canned_refusal``) under the constitution's principles. The
  judge's *harmful rate* is the share of responses it consistently ranks below
  simply refusing (both orders agree); ``vs_refusal`` is the full win rate
  against the refusal (0.5 = as harmless as refusing; above 0.5 = better, e.g.
  a helpful, harmless answer). This is the judge's counterpart of the
  detector's compliance rate, without trusting surface phrases;
* **over-refusal** on benign prompts: the detector's refusal rate there;
* **mean reward** of each model's responses under a reward model, and the reward
  model's accuracy on held-out preference rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.backends.base import Backend, SamplingParams
from cai.constitution import Constitution
from cai.data import PromptRecord, load_prompts
from cai.errors import DataError, UserInputError
from cai.evaluation.metrics import RefusalRate, WinRate, refusal_rate, win_rate
from cai.progress import echo_line, progress_enabled
from cai.refusal import RefusalDetector

log = logging.getLogger(__name__)

PromptsLike = str | Path | Sequence[PromptRecord] | Sequence[str]
SETS = ("win_rate", "red_team", "benign")


class EvalConfig(BaseModel):
    """Settings of an evaluation; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    #: Response sampling; greedy by default so a rerun gives the same numbers.
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    #: Generate with the constitution's system prompt (as `cai generate responses -c` does).
    use_system_prompt: bool = False
    #: Judge: principles per pair (a number, "all", or a list of principle ids), both orders, CoT.
    principles: int | Literal["all"] | list[str] = 1
    both_orders: bool = True
    cot: bool = False
    on_overflow: Literal["truncate", "skip"] = "truncate"
    #: What a response to a red-team prompt is compared with for the judge's harmlessness rate.
    canned_refusal: str = "I'm sorry, but I can't help with that."
    judge_harmlessness: bool = True
    #: Judge every model against the baseline (needs a judge). Off where the judge is at chance:
    #: the 135M default's verdicts flip with the answer order, so its win rates are all ties.
    win_rates: bool = True
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    reward_batch_size: int = Field(8, ge=1)
    #: Keep every prompt, response and verdict in the metrics (``samples``).
    keep_samples: bool = True
    #: Feedback signals measured on the labelled pair set (``prompts.labelled_pairs``) for round 0's
    #: model and the round's new one (the next round's feedback model with ``feedback: policy``).
    labeller_signals: list[str] = Field(default_factory=lambda: ["judge"])

    @field_validator("labeller_signals")
    @classmethod
    def _known_signals(cls, v: list[str]) -> list[str]:
        from cai.evaluation.labeller import SIGNAL_NAMES

        unknown = [s for s in v if s not in SIGNAL_NAMES]
        if unknown:
            raise ValueError(f"unknown signal {unknown[0]!r}; known: {', '.join(SIGNAL_NAMES)}")
        return v

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, seed=self.seed)


def as_records(prompts: PromptsLike | None, what: str) -> list[PromptRecord]:
    """A prompt-set path, PromptRecords or plain strings as PromptRecords; an empty set is an error."""
    if prompts is None:
        return []
    if isinstance(prompts, (str, Path)):
        records = load_prompts(prompts)
    else:
        records = [p if isinstance(p, PromptRecord) else PromptRecord(messages=[{"role": "user", "content": str(p)}])
                   for p in prompts]
    if not records:
        raise DataError(f"{what}: no prompts; give a non-empty prompt set")
    return records


def generate_for_sets(
    backend: Backend,
    sets: Mapping[str, Sequence[PromptRecord]],
    params: SamplingParams,
    *,
    constitution: Constitution | None = None,
    templates: Any = None,
) -> dict[str, str]:
    """Responses (record id -> text) to every distinct prompt of all sets, in ONE batched generate call."""
    from cai.stages.responses import policy_conversation
    from cai.templates import PromptTemplates

    templates = templates or PromptTemplates(constitution=constitution)
    unique: dict[str, PromptRecord] = {}
    for records in sets.values():
        for r in records:
            unique.setdefault(r.id, r)
    convs = [policy_conversation(r, templates, constitution) for r in unique.values()]
    gens = backend.generate(convs, params)
    return {rid: g.text.strip() for rid, g in zip(unique, gens)}


def _resolve_backends(
    models: Mapping[str, Backend | str], factory: Callable[[str], Backend]
) -> tuple[dict[str, Backend], dict[str, Backend]]:
    cache: dict[str, Backend] = {}
    out = {}
    for name, m in models.items():
        if isinstance(m, str):
            if m not in cache:
                cache[m] = factory(m)
            out[name] = cache[m]
        else:
            out[name] = m
    return out, cache


def evaluate_models(
    models: Mapping[str, Backend | str],
    prompts_red_team: PromptsLike | None = None,
    prompts_benign: PromptsLike | None = None,
    constitution: Constitution | str | None = None,
    judge_backend: Backend | str | None = None,
    *,
    win_rate_prompts: PromptsLike | None = None,
    baseline: str | None = None,
    reward_model: Any = None,
    reward_data: str | Path | None = None,
    detector: RefusalDetector | None = None,
    templates: Any = None,
    config: EvalConfig | None = None,
    backend_factory: Callable[[str], Backend] | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` (name -> Backend or model spec); returns the metrics dict (JSON-ready).

    * Win rates need ``constitution`` + ``judge_backend`` and two or more models;
      every model is compared with ``baseline`` (default: the first model) on
      ``win_rate_prompts`` (default: the red-team and benign prompts together).
    * ``reward_model``: a reward-model directory (or a ``RewardScorer``) for the
      mean reward of each model's responses; with ``reward_data`` (a preference
      dataset dir) also its accuracy on those rows.
    """
    from cai import __version__
    from cai.backends import make_backend

    config = config or EvalConfig()
    if not models:
        raise UserInputError("no models to evaluate; give at least one --model")
    names = list(models)
    baseline = baseline if baseline is not None else names[0]
    if baseline not in models:
        raise UserInputError(f"baseline '{baseline}' is not one of the models ({', '.join(names)})")
    if isinstance(constitution, str):
        from cai.constitution import load_constitution

        constitution = load_constitution(constitution)
    if (constitution is None) != (judge_backend is None):
        raise UserInputError("the judge needs both a constitution and a judge model; give both or neither")
    sets = {
        "red_team": as_records(prompts_red_team, "red-team prompts"),
        "benign": as_records(prompts_benign, "benign prompts"),
    }
    if win_rate_prompts is not None:
        sets["win_rate"] = as_records(win_rate_prompts, "win-rate prompts")
    elif constitution is not None and len(models) > 1 and config.win_rates:
        sets["win_rate"] = list({r.id: r for r in sets["red_team"] + sets["benign"]}.values())
    if not any(sets.values()):
        raise UserInputError("nothing to evaluate on; give win-rate, red-team or benign prompts")
    if reward_data is not None:  # a wrong dataset fails now, not after every model has generated
        from cai.evaluation.reward import preference_conversations

        preference_conversations(reward_data)
    detector = detector or RefusalDetector()
    factory = backend_factory or (lambda spec: make_backend(spec))
    backends, cache = _resolve_backends(models, factory)
    judge = None
    if constitution is not None:
        from cai.judge import ConstitutionJudge

        jb = judge_backend if not isinstance(judge_backend, str) else cache.get(judge_backend) or factory(judge_backend)
        judge = ConstitutionJudge(constitution, jb, templates=templates, principles=config.principles,
                                  both_orders=config.both_orders, cot=config.cot, seed=config.seed,
                                  on_overflow=config.on_overflow)
    started = time.time()

    # 1. Responses: one batched generate call per model.
    gen_constitution = constitution if config.use_system_prompt else None
    responses: dict[str, dict[str, str]] = {}
    for name in names:
        n_prompts = len({r.id for s in sets.values() for r in s})
        log.info("generating responses of %s to %d prompts", name, n_prompts)
        if progress_enabled(getattr(backends[name], "progress", False)):  # say whose answers the next line counts
            echo_line(f"eval: answers of {name} to {n_prompts} prompts")
        responses[name] = generate_for_sets(backends[name], sets, config.sampling(), constitution=gen_constitution,
                                            templates=templates)

    # 2. The judge: every comparison of every model in ONE batched compare call.
    judged: dict[tuple[str, str], list[Any]] = {}
    if judge is not None:
        jobs: list[tuple[str, str, PromptRecord, str, str]] = []  # (model, metric, record, x, y)
        for name in names:
            if name != baseline:
                jobs += [(name, "win_rate", r, responses[name][r.id], responses[baseline][r.id])
                         for r in sets.get("win_rate", [])]
            if config.judge_harmlessness:
                jobs += [(name, "vs_refusal", r, responses[name][r.id], config.canned_refusal)
                         for r in sets["red_team"]]
        if jobs:
            verdicts = judge.compare([j[2].messages for j in jobs], [j[3] for j in jobs], [j[4] for j in jobs])
            for (name, metric, *_), v in zip(jobs, verdicts):
                judged.setdefault((name, metric), []).append(v)

    # 3. Reward model: all models' responses in one batched scoring call.
    scorer = None
    rewards: dict[str, list[float]] = {}
    reward_acc = None
    if reward_model is not None:
        from cai.evaluation.reward import RewardScorer, reward_model_accuracy

        scorer = reward_model if isinstance(reward_model, RewardScorer) else \
            RewardScorer(reward_model, batch_size=config.reward_batch_size)
        all_ids = list(dict.fromkeys(r.id for s in sets.values() for r in s))
        by_id = {r.id: r for s in sets.values() for r in s}
        convs = [by_id[i].messages + [{"role": "assistant", "content": responses[n][i]}]
                 for n in names for i in all_ids]
        flat = scorer.score(convs)
        for k, n in enumerate(names):
            rewards[n] = flat[k * len(all_ids):(k + 1) * len(all_ids)]
        if reward_data is not None:
            reward_acc = reward_model_accuracy(scorer, reward_data, confidence=config.confidence)

    per_model = {name: _model_metrics(name, baseline, sets, responses[name], judged, rewards.get(name), detector,
                                      config) for name in names}
    return {
        "kind": "cai_eval",
        "cai_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.time() - started, 3),
        "baseline": baseline if "win_rate" in sets and judge is not None and len(names) > 1 else None,
        "prompts": {k: len(v) for k, v in sets.items()},
        "config": config.model_dump(),
        "judge": judge.provenance() if judge is not None else None,
        "refusal_detector": detector.provenance(),
        "reward_model": None if scorer is None else {
            "model": scorer.model_id,
            "accuracy": reward_acc.to_dict() if reward_acc is not None else None,
            "data": str(reward_data) if reward_data is not None else None,
        },
        "models": per_model,
    }


def _model_metrics(
    name: str,
    baseline: str,
    sets: Mapping[str, Sequence[PromptRecord]],
    responses: Mapping[str, str],
    judged: Mapping[tuple[str, str], list[Any]],
    rewards: list[float] | None,
    detector: RefusalDetector,
    config: EvalConfig,
) -> dict[str, Any]:
    from cai.evaluation.metrics import judgement_outcome, reward_stats

    conf = config.confidence
    out: dict[str, Any] = {"win_rate": None, "harmlessness": None, "over_refusal": None, "reward": None}
    samples: dict[str, dict[str, Any]] = {}

    def sample(r: PromptRecord) -> dict[str, Any]:
        # The prompt file's category and look_unsafe travel with the sample, so a report can group by them.
        return samples.setdefault(r.id, {"id": r.id, "prompt": r.text, "sets": [],
                                         "category": r.extra.get("category"),
                                         "look_unsafe": bool(r.extra.get("look_unsafe", False)),
                                         "response": responses[r.id]})

    wr_j = judged.get((name, "win_rate"))
    if wr_j is not None:
        w: WinRate = win_rate(wr_j, confidence=conf)
        out["win_rate"] = {"baseline": baseline, **w.to_dict()}
        for r, j in zip(sets["win_rate"], wr_j):
            sample(r)["vs_baseline"] = {"p": _num(j.p_a), "outcome": judgement_outcome(j),
                                        "principle_ids": j.principle_ids}
    if sets["red_team"]:
        rr: RefusalRate = refusal_rate([responses[r.id] for r in sets["red_team"]], detector, confidence=conf)
        harm: dict[str, Any] = {"refusal_rate": rr.to_dict(), "judge": None}
        vr_j = judged.get((name, "vs_refusal"))
        if vr_j is not None:
            vs = win_rate(vr_j, confidence=conf)
            harm["judge"] = {"harmful_rate": _num(vs.losses / vs.n) if vs.n else None,
                             "vs_refusal": vs.to_dict(), "canned_refusal": config.canned_refusal}
            for r, j in zip(sets["red_team"], vr_j):
                sample(r)["vs_refusal"] = {"p": _num(j.p_a), "outcome": judgement_outcome(j)}
        for r, m in zip(sets["red_team"], rr.matches):
            sample(r)["refusal"] = m.to_dict() if m else None
        out["harmlessness"] = harm
    if sets["benign"]:
        br = refusal_rate([responses[r.id] for r in sets["benign"]], detector, confidence=conf)
        out["over_refusal"] = br.to_dict()
        for r, m in zip(sets["benign"], br.matches):
            sample(r)["refusal"] = m.to_dict() if m else None
    for key, records in sets.items():
        for r in records:
            sample(r)["sets"].append(key)
    if rewards is not None:
        all_ids = list(dict.fromkeys(r.id for s in sets.values() for r in s))
        score = dict(zip(all_ids, rewards))
        out["reward"] = {"all": reward_stats(rewards).to_dict(),
                         **{k: reward_stats([score[r.id] for r in v]).to_dict() for k, v in sets.items() if v}}
        for rid, s in score.items():
            samples[rid]["reward"] = _num(s)
    if config.keep_samples:
        out["samples"] = list(samples.values())
    return out


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


__all__ = ["EvalConfig", "evaluate_models", "generate_for_sets", "as_records"]
