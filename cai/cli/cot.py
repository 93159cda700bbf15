"""`cai generate cot`: self-generated chain-of-thought SFT data (self-consistency + STaR)."""

from __future__ import annotations

import click

from cai.cli.config_options import build_config, config_options, pop_config_flags
from cai.cli.options import make_backend_from_options, model_options, out_dir_callback, print_summary
from cai.stages.cot_inputs import CotConfig


@click.command("cot")
@click.option("--questions", "-q", "questions_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Question set: .jsonl with 'question' and optional 'answer' (gold) per line.")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), callback=out_dir_callback,
              help="Dataset directory to write (rerun the same command to resume).")
# --k and --few-shot are the names these flags had before they came from CotConfig.
@config_options(CotConfig, aliases={"k_samples": ("--k",), "few_shot_path": ("--few-shot",)})
@click.option("--template-dir", type=click.Path(file_okay=False), default=None,
              help="Directory with your own cot_*.jinja templates.")
@click.option("--overwrite", is_flag=True, help="Discard what --out holds and start again.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N questions.")
@click.option("--chunk-size", default=32, show_default=True, type=click.IntRange(1),
              help="Questions processed (and saved) together; a kill loses at most one chunk.")
@model_options
def cot(questions_path, out, template_dir, overwrite, limit, chunk_size, model, backend_kind, batch_size, device,
        dtype, **flags) -> None:
    """Sample K chains of thought per question, majority-vote, keep confident rationales as SFT rows.

    With gold answers, also reports greedy vs self-consistency accuracy and
    rationalises (STaR) the questions the vote got wrong. Every CotConfig field is a
    flag (and a key of --config FILE.yaml).
    """
    from cai.stages.cot import load_questions, run_cot
    from cai.templates import PromptTemplates

    config = build_config(CotConfig, *pop_config_flags(flags))
    load_questions(questions_path, limit=limit)  # fail on a malformed file before loading a model
    templates = PromptTemplates(template_dir)
    backend = make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    result = run_cot(questions_path, out, backend, config=config, templates=templates, overwrite=overwrite,
                     chunk_size=chunk_size, limit=limit)
    print_summary("cot", out, result)
