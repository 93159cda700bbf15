"""`cai constitution validate | show | new | lint | try | diff`."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import click

from cai.cli.options import _stack, backend_options, model_options, sampling_options
from cai.errors import UserInputError


@click.group("constitution")
def group() -> None:
    """Write, check and inspect constitutions (YAML or JSON)."""


@group.command("validate")
@click.argument("files", nargs=-1, required=True)
def validate(files: tuple[str, ...]) -> None:
    """Check constitution FILES (paths or shipped names); exit 2 on the first bad one."""
    from cai.constitution import load_constitution

    for f in files:
        c = load_constitution(f)
        click.echo(f"ok  {c.source}: {c.name} v{c.version}, {len(c.principles)} principles, "
                   f"{len(c.few_shot)} few-shot examples")


@group.command("show")
@click.argument("file")
@click.option("--width", default=100, show_default=True, help="Table width in characters.")
def show(file: str, width: int) -> None:
    """Print a constitution as a readable table."""
    from cai.constitution import load_constitution

    c = load_constitution(file)
    click.echo(f"{c.name} v{c.version}  ({c.source})")
    if c.description:
        click.echo(textwrap.fill(c.description, width))
    if c.system_prompt:
        click.echo(f"system prompt: {c.system_prompt}")
    click.echo("")
    id_w = max(len("id"), *(len(p.id) for p in c.principles))
    text_w = max(20, width - id_w - 12)
    click.echo(f"{'id':<{id_w}}  {'weight':>6}  text")
    click.echo(f"{'-' * id_w}  {'-' * 6}  {'-' * text_w}")
    for p in c.principles:
        rows = [("critique", p.critique_request), ("revision", p.revision_request),
                ("compare", p.comparison_question or "(none)")]
        if p.tags:
            rows.append(("tags", ", ".join(p.tags)))
        first = True
        for label, text in rows:
            wrapped = textwrap.wrap(f"{label}: {text}", text_w) or [""]
            for line in wrapped:
                left = f"{p.id:<{id_w}}  {p.weight:>6g}" if first else " " * (id_w + 8)
                click.echo(f"{left}  {line}")
                first = False
        click.echo("")
    click.echo(f"{len(c.principles)} principles, {len(c.few_shot)} few-shot examples, sha256 {c.content_hash[:16]}")


@group.command("new")
@click.argument("name")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="File to write (default: NAME.yaml). Refuses to overwrite.")
def new(name: str, out: str | None) -> None:
    """Write a commented scaffold constitution that validates."""
    from cai.constitution import parse_constitution, scaffold

    path = Path(out or f"{name}.yaml")
    if path.exists():
        raise UserInputError(f"{path}: already exists; choose another --out")
    text = scaffold(name, path.name)
    parse_constitution(text, str(path))  # the scaffold must always validate
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}; edit it, then: cai constitution validate {path}")


_prompt_options = _stack(
    click.option("--prompts", "-p", "prompts_path", default=None,
                 help="Prompt file: .jsonl (prompt or messages), .csv, .txt, or a dataset directory."),
    click.option("--prompt", "prompt_texts", multiple=True, help="A prompt's text (repeatable; after -p's)."),
    click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N prompts."),
)

_workbench_options = _stack(
    click.option("--out", "-o", "out", default=None, type=click.Path(),
                 help="Directory for the HTML page and the JSON document (and, by default, the cache)."),
    click.option("--cache", "cache_dir", default=None, type=click.Path(),
                 help="Cache directory. Default: OUT/cache with --out, else ~/.cache/cai/workbench."),
    click.option("--no-cache", is_flag=True, help="Compute every cell again (the cache is still written)."),
    click.option("--template-dir", type=click.Path(file_okay=False), default=None),
    click.option("--few-shot/--no-few-shot", default=True, show_default=True,
                 help="Put the constitution's exemplars in front of critique and revision prompts."),
    click.option("--retries", default=0, show_default=True, type=click.IntRange(0),
                 help="Re-sample degenerate outputs up to N times (as generate revisions does)."),
    click.option("--critique-max-new-tokens", default=96, show_default=True, type=click.IntRange(1)),
    click.option("--gates/--no-gates", default=True, show_default=True,
                 help="Revision quality gates (copies an exemplar, ignores the prompt)."),
    click.option("--width", default=120, show_default=True, type=click.IntRange(60), help="Terminal width."),
)


def _command_line() -> list[str] | None:
    """The command as typed, when run as `cai` (not from Python)."""
    return ["cai", *sys.argv[1:]] if Path(sys.argv[0]).name == "cai" else None


def _revise_config(seed, max_new_tokens, temperature, top_p, critique_max_new_tokens, few_shot, retries, gates):
    """The stage's own config, built as `cai generate revisions` builds it (so cells match its rows)."""
    from cai.stages.revise import Gates, ReviseConfig, Sampling

    sampling = dict(temperature=temperature, top_p=top_p)
    return ReviseConfig(
        n_revisions=1, few_shot=few_shot, retries=retries, seed=seed,
        response=Sampling(max_new_tokens=max_new_tokens, **sampling),
        critique=Sampling(max_new_tokens=critique_max_new_tokens, **sampling),
        revision=Sampling(max_new_tokens=max_new_tokens, **sampling),
        gates=Gates() if gates else Gates(exemplar_overlap=None, prompt_overlap=False),
    )


