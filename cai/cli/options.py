"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from cai.backends.openai_scoring import SCORING_CHOICES

F = Callable[..., Any]


def _stack(*decorators: F) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


#: Where the openai-backend flags wait for `make_backend_from_options` (click's ctx.meta is the
#: per-invocation store shared helpers use), so no command's signature carries openai-only settings.
_OPENAI_META = "cai.backend.openai"


def _keep_openai_flag(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta.setdefault(_OPENAI_META, {})[param.name] = value


def openai_flags() -> dict[str, str]:
    """``--scoring`` / ``--tokenizer`` as given to the running command ({} outside one, or when not given)."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(_OPENAI_META, {})) if ctx is not None else {}


def backend_options(batch_size: int = 64, help: str = "Where generation runs.") -> Callable[[F], F]:
    """--backend, --batch-size, --device, --dtype and the openai backend's --scoring and --tokenizer:
    every command that takes --backend declares them through here."""
    return _stack(
        click.option("--backend", "backend_kind", default="transformers", show_default=True,
                     help=f"{help} transformers, vllm, openai (an OpenAI-compatible server), ray or ray:<kind>."),
        click.option("--batch-size", default=batch_size, show_default=True, type=click.IntRange(1),
                     help="Sequences per forward batch."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, mps or auto."),
        click.option("--dtype", default="auto", show_default=True, help="float32, bfloat16, float16 or auto."),
        click.option("--scoring", type=click.Choice(SCORING_CHOICES), default=None, expose_value=False,
                     callback=_keep_openai_flag,
                     help="--backend openai: how the judge's choices are scored (raw completions with a local "
                          "tokenizer, continue_final_message, or plain chat) [default: $CAI_OPENAI_SCORING or auto]."),
        click.option("--tokenizer", default=None, expose_value=False, callback=_keep_openai_flag,
                     help="--backend openai: the served model's tokenizer (a local dir or hub id), for "
                          "scoring=completions and exact token counts [default: $CAI_OPENAI_TOKENIZER]."),
    )


model_options = _stack(
    click.option("--model", "-m", default="smollm2-135m", show_default=True,
                 help="Model spec: 'smollm2-135m' (embedded), a local directory, or a hub id."),
    backend_options(),
)

sampling_options = _stack(
    click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1)),
    click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(0),
                 help="0 for greedy decoding."),
    click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1)),
    click.option("--seed", default=0, show_default=True, type=int),
)

def check_out_dir(out: str | Path, *, run: bool = False) -> None:
    """Refuse an --out that is a file, or a non-empty directory cai did not make, before any model loads.

    A dataset directory is cai's when it holds cai's metadata (``.cai/cai_dataset.json``),
    a run directory (``run=True``) when it holds ``manifest.json``. The dataset writer
    checks the same again when it opens; checking here first means a mistyped --out
    costs nothing instead of a model load (and, for `cai run`, whole stages).
    """
    from cai.data import LEGACY_META, is_cai_dataset
    from cai.errors import DataError
    from cai.rounds.manifest import MANIFEST

    path = Path(out)
    if not path.exists():
        return
    if not path.is_dir():
        raise DataError(f"{path}: is a file, not a directory; choose a directory for --out")
    if (path / MANIFEST).is_file() if run else is_cai_dataset(path):
        return
    # Hidden entries and cai's own half-written files (a kill before the first save) are not the user's.
    ours = {Path(MANIFEST).with_suffix(".tmp").name, LEGACY_META + ".tmp"}
    theirs = sorted(e.name for e in path.iterdir() if not e.name.startswith(".") and e.name not in ours)
    if theirs:
        shown = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
        what = "a cai run directory" if run else "a cai dataset directory"
        raise DataError(f"{path}: not empty and not {what} (it holds {shown}); "
                        "cai writes only into a new or empty --out directory, so choose another one")


def out_dir_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback for a dataset command's --out: `check_out_dir` while the flags are parsed."""
    if value is not None:
        check_out_dir(value)
    return value


output_options = _stack(
    click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
                 callback=out_dir_callback,
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


def make_backend_from_options(model: str, backend_kind: str, batch_size: int, device: str, dtype: str) -> Any:
    """The backend the command's options name (with --scoring / --tokenizer where given)."""
    from cai.backends import make_backend

    extra = openai_flags()
    if extra and backend_kind != "openai":
        from cai.errors import UserInputError

        given = " and ".join(f"--{k}" for k in extra)
        verb = "applies" if len(extra) == 1 else "apply"
        raise UserInputError(f"{given} {verb} to --backend openai only (this command runs --backend {backend_kind})")
    return make_backend(model, kind=backend_kind, batch_size=batch_size, device=device, dtype=dtype, **extra)


def print_summary(title: str, out_dir: str, summary: dict[str, Any]) -> None:
    import json

    click.echo(f"{title}: {out_dir}")
    click.echo(json.dumps(summary, indent=2, default=str))
