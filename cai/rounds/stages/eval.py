"""``eval``: the round's new policy against round 0 (and, from round 2, round k-1) on held-out prompts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cai.evaluation.runner import EvalConfig
from cai.rounds.context import StageContext
from cai.rounds.spec import DEFAULT_USES, RoundStage, register_stage


@dataclass
class ModelFigures:
    """One model's figures in a round's evaluation (None where not measured)."""

    red_team_refusal_rate: float | None = None
    judge_harmful_rate: float | None = None
    benign_refusal_rate: float | None = None

    @classmethod
    def from_eval(cls, m: dict[str, Any]) -> "ModelFigures":
        harm = m.get("harmlessness") or {}
        return cls(red_team_refusal_rate=(harm.get("refusal_rate") or {}).get("rate"),
                   judge_harmful_rate=(harm.get("judge") or {}).get("harmful_rate"),
                   benign_refusal_rate=(m.get("over_refusal") or {}).get("rate"))


@dataclass
class RoundMetrics:
    """What the round, `cai status --json` and the report read: written as ``eval/metrics.json``."""

    win_rates: dict[str, dict[str, Any]] = field(default_factory=dict)
    refusal: dict[str, ModelFigures] = field(default_factory=dict)
    reward: dict[str, float | None] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    labeller: dict[str, Any] = field(default_factory=dict)
    #: Per model: refusal with Wilson intervals (overall, by category, look-unsafe benign), distinct-2.
    outcome: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Which label source trained this round, and why (from the training stages' summaries).
    label_sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per model: the same outcome figures on the validation slice of the training sets
    #: (``prompts.validation``; empty when off). Settings are chosen on these, never on ``outcome``.
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The model that labelled, critiqued and judged in this round (``models.feedback``, resolved).
    feedback_model: str = ""
    #: Per model (round-0, round-k), per signal: agreement with the labelled pair set
    #: (`cai.evaluation.labeller.agreement`); empty without ``prompts.labelled_pairs``.
    labeller_check: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: "round-k vs round-j" -> per outcome rate, the paired comparison on the same prompts (McNemar exact).
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per training stage of the round: shares of its rows' text and label sources (`cai.provenance`).
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> "RoundMetrics":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(win_rates=d.get("win_rates", {}), reward=d.get("reward", {}), samples=d.get("samples", []),
                   labeller=d.get("labeller", {}), outcome=d.get("outcome", {}),
                   label_sources=d.get("label_sources", {}), validation=d.get("validation", {}),
                   feedback_model=d.get("feedback_model", ""), labeller_check=d.get("labeller_check", {}),
                   provenance=d.get("provenance", {}), paired=d.get("paired", {}),
                   refusal={k: ModelFigures(**v) for k, v in d.get("refusal", {}).items()})


def run(ctx: StageContext) -> dict[str, Any]:
    from cai.evaluation import evaluate_models
    from cai.evaluation.metrics import win_rate

    res, k, e = ctx.res, ctx.k, ctx.section
    _, _, eval_red, eval_benign = res.prompt_split()
    cand = f"round-{k}"
    models = {"round-0": ctx.cfg.models.policy}
    if k > 1:
        models[f"round-{k - 1}"] = ctx.policy
    models[cand] = str(res.dir / f"round-{k}" / ctx.new_policy_stage)
    reward_dir = ctx.input_dir("reward")
    # Responses are needed below (samples, the vs-previous-round judgement) whatever keep_samples says.
    full = evaluate_models(
        models, eval_red, eval_benign, res.constitution, res.backend(ctx.feedback_spec), baseline="round-0",
        reward_model=str(reward_dir) if ctx.has_input("reward") else None, templates=res.templates(),
        config=e.model_copy(update={"keep_samples": True}), backend_factory=res.backend,
    )
    per = full["models"]
    responses = {name: {s["prompt"]: s["response"] for s in per[name].get("samples", [])} for name in per}
    by_id = {name: {s["id"]: s["response"] for s in per[name].get("samples", [])} for name in per}
    if not e.keep_samples:
        for m in per.values():
            m.pop("samples", None)
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "eval.json").write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
    metrics = RoundMetrics(win_rates={"vs round-0": per[cand]["win_rate"]})
    if k > 1 and e.win_rates:  # the same responses, judged against the previous round's (one batched compare)
        from cai.judge import ConstitutionJudge

        judge = ConstitutionJudge(res.constitution, res.backend(ctx.feedback_spec), templates=res.templates(),
                                  principles=e.principles, both_orders=e.both_orders, seed=e.seed)
        prev = f"round-{k - 1}"
        records = list({r.id: r for r in eval_red + eval_benign}.values())
        verdicts = judge.compare([r.messages for r in records], [responses[cand][r.text] for r in records],
                                 [responses[prev][r.text] for r in records])
        metrics.win_rates[f"vs {prev}"] = win_rate(verdicts).to_dict()
    metrics.refusal = {name: ModelFigures.from_eval(m) for name, m in per.items()}
    from cai.evaluation.outcome import outcome_figures

    templates = {c: [t] if isinstance(t, str) else list(t) for c, t in res.constitution.refusals.items()}
    metrics.outcome = {name: outcome_figures(eval_red, eval_benign, by_id[name], confidence=e.confidence,
                                             refusal_templates=templates) for name in per}
    from cai.evaluation.outcome import paired_outcome

    metrics.paired = {f"{cand} vs {ref}": paired_outcome(eval_red, eval_benign, by_id[ref], by_id[cand])
                      for ref in models if ref != cand}
    metrics.validation = validation_outcome(ctx, models)
    metrics.feedback_model = ctx.feedback_spec
    metrics.labeller_check = labeller_check(ctx, {"round-0": models["round-0"], cand: models[cand]})
    for stage in ctx.cfg.pipeline_of(k):
        summary = ctx.res.stage_summary(f"round-{k}/{stage}")
        if summary and "label_source" in summary:
            metrics.label_sources[stage] = {key: summary[key] for key in ("label_source", "label_source_why")}
        if summary and isinstance(summary.get("provenance"), dict):
            metrics.provenance[stage] = summary["provenance"]
    metrics.reward = {name: ((m.get("reward") or {}).get("all") or {}).get("mean") for name, m in per.items()}
    if e.keep_samples:
        metrics.samples = [{"prompt": p, **{name: responses[name].get(p) for name in models}}
                           for p in list(responses[cand])[:6]]
    from cai.data import meta_path, read_meta

    if ctx.has_input("preferences") and meta_path(ctx.input_dir("preferences")) is not None:
        metrics.labeller = read_meta(ctx.input_dir("preferences")).get("summary", {}).get("labeller", {})
    out = metrics.to_dict()
    (ctx.out / "metrics.json").write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
    return {key: out[key] for key in ("win_rates", "refusal", "reward", "label_sources")}


def validation_outcome(ctx: StageContext, models: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each model's outcome figures on the validation slice (greedy as in eval); {} without one."""
    from cai.evaluation.outcome import outcome_figures
    from cai.evaluation.runner import generate_for_sets

    val_red, val_helpful = ctx.res.validation_split()
    if not val_red and not val_helpful:
        return {}
    e = ctx.section
    out = {}
    for name, spec in models.items():
        responses = generate_for_sets(ctx.res.backend(spec), {"red_team": val_red, "benign": val_helpful},
                                      e.sampling(), templates=ctx.res.templates())
        out[name] = outcome_figures(val_red, val_helpful, responses, confidence=e.confidence)
    return out


