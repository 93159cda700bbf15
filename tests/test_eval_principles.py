"""`stages.eval.principles` may name principle ids: checked before any model loads, and the judge uses only them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, model: Path, principles: str) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""name: t
chunk_size: 8
pipeline: [distill, sft, eval]
models: {{policy: {model}, batch_size: 8}}
prompts: {{red_team: {ROOT / "examples/prompts/red_team.jsonl"}, helpful: {ROOT / "examples/prompts/helpful.jsonl"},
          held_out: 2, per_round: 4}}
stages:
  distill: {{max_new_tokens: 8, temperature: 1.0}}
  sft: {{config: {{max_steps: 1, max_length: 128}}}}
  eval: {{max_new_tokens: 4, principles: {principles}}}
""")
    return cfg


@pytest.mark.parametrize("principles, message", [
    ("[no-such-principle]", "unknown principle 'no-such-principle'"),
    ("[]", "stages.eval.principles is an empty list"),
])
def test_bad_principle_ids_are_a_config_error_before_any_model_loads(tmp_path, principles, message):
    # A model path that does not exist: the error must come from the config check, not from loading.
    cfg = _config(tmp_path, tmp_path / "no-model-here", principles)
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-report"])
    assert r.exit_code == 2, r.output
    assert message in r.output and "run.yaml" in r.output
    assert not (tmp_path / "run").exists()


def test_the_judge_uses_only_the_named_principles(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, "[cyber-abuse, privacy]")
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-report"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run/round-1/eval/metrics.json").read_text())
    used = set(metrics["win_rates"]["vs round-0"]["per_principle"])
    assert used and used <= {"cyber-abuse", "privacy"}
