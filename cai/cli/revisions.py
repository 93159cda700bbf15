"""`cai generate revisions`, `cai generate prompts` and `cai data dedup`: thin wrappers over the library."""

from __future__ import annotations

import click

from cai.cli import options
from cai.cli.config_options import build_config, config_options, pop_config_flags
from cai.cli.options import model_options, output_options, print_summary
from cai.stages.revise import ReviseConfig


@click.command("revisions")
@click.option("--prompts", "-p", "prompts_path", required=True, type=click.Path(exists=True),
              help="Prompt set: .jsonl (prompt or messages), .csv, .txt, or a dataset directory.")
@click.option("--constitution", "-c", default="harmless", show_default=True,
              help="Constitution file or shipped name.")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None)
@config_options(ReviseConfig)
@click.option("--max-new-tokens", "max_new_tokens", type=click.IntRange(1), default=None,
              help="Shortcut: --response-max-new-tokens and --revision-max-new-tokens at once.")
@click.option("--temperature", type=click.FloatRange(0), default=None,
              help="Shortcut: the temperature of responses, critiques and revisions (0: greedy).")
@click.option("--top-p", type=click.FloatRange(0, 1), default=None, help="Shortcut: top-p of all three.")
@click.option("--gates/--no-gates", default=None,
              help="Shortcut: every revision quality gate on or off (--gates-exemplar-overlap, "
                   "--gates-prompt-overlap set them one by one).")
@model_options
@output_options
def revisions(prompts_path, constitution, template_dir, max_new_tokens, temperature, top_p, gates, model,
              backend_kind, batch_size, device, dtype, out, overwrite, limit, chunk_size, **flags) -> None:
    """Critique and revise the policy's responses by the constitution (SL-CAI).

    Writes SFT rows (prompt + final revision, with the whole trace) to OUT/data.jsonl and
    a preference view (revision over initial) to OUT/preference. Rerun to resume.
    Every ReviseConfig field is a flag (and a key of --config FILE.yaml).
    """
    from cai.constitution import load_constitution
    from cai.data import load_prompts
    from cai.stages.revise import check_config, run_revisions
    from cai.templates import TEMPLATE_VARIABLES, PromptTemplates

    shortcuts: dict[tuple[str, ...], object] = {}
    for kind in ("response", "critique", "revision"):
        if temperature is not None:
            shortcuts[(kind, "temperature")] = temperature
        if top_p is not None:
            shortcuts[(kind, "top_p")] = top_p
    if max_new_tokens is not None:
        shortcuts[("response", "max_new_tokens")] = shortcuts[("revision", "max_new_tokens")] = max_new_tokens
    if gates is False:
        shortcuts[("gates", "exemplar_overlap")], shortcuts[("gates", "prompt_overlap")] = None, False
    config_file, given = pop_config_flags(flags)
    config = build_config(ReviseConfig, config_file, given, shortcuts)
    c = load_constitution(constitution)
    templates = PromptTemplates(template_dir, constitution=c)
    templates.validate({n: TEMPLATE_VARIABLES[n] for n in ("initial_response", "critique", "revision")})
    check_config(c, config)  # before loading a model
    records = load_prompts(prompts_path, limit=limit)
    backend = options.make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    result = run_revisions(records, out, c, backend, config=config, templates=templates, overwrite=overwrite,
                           chunk_size=chunk_size, extra_provenance={"prompts": str(prompts_path)})
    print_summary("revisions", out, result)


@click.command("prompts")
@click.option("--seeds", "seeds_path", required=True, type=click.Path(exists=True),
              help="Seed prompts (.jsonl, .csv, .txt or a dataset directory).")
@click.option("--kind", type=click.Choice(["red_team", "helpful"]), required=True,
              help="What sort of prompts to write.")
@click.option("--n", "n", required=True, type=click.IntRange(1), help="New prompts wanted.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              callback=options.out_dir_callback,
              help="Dataset directory to write (rerun the same command to resume).")
@click.option("--threshold", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Cosine similarity at or above which two prompts count as duplicates.")
@click.option("--seeds-per-request", default=6, show_default=True, type=click.IntRange(1))
@click.option("--per-request", default=8, show_default=True, type=click.IntRange(1),
              help="New prompts asked for in each request.")
@click.option("--requests-per-round", default=16, show_default=True, type=click.IntRange(1),
              help="Requests in each batched generate call.")
@click.option("--max-rounds", default=50, show_default=True, type=click.IntRange(1))
@click.option("--template-dir", type=click.Path(file_okay=False), default=None)
@click.option("--overwrite", is_flag=True, help="Discard what --out holds and start again.")
@model_options
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.9, show_default=True, type=click.FloatRange(0))
@click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seed", default=0, show_default=True, type=int)
def prompts(seeds_path, kind, n, out, threshold, seeds_per_request, per_request, requests_per_round, max_rounds,
            template_dir, overwrite, model, backend_kind, batch_size, device, dtype, max_new_tokens,
            temperature, top_p, seed) -> None:
    """Grow a prompt set from seed prompts with the model (self-instruct), without near-duplicates."""
    from cai.data import load_prompts
    from cai.stages.synthetic import SyntheticConfig, run_synthetic_prompts
    from cai.templates import PromptTemplates

    config = SyntheticConfig(kind=kind, n=n, threshold=threshold, seeds_per_request=seeds_per_request,
                             per_request=per_request, requests_per_round=requests_per_round,
                             max_rounds=max_rounds, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, seed=seed)
    templates = PromptTemplates(template_dir)
    seeds = [r.text for r in load_prompts(seeds_path)]
    backend = options.make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    result = run_synthetic_prompts(seeds, out, backend, config=config, templates=templates, overwrite=overwrite)
    print_summary(f"prompts ({kind})", out, result)


@click.command("dedup")
@click.argument("file", type=click.Path(exists=True))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The kept prompts, as .jsonl.")
@click.option("--threshold", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Cosine similarity at or above which two prompts count as duplicates.")
@click.option("--against", type=click.Path(exists=True), default=None,
              help="Also drop prompts that near-duplicate one in this file (e.g. an eval set).")
def dedup(file, out, threshold, against) -> None:
    """Remove exact and near-duplicate prompts from FILE (sentence embeddings, cosine threshold)."""
    from cai.dedup import dedup_file

    print_summary("dedup", out, dedup_file(file, out, threshold=threshold, against=against))


__all__ = ["revisions", "prompts", "dedup"]
