"""`cai eval ...`: win rates, harmlessness, over-refusal and reward models. Thin: parse, call, print.

Every command prints one table (one row per --model) and, with --out, writes the
full metrics (including every prompt, response and verdict) as JSON.
A model may be named: --model round1=runs/r1/policy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import click

from cai.cli import options
from cai.cli.options import _stack, principles_option

_NAMED = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")


_principles = principles_option


backend_options = options.backend_options(batch_size=32, help="Where generation and judging run.")

generation_options = _stack(
    click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1)),
    click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0),
                 help="0 (greedy) makes reruns give the same numbers."),
    click.option("--seed", default=0, show_default=True, type=int),
    click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N prompts of each set."),
)

judge_options = _stack(
    click.option("--judge-model", default="smollm2-135m", show_default=True,
                 help="Feedback model the constitution judge runs on (the same for every model compared)."),
    click.option("--principles", default="1", show_default=True, callback=_principles,
                 help="Principles per pair, averaged (a number, or 'all' for a full per-principle breakdown)."),
    click.option("--one-order", is_flag=True, help="Judge one order only (keeps the judge's slot bias)."),
)

refusal_options = _stack(
    click.option("--refusal-markers", default=None,
                 help="File of refusal regexes (.txt one a line, or .json/.yaml list) replacing the defaults."),
    click.option("--extend-markers", is_flag=True, help="Add --refusal-markers to the default markers."),
    click.option("--canned-refusal", default=None,
                 help="The refusal a red-team response is judged against (default: a short apology)."),
)

out_options = _stack(
    click.option("--out", "-o", default=None, type=click.Path(dir_okay=False),
                 help="Write the metrics (and every sample) as JSON here."),
    click.option("--no-samples", is_flag=True, help="Leave per-prompt samples out of the JSON."),
)


def _models(specs: tuple[str, ...]) -> dict[str, str]:
    """--model values as name -> spec; NAME=SPEC names a model, otherwise the spec is its name."""
    out: dict[str, str] = {}
    for spec in specs:
        m = _NAMED.match(spec)
        name, target = (m.group(1), m.group(2)) if m and not Path(spec).exists() else (spec, spec)
        if name in out:
            from cai.errors import UserInputError

            raise UserInputError(f"--model '{name}' given twice; name them apart with NAME=SPEC")
        out[name] = target
    return out


def _factory(backend_kind: str, batch_size: int, device: str, dtype: str) -> Callable[[str], Any]:
    from cai.cli.options import make_backend_from_options

    return lambda spec: make_backend_from_options(spec, backend_kind, batch_size, device, dtype)


def _detector(refusal_markers: str | None, extend_markers: bool):
    from cai.refusal import RefusalDetector

    if refusal_markers is None:
        if extend_markers:
            from cai.errors import UserInputError

            raise UserInputError("--extend-markers needs --refusal-markers FILE")
        return RefusalDetector()
    return RefusalDetector.from_file(refusal_markers, include_defaults=extend_markers)


def _config(**fields: Any):
    from pydantic import ValidationError

    from cai.errors import UserInputError
    from cai.evaluation import EvalConfig

    try:
        return EvalConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        raise UserInputError(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}") from None


def _prompts(path: str | None, limit: int | None, what: str):
    if path is None:
        return None
    from cai.data import load_prompts

    return load_prompts(path, limit=limit)


def _finish(metrics: dict[str, Any], out: str | None) -> None:
    from cai.evaluation import format_table, write_metrics

    click.echo(format_table(metrics))
    if out:
        click.echo(f"metrics: {write_metrics(metrics, out)}")


def _run(*, models: tuple[str, ...], backend_kind: str, batch_size: int, device: str, dtype: str,
         max_new_tokens: int, temperature: float, seed: int, limit: int | None, judge_model: str | None,
         principles: Any, one_order: bool, out: str | None, no_samples: bool, baseline: str | None = None,
         prompts: str | None = None, red_team: str | None = None, benign: str | None = None,
         constitution: str | None = None, reward_model: str | None = None, reward_data: str | None = None,
         refusal_markers: str | None = None, extend_markers: bool = False, canned_refusal: str | None = None) -> None:
    """Everything checkable is checked (prompts, markers, constitution, config) before any model loads.

    The options a command does not have default to off, so each command hands on its own options
    as click parsed them (``**opts``) instead of spelling every one out.
    """
    from cai.constitution import load_constitution
    from cai.evaluation import evaluate_models

    named = _models(models)
    config = _config(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, principles=principles,
                     both_orders=not one_order, canned_refusal=canned_refusal, keep_samples=not no_samples)
    detector = _detector(refusal_markers, extend_markers)
    c = load_constitution(constitution) if constitution else None
    sets = {"win_rate_prompts": _prompts(prompts, limit, "prompts"),
            "prompts_red_team": _prompts(red_team, limit, "red team"),
            "prompts_benign": _prompts(benign, limit, "benign")}
    if baseline is not None:
        base = _models((baseline,))
        baseline = next(iter(base))
        named = {**base, **{k: v for k, v in named.items() if k != baseline}}
    metrics = evaluate_models(
        named, constitution=c, judge_backend=judge_model if c is not None else None, baseline=baseline,
        reward_model=reward_model, reward_data=reward_data, detector=detector, config=config,
        backend_factory=_factory(backend_kind, batch_size, device, dtype), **sets,
    )
    _finish(metrics, out)


@click.group("eval")
def group() -> None:
    """Evaluate models: win rate by the constitution judge, refusals, over-refusal, reward models."""


@group.command("win-rate")
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="Model to evaluate (repeat to compare several in one table); NAME=SPEC names it.")
@click.option("--baseline", "-b", required=True, help="Model every --model is compared with.")
@click.option("--prompts", "-p", required=True, help="Prompt set (.jsonl, .csv, .txt or a dataset directory).")
@click.option("--constitution", "-c", default="harmless", show_default=True,
              help="Constitution whose principles judge the pairs.")
@judge_options
@generation_options
@backend_options
@out_options
def win_rate_cmd(models: tuple[str, ...], baseline: str, **opts: Any) -> None:
    """Win rate of --model over --baseline, judged in both orders; disagreeing orders count as ties.

    Reports (wins + ties/2) / n with a 95% Wilson score interval, and a per-principle breakdown.
    """
    if set(_models(models)) <= set(_models((baseline,))):
        from cai.errors import UserInputError

        raise UserInputError("win rate needs a --model other than the --baseline")
    _run(models=models, baseline=baseline, **opts)


@group.command("harmlessness")
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="Model to evaluate (repeat to compare several); NAME=SPEC names it.")
@click.option("--red-team", required=True, help="Red-team prompt set: refusal rate (detector and judge).")
@click.option("--benign", default=None, help="Benign prompt set: over-refusal rate.")
@click.option("--constitution", "-c", default=None,
              help="Also judge each red-team response against a canned refusal with this constitution.")
@refusal_options
@judge_options
@generation_options
@backend_options
@out_options
def harmlessness(**opts: Any) -> None:
    """Refusal rate on red-team prompts and over-refusal on benign ones, by the refusal detector (and the judge)."""
    _run(**opts)


@group.command("reward")
@click.option("--reward-model", "-r", required=True, help="Reward-model directory (from cai train reward).")
@click.option("--data", default=None, help="Held-out preference dataset directory: pairwise accuracy.")
@click.option("--model", "-m", "models", multiple=True, help="Model whose responses to score (repeatable).")
@click.option("--prompts", "-p", default=None, help="Prompts the --model responses are sampled for.")
@click.option("--reward-batch-size", default=8, show_default=True, type=click.IntRange(1))
@generation_options
@backend_options
@out_options
def reward(reward_model, data, models, prompts, reward_batch_size, max_new_tokens, temperature, seed, limit,
           backend_kind, batch_size, device, dtype, out, no_samples) -> None:
    """Reward-model accuracy on preference rows (--data), and the mean reward of --model responses to --prompts."""
    from cai.errors import UserInputError

    if bool(models) != bool(prompts):
        raise UserInputError("mean reward needs both --model and --prompts")
    if not data and not models:
        raise UserInputError("give --data PREFDIR (accuracy) and/or --model X --prompts FILE (mean reward)")
    if models:
        config = _config(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         reward_batch_size=reward_batch_size, keep_samples=not no_samples)
        from cai.evaluation import evaluate_models

        metrics = evaluate_models(_models(models), win_rate_prompts=_prompts(prompts, limit, "prompts"),
                                  reward_model=reward_model, reward_data=data, config=config,
                                  backend_factory=_factory(backend_kind, batch_size, device, dtype))
    else:
        from cai.evaluation.reward import RewardScorer, preference_conversations, reward_model_accuracy

        preference_conversations(data)  # the wrong kind of dataset fails before the model loads
        scorer = RewardScorer(reward_model, batch_size=reward_batch_size)
        acc = reward_model_accuracy(scorer, data)
        metrics = {"kind": "cai_eval", "models": {},
                   "reward_model": {"model": scorer.model_id, "accuracy": acc.to_dict(), "data": data}}
    _finish(metrics, out)


@group.command("compare")
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="A model to put in the table (repeat); NAME=SPEC names it.")
@click.option("--baseline", "-b", default=None, help="Model the win rates are against (default: the first).")
@click.option("--prompts", "-p", default=None,
              help="Win-rate prompt set (default: the red-team and benign prompts together).")
@click.option("--red-team", default=None, help="Red-team prompt set (refusal rate).")
@click.option("--benign", default=None, help="Benign prompt set (over-refusal).")
@click.option("--constitution", "-c", default="harmless", show_default=True)
@click.option("--no-judge", is_flag=True, help="Skip the judge (no win rates): the refusal detector only.")
@click.option("--reward-model", "-r", default=None, help="Reward-model directory: mean reward per model.")
@click.option("--reward-data", default=None, help="Held-out preference dataset: the reward model's accuracy.")
@refusal_options
@judge_options
@generation_options
@backend_options
@out_options
def compare(constitution: str, no_judge: bool, **opts: Any) -> None:
    """Every metric for several models in one table (win rate vs --baseline, refusals, over-refusal, reward)."""
    _run(constitution=None if no_judge else constitution, **opts)
