"""`prompts.validation`: a seeded slice of the training sets held out to choose settings on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.errors import UserInputError
from cai.rounds.config import load_run_config
from cai.rounds.context import RunResources


def _prompts(path: Path, prefix: str, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"{prefix} question {i}?"}) + "\n" for i in range(n)))
    return path


def _split(tmp_path: Path, **prompts: object) -> RunResources:
    red = _prompts(tmp_path / "red.jsonl", "red", 30)
    helpful = _prompts(tmp_path / "helpful.jsonl", "helpful", 25)
    extra = "".join(f", {k}: {v}" for k, v in prompts.items())
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"pipeline: [helpful]\nprompts: {{red_team: {red}, helpful: {helpful}{extra}}}\n")
    return RunResources(load_run_config(cfg_path), tmp_path / "run", progress=False)


def _texts(records) -> list[str]:
    return [r.text for r in records]


def test_validation_slice_is_disjoint_from_training_and_leaves_eval_as_it_was(tmp_path):
    plain = _split(tmp_path, held_out=4)
    with_val = _split(tmp_path, held_out=4, validation=5)
    tr_red, tr_help, ev_red, ev_help = with_val.prompt_split()
    val_red, val_help = with_val.validation_split()
    assert len(val_red) == len(val_help) == 5
    assert len(tr_red) == 30 - 4 - 5 and len(tr_help) == 25 - 4 - 5
    assert not set(_texts(val_red)) & set(_texts(tr_red)) and not set(_texts(val_red)) & set(_texts(ev_red))
    assert not set(_texts(val_help)) & set(_texts(tr_help))
    # Turning validation on moves prompts out of training only: the eval split is the same.
    p_red, p_help, p_ev_red, p_ev_help = plain.prompt_split()
    assert _texts(p_ev_red) == _texts(ev_red) and _texts(p_ev_help) == _texts(ev_help)
    assert set(_texts(p_red)) == set(_texts(tr_red)) | set(_texts(val_red))
    assert plain.validation_split() == ([], [])


def test_validation_larger_than_the_training_set_is_a_clear_error(tmp_path):
    res = _split(tmp_path, held_out=4, validation=40)
    with pytest.raises(UserInputError, match="validation=40"):
        res.prompt_split()


def test_a_run_never_trains_on_the_validation_slice_and_eval_reports_it(tmp_path, tiny_model_dir):
    from click.testing import CliRunner

    from cai.cli.main import cli
    from cai.data import read_rows

    red = _prompts(tmp_path / "red.jsonl", "red", 12)
    helpful = _prompts(tmp_path / "helpful.jsonl", "helpful", 12)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""name: t
chunk_size: 8
pipeline: [distill, sft, eval]
models: {{policy: {tiny_model_dir}, batch_size: 8}}
prompts: {{red_team: {red}, helpful: {helpful}, held_out: 2, validation: 3}}
stages:
  distill: {{max_new_tokens: 4}}
  sft: {{config: {{max_steps: 1, max_length: 128}}}}
  eval: {{max_new_tokens: 4, judge_harmlessness: false}}
""")
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-report"])
    assert r.exit_code == 0, r.output
    res = RunResources(load_run_config(cfg), tmp_path / "run", progress=False)
    val_red, val_helpful = res.validation_split()
    trained = {row["source_prompt"] for row in read_rows(tmp_path / "run/round-1/distill")}
    assert trained and not trained & set(_texts(val_red + val_helpful))
    metrics = json.loads((tmp_path / "run/round-1/eval/metrics.json").read_text())
    assert set(metrics["validation"]) == {"round-0", "round-1"}
    for figs in metrics["validation"].values():
        assert figs["red_team_refusal"]["n"] == 3 and figs["benign_refusal"]["n"] == 3
    # The eval figures stay on the held-out eval prompts, not the validation slice.
    assert metrics["outcome"]["round-1"]["red_team_refusal"]["n"] == 2
