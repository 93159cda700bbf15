"""`cai generate cot`: self-generated chain-of-thought SFT data (self-consistency + STaR)."""

from __future__ import annotations

import click

from cai.cli.options import make_backend_from_options, model_options, print_summary


@click.command("cot")
@click.option("--questions", "-q", "questions_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Question set: .jsonl with 'question' and optional 'answer' (gold) per line.")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
              help="Dataset directory to write (rerun the same command to resume).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML with cot settings (a `cot:` section or top-level keys); flags override it.")
@click.option("--k", "k_samples", type=click.IntRange(1), default=None, help="Samples per question [8].")
@click.option("--formats", default=None,
              help="Comma-separated row formats: few_shot_cot,zero_shot_cot,direct [all three].")
@click.option("--prompt-style", type=click.Choice(["few_shot", "zero_shot"]), default=None,
              help="Template to sample with [few_shot].")
@click.option("--few-shot", "few_shot_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="jsonl of {question, rationale} exemplars for the few-shot template.")
@click.option("--vote-threshold", type=click.FloatRange(0, 1), default=None,
              help="Keep a question when majority votes / K reaches this [0.5].")
@click.option("--max-new-tokens", type=click.IntRange(1), default=None, help="[160]")
@click.option("--temperature", type=click.FloatRange(0), default=None, help="[0.7]")
@click.option("--top-p", type=click.FloatRange(0, 1), default=None, help="[0.95]")
@click.option("--seed", type=int, default=None, help="[0]")
@click.option("--greedy-eval/--no-greedy-eval", default=None,
              help="With gold answers, also decode greedily and report its accuracy [on].")
@click.option("--rationalize/--no-rationalize", default=None,
              help="With gold answers, STaR-rationalise questions voted wrong [on].")
@click.option("--filter-by-gold/--no-filter-by-gold", default=None,
              help="With gold answers, keep only rationales that reach it [off].")
@click.option("--extractor", type=click.Choice(["answer_is", "last_number", "regex"]), default=None,
              help="How to read the final answer [answer_is].")
@click.option("--answer-pattern", default=None, help="Regex for --extractor regex (first group = answer).")
@click.option("--fallback-last-number/--no-fallback-last-number", default=None,
              help="When no answer line is found, use the last number [on].")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None,
              help="Directory with your own cot_*.jinja templates.")
@click.option("--overwrite", is_flag=True, help="Discard what --out holds and start again.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N questions.")
@click.option("--chunk-size", default=32, show_default=True, type=click.IntRange(1),
              help="Questions processed (and saved) together; a kill loses at most one chunk.")
@model_options
def cot(questions_path, out, config_path, k_samples, formats, prompt_style, few_shot_path, vote_threshold,
        max_new_tokens, temperature, top_p, seed, greedy_eval, rationalize, filter_by_gold, extractor,
        answer_pattern, fallback_last_number, template_dir, overwrite, limit, chunk_size,
        model, backend_kind, batch_size, device, dtype) -> None:
    """Sample K chains of thought per question, majority-vote, keep confident rationales as SFT rows.

    With gold answers, also reports greedy vs self-consistency accuracy and
    rationalises (STaR) the questions the vote got wrong.
    """
    from cai.stages.cot import load_cot_config, load_questions, run_cot
    from cai.templates import PromptTemplates

    config = load_cot_config(
        config_path, k_samples=k_samples,
        formats=[f.strip() for f in formats.split(",") if f.strip()] if formats else None,
        prompt_style=prompt_style, few_shot_path=few_shot_path, vote_threshold=vote_threshold,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
        greedy_eval=greedy_eval, rationalize=rationalize, filter_by_gold=filter_by_gold, extractor=extractor,
        answer_pattern=answer_pattern, fallback_last_number=fallback_last_number,
    )
    load_questions(questions_path, limit=limit)  # fail on a malformed file before loading a model
    templates = PromptTemplates(template_dir)
    backend = make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    result = run_cot(questions_path, out, backend, config=config, templates=templates, overwrite=overwrite,
                     chunk_size=chunk_size, limit=limit)
    print_summary("cot", out, result)