def _cache(cache_dir, out, no_cache):
    from cai.models import cache_dir as cai_cache_dir
    from cai.workbench import CellCache

    root = cache_dir or (Path(out) / "cache" if out else cai_cache_dir() / "workbench")
    return CellCache(root, read=not no_cache)


def _lazy_backend(model, backend_kind, batch_size, device, dtype):
    from cai.cli import options
    from cai.workbench import LazyBackend, model_identity

    key = model_identity(model, backend_kind, dtype, device)
    flags = options.openai_flags()
    if flags:  # cells judged with another scoring mode (or tokenizer) are other cells
        key += " [" + ", ".join(f"{k}={v}" for k, v in sorted(flags.items())) + "]"
    return LazyBackend(lambda: options.make_backend_from_options(model, backend_kind, batch_size, device, dtype), key)


def _write_and_show(doc: dict, out: str | None, view: str) -> None:
    """Write the document and its HTML page into --out (when given), then print the terminal view."""
    from cai.workbench import write

    paths = write(doc, out) if out else None
    click.echo(view)
    if paths:
        click.echo(f"\nwrote {paths[1]} and {paths[0]}")


def _templates(c, template_dir):
    from cai.templates import TEMPLATE_VARIABLES, PromptTemplates
    from cai.workbench.matrix import TEMPLATES

    templates = PromptTemplates(template_dir, constitution=c)
    templates.validate({n: TEMPLATE_VARIABLES[n] for n in TEMPLATES})
    return templates


@group.command("try")
@click.argument("constitution")
@_prompt_options
@click.option("--principles", default="all", show_default=True,
              help="Comma-separated principle ids, a number to sample (by weight, seeded), or 'all'.")
@_workbench_options
@model_options
@sampling_options
def try_(constitution, prompts_path, prompt_texts, limit, principles, out, cache_dir, no_cache, template_dir,
         few_shot, retries, critique_max_new_tokens, gates, width, model, backend_kind, batch_size, device, dtype,
         max_new_tokens, temperature, top_p, seed) -> None:
    """See what each principle does: a principles x prompts matrix of critiques, revisions and verdicts.

    Per prompt the initial response; per (principle, prompt) cell one critique-and-revise
    step (exactly as `cai generate revisions` does it), the quality gates' verdict, the
    judge's preference for the revision in both orders, and refusals. Cells are cached:
    edit one principle and rerun, and only its cells are computed again. With --out,
    writes OUT/workbench.html and OUT/workbench.json (schema: docs/workbench.md).
    """
    from cai.constitution import load_constitution
    from cai.workbench import gather_prompts, parse_principles, run_matrix, select_principles, try_document
    from cai.workbench.document import check_out_dir
    from cai.workbench.terminal import try_text

    t0 = time.perf_counter()
    # Every input check first: no model loads for bad input.
    c = load_constitution(constitution)
    chosen = select_principles(c, parse_principles(principles), seed=seed)
    templates = _templates(c, template_dir)
    records = gather_prompts(prompts_path, prompt_texts, limit)
    if out:
        check_out_dir(out)
    config = _revise_config(seed, max_new_tokens, temperature, top_p, critique_max_new_tokens, few_shot, retries,
                            gates)
    cache = _cache(cache_dir, out, no_cache)
    backend = _lazy_backend(model, backend_kind, batch_size, device, dtype)

    m = run_matrix(c, chosen, records, backend, config=config, templates=templates, cache=cache)
    doc = try_document(m, command=_command_line())
    doc["timing"]["wall_s"] = round(time.perf_counter() - t0, 3)
    _write_and_show(doc, out, try_text(doc, width))


@group.command("diff")
@click.argument("a")
@click.argument("b")
@_prompt_options
@click.option("--principles", default="changed", show_default=True,
              help="'changed' (added, removed or edited ones; all when a constitution-wide change reaches every "
                   "cell), 'all', comma-separated ids, or a number sampled from B.")
