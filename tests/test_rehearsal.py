"""The rehearsal stage: a few SFT steps of the newest policy on the helpful rows alone."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cai.cli.main import cli
from cai.data import read_rows

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, model: Path, pipeline: str,
            rehearsal: str = "{config: {max_steps: 1, max_length: 128}}") -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""name: t
chunk_size: 8
pipeline: {pipeline}
models: {{policy: {model}, batch_size: 8}}
prompts: {{red_team: {ROOT / "examples/prompts/red_team.jsonl"}, helpful: {ROOT / "examples/prompts/helpful.jsonl"},
          held_out: 2, per_round: 6}}
stages:
  distill: {{max_new_tokens: 8, temperature: 1.0}}  # the tiny model greedy-answers nothing
  sft: {{config: {{max_steps: 1, max_length: 128}}}}
  rehearsal: {rehearsal}
  eval: {{max_new_tokens: 4, judge_harmlessness: false}}
""")
    return cfg


def test_rehearsal_trains_the_sft_model_on_helpful_rows_only_and_is_the_final_policy(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, "[distill, sft, rehearsal, eval]")
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-report"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    distilled = read_rows(run / "round-1/distill")
    rehearsed = read_rows(run / "round-1/rehearsal/.cai/rows")
    helpful_ids = {row["id"] for row in distilled if row["set"] == "helpful"}
    assert rehearsed and {row["id"] for row in rehearsed} == helpful_ids  # every helpful row, no red-team row
    summary = json.loads((run / "round-1/rehearsal/training_summary.json").read_text())
    assert summary["base_model"].endswith("round-1/sft")  # it starts from the round's SFT model, not round 0
    assert (run / "round-1/rehearsal/model.safetensors").read_bytes() != (run / "round-1/sft/model.safetensors").read_bytes()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["final_policy"].endswith("round-1/rehearsal")
    metrics = json.loads((run / "round-1/eval/metrics.json").read_text())
    assert "round-1" in metrics["outcome"]


def test_rehearsal_without_helpful_rows_before_it_is_a_config_error(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, "[revisions, helpful, sft-data, sft, rehearsal]",
                  rehearsal="{data: distill}")
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-report"])
    assert r.exit_code == 2 and "stages.rehearsal trains on the helpful rows" in r.output, r.output
