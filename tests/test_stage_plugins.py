"""A stage from outside the package, registered as a user's package would (an entry point), in `cai run`."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import install_entry_point_plugin

from cai.cli.main import cli
from cai.data import read_jsonl
from cai.rounds import spec

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A toy stage: the length of each red-team prompt, one row per prompt; fails on request to test resume."""
import os
from pathlib import Path
from pydantic import BaseModel, ConfigDict
from cai.rounds.spec import RoundStage
from cai.stages.runner import ChunkResult, DatasetJob, run_dataset


class LengthsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: int = 1


def run(ctx):
    calls = Path(os.environ["TOY_CALLS"])
    def process(chunk):
        with calls.open("a") as f:
            f.write("".join(r.id + "\\n" for r in chunk))
        if os.environ.get("TOY_FAIL_AFTER") and len(calls.read_text().split()) > int(os.environ["TOY_FAIL_AFTER"]):
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-stage
        return ChunkResult(rows=[{"id": r.id, "prompt": r.text, "length": len(r.text) * ctx.section.scale}
                                 for r in chunk])
    job = DatasetJob(kind="toy", fingerprint={"scale": ctx.section.scale}, process=process, title="toy", desc="toy")
    return run_dataset(ctx.prompts("red_team"), ctx.out, job, overwrite=ctx.fresh, chunk_size=ctx.cfg.chunk_size,
                       progress=False)["counts"]


STAGE = RoundStage(name="toy-lengths", run=run, config=LengthsConfig, uses=("prompts",))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    install_entry_point_plugin(tmp_path / "site", monkeypatch, package="toy_plugin", source=PLUGIN,
                               group="cai.stages", entry="toy = toy_plugin:STAGE")
    spec.stage_registry(rescan=True)
    yield tmp_path
    spec._REGISTRY.pop("toy-lengths", None)
    sys.modules.pop("toy_plugin", None)


def write_config(path: Path, scale: int = 1) -> Path:
    path.write_text(textwrap.dedent(f"""\
        name: toy
        chunk_size: 4
        constitution: {ROOT / "tests/fixtures/tiny_constitution.yaml"}
        pipeline: [toy-lengths]
        prompts: {{red_team: {ROOT / "examples/prompts/red_team.jsonl"}, helpful: {ROOT / "examples/prompts/helpful.jsonl"},
                  held_out: 2, per_round: 10}}
        stages:
          toy_lengths: {{scale: {scale}}}
        """))
    return path


def test_plugin_stage_runs_in_cai_run_and_resumes_without_loss_or_duplicates(plugin, monkeypatch):
    assert "toy-lengths" in spec.stage_registry()
    calls = plugin / "calls.txt"
    monkeypatch.setenv("TOY_CALLS", str(calls))
    monkeypatch.setenv("TOY_FAIL_AFTER", "4")  # the second chunk is interrupted
    cfg = write_config(plugin / "run.yaml")
    out = plugin / "run"
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(out), "--no-report"])
    assert r.exit_code != 0
    rows = list(read_jsonl(out / "round-1/toy-lengths/data.jsonl"))
    assert len(rows) == 4  # the first chunk was saved
    assert json.loads((out / "manifest.json").read_text())["stages"]["round-1/toy-lengths"]["status"] == "running"

    monkeypatch.delenv("TOY_FAIL_AFTER")
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(out), "--resume", "--no-report"])
    assert r.exit_code == 0, r.output
    assert "[round-1/toy-lengths] resuming" in r.output
    rows = list(read_jsonl(out / "round-1/toy-lengths/data.jsonl"))
    ids = [x["id"] for x in rows]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert all(x["length"] == len(x["prompt"]) for x in rows)
    # the saved chunk was not processed again: 4 + 4 (interrupted) + 6 calls in all
    assert len(calls.read_text().split()) == 14

    # Its config section is validated like a built-in one (file:line, exit 2) ...
    bad = write_config(plugin / "bad.yaml").read_text().replace("scale: 1", "scael: 1")
    (plugin / "bad.yaml").write_text(bad)
    r = CliRunner().invoke(cli, ["run", str(plugin / "bad.yaml"), "--out", str(plugin / "run2")])
    assert r.exit_code == 2 and "bad.yaml:8: field 'stages.toy_lengths.scael': unknown key" in r.output
    # ... and a changed section is refused on resume unless forced.
    r = CliRunner().invoke(cli, ["run", str(write_config(plugin / "s2.yaml", scale=2)), "--out", str(out),
                                 "--resume", "--no-report"])
    assert r.exit_code == 2 and "--force toy-lengths" in r.output


def test_unknown_pipeline_stage_is_a_one_line_error(tmp_path):
    cfg = write_config(tmp_path / "run.yaml").read_text().replace("[toy-lengths]", "[revisions, nope]")
    (tmp_path / "run.yaml").write_text(cfg.replace("  toy_lengths: {scale: 1}\n", "  {}\n"))
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "unknown stage 'nope'" in r.output and "known stages:" in r.output


def test_input_order_is_checked(tmp_path):
    text = write_config(tmp_path / "run.yaml").read_text().replace("[toy-lengths]", "[contrastive, distill]")
    (tmp_path / "run.yaml").write_text(text.replace("  toy_lengths: {scale: 1}\n", "  {}\n"))
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "stage 'contrastive' reads 'distill', which must come before it" in r.output


def test_sft_without_a_data_stage_is_refused(tmp_path):
    text = write_config(tmp_path / "run.yaml").read_text().replace("[toy-lengths]", "[helpful, sft]")
    (tmp_path / "run.yaml").write_text(text.replace("  toy_lengths: {scale: 1}\n", "  {}\n"))
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "stages.sft trains on the rows of distill or sft-data" in r.output
