"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Any, Callable

import click

F = Callable[..., Any]


def _stack(*decorators: F) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


model_options = _stack(
    click.option("--model", "-m", default="smollm2-135m", show_default=True,
                 help="Model spec: 'smollm2-135m' (embedded), a local directory, or a hub id."),
    click.option("--backend", "backend_kind", default="transformers", show_default=True,
                 help="Where generation runs."),
    click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1),
                 help="Sequences per forward batch."),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, mps or auto."),
    click.option("--dtype", default="auto", show_default=True, help="float32, bfloat16, float16 or auto."),
)

sampling_options = _stack(
    click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1)),
    click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(0),
                 help="0 for greedy decoding."),
    click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1)),
    click.option("--seed", default=0, show_default=True, type=int),
)

output_options = _stack(
    click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
                 help="Dataset directory to write (rerun the same command to resume)."),
    click.option("--overwrite", is_flag=True, help="Discard what --out holds and start again."),
    click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N prompts."),
    click.option("--chunk-size", default=64, show_default=True, type=click.IntRange(1),
                 help="Prompts processed (and saved) together; a kill loses at most one chunk."),
)


def principles_option(ctx: click.Context, param: click.Parameter, value: str) -> int | str:
    """Callback for --principles: a positive number of principles per pair, or 'all'."""
    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter("give a positive number of principles per pair, or 'all'")
    return n


def make_backend_from_options(model: str, backend_kind: str, batch_size: int, device: str, dtype: str):
    from cai.backends import make_backend

    return make_backend(model, kind=backend_kind, batch_size=batch_size, device=device, dtype=dtype)


def sampling_from_options(max_new_tokens: int, temperature: float, top_p: float, seed: int):
    from cai.backends.base import SamplingParams

    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)


def print_summary(title: str, out_dir: str, summary: dict[str, Any]) -> None:
    import json

    click.echo(f"{title}: {out_dir}")
    click.echo(json.dumps(summary, indent=2, default=str))
