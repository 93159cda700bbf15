"""`cai generate ...`: the data-making stages. Each subcommand lives in its own module."""

from __future__ import annotations

import click

from cai.cli.config_options import build_config, config_options, pop_config_flags
from cai.cli.options import make_backend_from_options, model_options, output_options, print_summary
from cai.stages.responses import ResponsesConfig


@click.group("generate")
def group() -> None:
    """Generate datasets: responses, revisions, preferences, distill, contrastive pairs, chain-of-thought, prompts."""


@group.command("responses")
@click.option("--prompts", "-p", "prompts_path", required=True, type=click.Path(exists=True),
              help="Prompt set: .jsonl (prompt or messages), .csv, .txt, or a dataset directory.")
@click.option("--constitution", "-c", default=None, help="Constitution whose system prompt to use.")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None)
@model_options
@config_options(ResponsesConfig)
@output_options
def responses(prompts_path, constitution, template_dir, model, backend_kind, batch_size, device, dtype,
              out, overwrite, limit, chunk_size, **flags) -> None:
    """Sample one response per prompt from a model; writes a resumable dataset directory.

    Every ResponsesConfig field is a flag (and a key of --config FILE.yaml).
    """
    from cai.constitution import load_constitution
    from cai.data import load_prompts
    from cai.stages.responses import run_responses
    from cai.templates import TEMPLATE_VARIABLES, PromptTemplates

    config = build_config(ResponsesConfig, *pop_config_flags(flags))
    c = load_constitution(constitution) if constitution else None
    templates = PromptTemplates(template_dir, constitution=c)
    templates.validate({"initial_response": TEMPLATE_VARIABLES["initial_response"]})  # before the model loads
    records = load_prompts(prompts_path, limit=limit)
    backend = make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    result = run_responses(records, out, backend, params=config.sampling(), templates=templates, constitution=c,
                           overwrite=overwrite, chunk_size=chunk_size,
                           extra_provenance={"prompts": str(prompts_path)})
    print_summary("responses", out, result)


from cai.cli.preferences import preferences as _preferences  # noqa: E402

group.add_command(_preferences)

from cai.cli.revisions import prompts as _prompts, revisions as _revisions  # noqa: E402

group.add_command(_revisions)
group.add_command(_prompts)

from cai.cli.cot import cot as _cot  # noqa: E402

group.add_command(_cot)

from cai.cli.distill import contrastive as _contrastive, distill as _distill  # noqa: E402

group.add_command(_distill)
group.add_command(_contrastive)
