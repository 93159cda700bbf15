"""`cai data ...`: inspect and export dataset directories."""

from __future__ import annotations

import json

import click


@click.group("data")
def group() -> None:
    """Inspect, export and clean datasets."""


@group.command("info")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def info(directory: str) -> None:
    """Kind, counts and provenance of a cai dataset directory."""
    from cai.data import read_meta

    meta = read_meta(directory)
    click.echo(json.dumps({k: meta[k] for k in ("kind", "status", "counts", "summary") if k in meta}, indent=2))


@group.command("export")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, help="Output file or directory.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "hf"]), default="parquet", show_default=True,
              help="hf writes a datasets save_to_disk directory.")
@click.option("--push-to-hub", default=None, metavar="REPO_ID", help="Also push to the Hub (needs network and a token).")
def export(directory: str, out: str, fmt: str, push_to_hub: str | None) -> None:
    """Export a dataset directory's rows for other tools."""
    from cai.data import export_dataset, to_hf_dataset

    path = export_dataset(directory, out, fmt=fmt)
    click.echo(f"wrote {path}")
    if push_to_hub:
        to_hf_dataset(directory).push_to_hub(push_to_hub)
        click.echo(f"pushed to {push_to_hub}")


from cai.cli.revisions import dedup as _dedup  # noqa: E402

group.add_command(_dedup)
