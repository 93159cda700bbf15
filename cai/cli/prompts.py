"""`cai prompts list | render | lint`."""

from __future__ import annotations

import json

import click

from cai.errors import UserInputError


@click.group("prompts")
def group() -> None:
    """Inspect and check the Jinja prompt templates."""


@group.command("list")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None)
def list_(template_dir: str | None) -> None:
    """Templates cai uses, where each is found, and the variables it is given."""
    from cai.templates import TEMPLATE_VARIABLES, PromptTemplates

    t = PromptTemplates(template_dir)
    for name, variables in TEMPLATE_VARIABLES.items():
        try:
            origin = t.source(name).origin
        except UserInputError:
            origin = "(missing)"
        click.echo(f"{name:<20} {', '.join(sorted(variables))}\n{'':<20} {origin}")


@group.command("render")
@click.argument("template")
@click.option("--constitution", "-c", default="harmless", show_default=True,
              help="Constitution file or shipped name.")
@click.option("--prompt", "-p", default="How do I pick a lock?", show_default=True, help="The user prompt.")
@click.option("--response", default="Sure, here is how.", show_default=True, help="A response, for critique/revision/preference.")
@click.option("--response-b", default="I can't help with that.", show_default=True, help="The second response, for preference templates.")
@click.option("--critique", default="The response helps with a possibly illegal act.", show_default=True)
@click.option("--principle", "principle_id", default=None, help="Principle id (default: the first).")
@click.option("--question", default="What is 12 + 30?", show_default=True, help="For cot templates.")
@click.option("--no-few-shot", is_flag=True, help="Render without the few-shot exemplars.")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None)
@click.option("--model", default=None, help="Also apply this model's chat template and print the exact text.")
@click.option("--json", "as_json", is_flag=True, help="Print the messages as JSON.")
def render(template: str, constitution: str, prompt: str, response: str, response_b: str, critique: str,
           principle_id: str | None, question: str, no_few_shot: bool, template_dir: str | None,
           model: str | None, as_json: bool) -> None:
    """Print exactly what the model would see for TEMPLATE."""
    from cai.constitution import load_constitution
    from cai.templates import TEMPLATE_VARIABLES, PromptTemplates

    c = load_constitution(constitution)
    t = PromptTemplates(template_dir, constitution=c)
    name = template.removesuffix(".jinja")
    if principle_id:
        try:
            principle = c.principle(principle_id)
        except KeyError:
            raise UserInputError(f"principle '{principle_id}' not in {c.source}; see cai constitution show") from None
    else:
        principle = c.principles[0]
    conversation = [{"role": "user", "content": prompt}]
    context = {
        "prompt": prompt, "response": response, "critique": critique, "principle": principle,
        "few_shot": [] if no_few_shot else list(c.few_shot), "constitution": c,
        "conversation": conversation, "response_a": response, "response_b": response_b,
        "question": principle.comparison_question or "" if name.startswith("preference") else question,
        "examples": [], "hint": "42", "seeds": [prompt], "kind": "red_team", "n": 5,
    }
    provided = TEMPLATE_VARIABLES.get(name, set(context))
    problems = t.lint(name, provided)
    if problems:
        raise UserInputError(problems[0])
    messages = t.render_messages(name, system_prompt=c.system_prompt,
                                 **{k: v for k, v in context.items() if k in provided})
    if model:
        from cai.backends.transformers import TransformersBackend

        click.echo(TransformersBackend(model, progress=False).render(messages), nl=False)
        click.echo("")
    elif as_json:
        click.echo(json.dumps(messages, indent=2, ensure_ascii=False))
    else:
        for m in messages:
            click.echo(f"[[{m['role']}]]\n{m['content']}\n")


@group.command("lint")
@click.option("--template-dir", type=click.Path(file_okay=False), default=None)
@click.option("--constitution", "-c", default=None, help="Also check the templates this constitution names.")
def lint(template_dir: str | None, constitution: str | None) -> None:
    """Reject {single_brace} fields, undefined variables and syntax errors in templates."""
    from cai.constitution import load_constitution
    from cai.templates import PromptTemplates, lint_all

    c = load_constitution(constitution) if constitution else None
    problems = lint_all(PromptTemplates(template_dir, constitution=c))
    for p in problems:
        click.echo(p)
    if problems:
        raise SystemExit(1)
    click.echo("templates ok")
