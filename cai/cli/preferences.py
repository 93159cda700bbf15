"""`cai generate preferences`: AI preference labels (RL-CAI) into a resumable dataset directory."""

from __future__ import annotations

import click

from cai.cli.options import (
    make_backend_from_options,
    model_options,
    output_options,
    principles_option,
    print_summary,
    sampling_options,
)


_principles = principles_option


@click.command("preferences")
@click.option("--prompts", "-p", "prompts_path", required=True, type=click.Path(exists=True),
              help="Prompt set: .jsonl (prompt or messages), .csv, .txt, or a dataset directory.")
@click.option("--constitution", "-c", required=True, help="Constitution file or shipped name (e.g. harmless).")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None,
              help="Directory with your own preference.jinja / preference_cot.jinja / initial_response.jinja.")
@model_options
@click.option("--feedback-model", default=None,
              help="Model that labels the pairs (default: the policy --model itself).")
@sampling_options
@click.option("--k-responses", "-k", default=2, show_default=True, type=click.IntRange(2),
              help="Responses sampled per prompt; every pair of them is labelled.")
@click.option("--principles", default="1", show_default=True, callback=_principles,
              help="Principles per pair, averaged (a number, or 'all').")
@click.option("--one-order", is_flag=True, help="Score only one order (faster; keeps slot bias).")
@click.option("--cot", is_flag=True, help="Chain of thought: generate a rationale, then score; clamp into --cot-band.")
@click.option("--cot-band", nargs=2, type=click.FloatRange(0, 1), default=(0.4, 0.6), show_default=True)
@click.option("--cot-max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--min-confidence", default=0.0, show_default=True, type=click.FloatRange(0, 0.5),
              help="Drop pairs with |p - 0.5| below this (recorded in failures.jsonl).")
@click.option("--require-consistent", is_flag=True, help="Drop pairs whose two orders disagree.")
@click.option("--on-overflow", type=click.Choice(["truncate", "skip"]), default="truncate", show_default=True,
              help="A pair longer than the feedback model's context: cut the responses (noted) or skip it.")
@output_options
def preferences(prompts_path, constitution, template_dir, model, backend_kind, batch_size, device, dtype,
                feedback_model, max_new_tokens, temperature, top_p, seed, k_responses, principles, one_order,
                cot, cot_band, cot_max_new_tokens, min_confidence, require_consistent, on_overflow,
                out, overwrite, limit, chunk_size) -> None:
    """Sample K responses per prompt and label every pair with the constitution judge (soft A/B labels)."""
    from pydantic import ValidationError

    from cai.constitution import load_constitution
    from cai.data import load_prompts
    from cai.errors import UserInputError
    from cai.stages.label import LabelConfig, run_preferences
    from cai.templates import PromptTemplates

    c = load_constitution(constitution)
    templates = PromptTemplates(template_dir, constitution=c)
    try:
        config = LabelConfig(
            k_responses=k_responses, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            seed=seed, principles=principles, both_orders=not one_order, cot=cot, cot_band=tuple(cot_band),
            cot_max_new_tokens=cot_max_new_tokens, min_confidence=min_confidence,
            require_consistent=require_consistent, on_overflow=on_overflow,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise UserInputError(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}") from None
    records = load_prompts(prompts_path, limit=limit)
    policy = make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    feedback = (make_backend_from_options(feedback_model, backend_kind, batch_size, device, dtype)
                if feedback_model and feedback_model != model else policy)
    result = run_preferences(records, out, c, policy, feedback, config=config, templates=templates,
                             overwrite=overwrite, chunk_size=chunk_size,
                             extra_provenance={"prompts": str(prompts_path)})
    print_summary("preferences", out, result)
