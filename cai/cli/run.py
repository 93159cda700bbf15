"""`cai run`, `cai status`, `cai report`: whole self-improvement rounds."""

from __future__ import annotations

import click


@click.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--rounds", type=click.IntRange(1), default=None, help="Override the config's number of rounds.")
@click.option("--out", "-o", "out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/<name>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out: skip finished stages, resume the interrupted one.")
@click.option("--force", multiple=True, metavar="STAGE",
              help="Redo STAGE (e.g. sft, or round-2/sft) and everything after it, even if its config changed.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report at the end.")
def run(config: str, rounds: int | None, out: str | None, resume: bool, force: tuple[str, ...], report: bool) -> None:
    """Run self-improvement rounds from a YAML CONFIG.

    Each round runs the config's `pipeline:` (default: revisions -> helpful ->
    sft-data -> sft -> preferences -> reward -> rl -> eval; the quickstart runs
    distill -> sft -> contrastive -> dpo -> rehearsal -> eval). `pipeline_from: {2: [...]}` runs
    another pipeline from round 2 on, `stages_from: {2: {dpo: {...}}}` changes a stage's settings from
    round 2 on (round 1 keeps its own), and `models.feedback: policy` makes each round's feedback model
    the policy it starts from (examples/configs/self-improve.yaml). The config is checked (schema, TRL
    fields, constitution, templates, prompt files, the labelled pair set) before any model loads.
    `--resume --rounds N` continues a finished run with more rounds.
    """
    from pathlib import Path

    from cai.cli.options import check_out_dir
    from cai.rounds import load_run_config, run_rounds

    cfg = load_run_config(config)
    run_dir = Path(out) if out else Path("runs") / cfg.name
    check_out_dir(run_dir, run=True)  # before any model loads
    run_rounds(cfg, run_dir, rounds=rounds, resume=resume, force=force, echo=click.echo)
    click.echo(f"run complete: {run_dir}")
    if report:
        from cai.report import REPORT_JSON, write_report

        md, html = write_report(run_dir)
        click.echo(f"report: {html}")
        click.echo(f"        {md}")
        click.echo(f"        {md.parent / REPORT_JSON}")


@click.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="Print the machine-readable status (stages, final_policy, per-round metrics); "
                   "the contract is documented in docs/architecture.md.")
def status(run_dir: str, as_json: bool) -> None:
    """Show where a run stands: each stage's status and time."""
    from cai.rounds import run_status

    if as_json:
        import json

        from cai.rounds import status_json

        click.echo(json.dumps(status_json(run_dir), indent=2))
        return
    for s in run_status(run_dir):
        secs = f"{s['seconds']:.0f}s" if s["seconds"] is not None else ""
        click.echo(f"{s['stage']:<24} {s['status']:<10} {secs:>8}  {s['output'] or ''}")


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--open", "open_", is_flag=True, help="Open report.html in the default browser.")
def report(run_dir: str, open_: bool) -> None:
    """Write RUN_DIR/report.md and a self-contained report.html (verdict per round, plots, samples).

    Reads only the run directory, so it can be rerun at any time, mid-run too.
    """
    from cai.report import open_report, write_report

    from cai.report import REPORT_JSON

    md, html = write_report(run_dir)
    click.echo(f"report: {html}\n        {md}\n        {md.parent / REPORT_JSON}")
    if open_:
        click.echo(f"opening {open_report(html)}")