@_workbench_options
@model_options
@sampling_options
def diff(a, b, prompts_path, prompt_texts, limit, principles, out, cache_dir, no_cache, template_dir, few_shot,
         retries, critique_max_new_tokens, gates, width, model, backend_kind, batch_size, device, dtype,
         max_new_tokens, temperature, top_p, seed) -> None:
    """What changed between constitutions A and B, and what it does on the prompts.

    Principle by principle: added, removed or changed (a word diff of each field). With
    prompts (-p / --prompt), both versions run through the workbench (sharing the cache:
    unchanged cells are computed once) and their revisions and figures are shown side by
    side; from 20 prompts on, refusal and over-refusal rates with Wilson intervals. With
    --out, writes OUT/diff.html and OUT/diff.json.
    """
    from cai.constitution import load_constitution
    from cai.workbench import (
        constitution_diff,
        diff_document,
        diff_principle_ids,
        gather_prompts,
        parse_principles,
        run_diff,
    )
    from cai.workbench.document import check_out_dir
    from cai.workbench.terminal import diff_text, text_diff_lines

    ca, cb = load_constitution(a), load_constitution(b)
    text = constitution_diff(ca, cb)
    ids = diff_principle_ids(ca, cb, text, parse_principles(principles, allow_changed=True), seed=seed)
    ta, tb = _templates(ca, template_dir), _templates(cb, template_dir)
    if prompts_path is None and not prompt_texts:
        click.echo("\n".join(text_diff_lines(text, width)))
        click.echo("\n(give prompts with -p FILE or --prompt TEXT to see what the change does)")
        return
    records = gather_prompts(prompts_path, prompt_texts, limit)
    if out:
        check_out_dir(out)
    if not ids:
        click.echo("\n".join(text_diff_lines(text, width)))
        click.echo("\nnothing to run: no principle changed in a way that reaches the prompts")
        return
    config = _revise_config(seed, max_new_tokens, temperature, top_p, critique_max_new_tokens, few_shot, retries,
                            gates)
    cache = _cache(cache_dir, out, no_cache)
    backend = _lazy_backend(model, backend_kind, batch_size, device, dtype)
    run = run_diff(ca, cb, ids, records, backend, config=config, templates_a=ta, templates_b=tb, cache=cache,
                   text=text)
    doc = diff_document(run, command=_command_line())
    _write_and_show(doc, out, diff_text(doc, width))


@group.command("lint")
@click.argument("file")
@click.option("--threshold", default=0.85, show_default=True, type=click.FloatRange(0, 1),
              help="Cosine similarity at or above which two principles count as near-duplicates.")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None,
              help="Your template directory, checked too.")
@click.option("--model", "-m", default=None,
              help="Also run the workbench with this model (e.g. smollm2-135m) and report unhealthy principles: "
                   "mostly rejected by the gates, at chance for the judge, or never changing the answer.")
@backend_options()
@_prompt_options
@click.option("--principles", default="all", show_default=True,
              help="With --model: comma-separated ids, a number to sample, or 'all'.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(),
              help="With --model: the workbench cache (default ~/.cache/cai/workbench; shared with `try`).")
@click.option("--seed", default=0, show_default=True, type=int)
def lint(file: str, threshold: float, template_dir: str | None, model, backend_kind, batch_size, device, dtype,
         prompts_path, prompt_texts, limit, principles, cache_dir, seed) -> None:
    """Find near-duplicate principles, missing comparison questions and bad template fields.

    With --model, also per-principle health on prompts (-p / --prompt; default: a few
    built-in harmful and ordinary requests), from the same cells `try` computes.
    Exits 1 when it finds a problem (2 if the file does not even validate).
    """
    from cai.lint import lint_constitution

    health_run = None
    if model is not None:  # every input check before any work
        from cai.constitution import load_constitution
        from cai.workbench import gather_prompts, parse_principles, select_principles
        from cai.workbench.selection import default_prompts

        c = load_constitution(file)
        chosen = select_principles(c, parse_principles(principles), seed=seed)
        records = gather_prompts(prompts_path, prompt_texts, limit) if (prompts_path or prompt_texts) \
            else default_prompts()[:limit]
        health_run = (c, chosen, records)
    elif prompts_path or prompt_texts:
        raise UserInputError("--prompts/--prompt only make sense with --model (per-principle health)")

    problems = lint_constitution(file, threshold=threshold, template_dir=template_dir)
    for p in problems:
        click.echo(p)
    if health_run is not None:
        from cai.errors import TemplateError
        from cai.workbench import run_matrix, try_document

        c, chosen, records = health_run
        try:
            templates = _templates(c, template_dir)
        except TemplateError as e:
            click.echo(f"skipping the --model check until the templates are fixed ({e})", err=True)
            raise SystemExit(1) from None
        from cai.stages.revise import ReviseConfig

        config = ReviseConfig(n_revisions=1, seed=seed)  # `try`'s defaults, so the cells are the same
        m = run_matrix(c, chosen, records, _lazy_backend(model, backend_kind, batch_size, device, dtype),
                       config=config, templates=templates, cache=_cache(cache_dir, None, False))
        doc = try_document(m)
        where = c.source or c.name
        found = [f"{where}: principle '{h['principle_id']}': {p}" for h in doc["health"] for p in h["problems"]]
        for p in found:
            click.echo(p)
        click.echo(f"health on {len(records)} prompts with {m.model}: {m.counts['cells']} cells "
                   f"({m.counts['cells_cached']} from the cache) in {m.timing['total_s']:.1f} s", err=True)
        problems += found
    if problems:
        click.echo(f"{len(problems)} problem(s)", err=True)
        raise SystemExit(1)
    click.echo("no problems found")
