"""`cai constitution validate | show | new | lint`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import click

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


@group.command("lint")
@click.argument("file")
@click.option("--threshold", default=0.85, show_default=True, type=click.FloatRange(0, 1),
              help="Cosine similarity at or above which two principles count as near-duplicates.")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None,
              help="Your template directory, checked too.")
def lint(file: str, threshold: float, template_dir: str | None) -> None:
    """Find near-duplicate principles, missing comparison questions and bad template fields.

    Exits 1 when it finds a problem (2 if the file does not even validate).
    """
    from cai.lint import lint_constitution

    problems = lint_constitution(file, threshold=threshold, template_dir=template_dir)
    for p in problems:
        click.echo(p)
    if problems:
        click.echo(f"{len(problems)} problem(s)", err=True)
        raise SystemExit(1)
    click.echo("no problems found")
