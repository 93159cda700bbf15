"""`cai generate preferences`: AI preference labels (RL-CAI) into a resumable dataset directory."""

from __future__ import annotations

import click

from cai.cli.config_options import build_config, config_options, pop_config_flags
from cai.cli.options import make_backend_from_options, model_options, output_options, print_summary
from cai.stages.label import LabelConfig


@click.command("preferences")
@click.option("--prompts", "-p", "prompts_path", required=True, type=click.Path(exists=True),
              help="Prompt set: .jsonl (prompt or messages), .csv, .txt, or a dataset directory.")
@click.option("--constitution", "-c", required=True, help="Constitution file or shipped name (e.g. harmless).")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None,
              help="Directory with your own preference.jinja / preference_cot.jinja / initial_response.jinja.")
@model_options
@click.option("--feedback-model", default=None,
              help="Model that labels the pairs (default: the policy --model itself).")
@config_options(LabelConfig)
@click.option("--one-order", is_flag=True, help="Shortcut for --no-both-orders: faster, keeps slot bias.")
@output_options
def preferences(prompts_path, constitution, template_dir, model, backend_kind, batch_size, device, dtype,
                feedback_model, one_order, out, overwrite, limit, chunk_size, **flags) -> None:
    """Sample K responses per prompt and label every pair with the constitution judge (soft A/B labels).

    Every LabelConfig field is a flag (and a key of --config FILE.yaml).
    """
    from cai.constitution import load_constitution
    from cai.data import load_prompts
    from cai.stages.label import run_preferences
    from cai.templates import PromptTemplates

    config_file, given = pop_config_flags(flags)
    config = build_config(LabelConfig, config_file, given, {("both_orders",): False} if one_order else None)
    c = load_constitution(constitution)
    templates = PromptTemplates(template_dir, constitution=c)
    records = load_prompts(prompts_path, limit=limit)
    policy = make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    feedback = (make_backend_from_options(feedback_model, backend_kind, batch_size, device, dtype)
                if feedback_model and feedback_model != model else policy)
    result = run_preferences(records, out, c, policy, feedback, config=config, templates=templates,
                             overwrite=overwrite, chunk_size=chunk_size,
                             extra_provenance={"prompts": str(prompts_path)})
    print_summary("preferences", out, result)