def labeller_check(ctx: StageContext, models: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each model's feedback signals on the labelled pair set (``prompts.labelled_pairs``); {} without one."""
    path = ctx.cfg.prompts.labelled_pairs
    if not path:
        return {}
    from cai.evaluation.labeller import NEEDS_REFERENCE, measure_signal
    from cai.judge import ConstitutionJudge
    from cai.labelled_pairs import load_labelled_pairs

    e, res = ctx.section, ctx.res
    pairs = load_labelled_pairs(path)

    def make_judge(backend: Any, principles: Any) -> ConstitutionJudge:
        return ConstitutionJudge(res.constitution, backend, templates=res.templates(),
                                 principles=principles or e.principles, both_orders=e.both_orders, seed=e.seed)

    reference = res.backend(models["round-0"])
    out: dict[str, dict[str, Any]] = {}
    for name, spec in models.items():
        backend = res.backend(spec)
        # Named by round, not by path: the figures of a run stay the same wherever its directory is.
        out[name] = {s: {**measure_signal(s, backend, pairs, reference=reference, make_judge=make_judge,
                                          confidence=e.confidence), "model": name}
                     for s in e.labeller_signals if not (s in NEEDS_REFERENCE and backend is reference)}
    return out


def check(cfg: Any, source: str) -> None:
    """Principle ids named in ``stages.eval.principles`` exist and can judge, before any model loads."""
    ids = cfg.section("eval").principles
    if isinstance(ids, list):
        from cai.constitution import load_constitution
        from cai.errors import UserInputError
        from cai.judge import named_principles

        try:
            named_principles(load_constitution(cfg.constitution), ids)
        except UserInputError as e:  # the same check the judge makes, named by the config field
            raise UserInputError(f"{source}: stages.eval.{e}") from None


STAGE = register_stage(RoundStage(
    name="eval", run=run, config=EvalConfig, check=check, reads_policy=True, reads_new_policy=True, restart=True,
    optional_inputs=("reward", "preferences"),
    uses=DEFAULT_USES + ("models.feedback", "constitution", "prompts.labelled_pairs"), templates=("initial_response", "preference"),
    description="Evaluate the round's policy on held-out prompts: refusal, over-refusal, win rates.",
))
