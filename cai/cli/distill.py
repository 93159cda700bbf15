"""`cai generate distill` and `cai generate contrastive`: context distillation and pairs labelled by construction."""

from __future__ import annotations

import click

from cai.cli.config_options import build_config, config_options, pop_config_flags
from cai.cli.options import (
    make_backend_from_options,
    model_options,
    out_dir_callback,
    output_options,
    print_summary,
)
from cai.stages.distill import DistillConfig


@click.command("distill")
@click.option("--red-team", "red_team_path", required=True, type=click.Path(exists=True),
              help="Harmful requests: their target is the constitution's refusal for the category.")
@click.option("--helpful", "helpful_path", required=True, type=click.Path(exists=True),
              help="Ordinary requests: their target is the policy's own answer (kept unless it refuses).")
@click.option("--constitution", "-c", default="harmless", show_default=True,
              help="Constitution file or shipped name; it must have `refusals:` (or use --red-team-target in_context).")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None)
@config_options(DistillConfig)
@model_options
@output_options
def distill(red_team_path, helpful_path, constitution, template_dir, model, backend_kind, batch_size, device,
            dtype, out, overwrite, limit, chunk_size, **flags) -> None:
    """Context distillation: SFT rows made with the constitution in context, to train without it.

    Every DistillConfig field is a flag (and a key of --config FILE.yaml). Rerun to resume.
    """
    from cai.constitution import load_constitution
    from cai.data import load_prompts
    from cai.stages.distill import check_constitution, run_distill
    from cai.templates import PromptTemplates

    config = build_config(DistillConfig, *pop_config_flags(flags))
    c = load_constitution(constitution)
    check_constitution(c, config)  # before loading a model
    templates = PromptTemplates(template_dir, constitution=c)
    red, helpful = load_prompts(red_team_path, limit=limit), load_prompts(helpful_path, limit=limit)
    backend = make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    result = run_distill(red, helpful, out, c, backend, config=config, templates=templates, overwrite=overwrite,
                         chunk_size=chunk_size)
    print_summary("distill", out, result)


@click.command("contrastive")
@click.option("--distill", "distill_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A `cai generate distill` output directory.")
@click.option("--constitution", "-c", default="harmless", show_default=True,
              help="The constitution whose refusals are the rejected side of helpful pairs.")
@click.option("--no-helpful-side", is_flag=True, help="Only red-team pairs (harmless over compliant).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), callback=out_dir_callback,
              help="Preference dataset directory.")
@click.option("--overwrite", is_flag=True, help="Replace what cai wrote in --out.")
def contrastive(distill_dir, constitution, no_helpful_side, out, overwrite) -> None:
    """Preference pairs labelled by construction (RLCD) from distilled rows: no model call."""
    from cai.constitution import load_constitution
    from cai.stages.contrastive import run_contrastive

    result = run_contrastive(distill_dir, out, load_constitution(constitution), helpful_side=not no_helpful_side,
                             overwrite=overwrite)
    print_summary("contrastive", out, result)
