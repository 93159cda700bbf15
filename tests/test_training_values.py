"""TRL field values checked before any model loads, YAML strings coerced as TRL does, and reproducible training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import one_torch_thread

from cai.cli.main import cli
from cai.data import DatasetWriter


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def _dataset(path: Path, kind: str, rows: list[dict]) -> Path:
    w = DatasetWriter(path, kind=kind, fingerprint={"t": kind})
    w.write(rows)
    w.finalize({})
    return path


@pytest.fixture
def sft_dir(tmp_path) -> Path:
    return _dataset(tmp_path / "sft", "sft", [
        {"id": f"r{i}", "messages": [{"role": "user", "content": f"Hi {i}"},
                                     {"role": "assistant", "content": f"Hello there, number {i}."}]}
        for i in range(4)])


@pytest.fixture
def pref_dir(tmp_path) -> Path:
    return _dataset(tmp_path / "pref", "preference", [
        {"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
         "chosen": [{"role": "assistant", "content": "A helpful answer."}],
         "rejected": [{"role": "assistant", "content": "Go away."}], "p_chosen": [0.9, 0.6, 0.8, 0.7, 0.95, 0.55][i]}
        for i in range(6)])


@pytest.mark.parametrize("line, message", [
    ('max_steps: "six"', "field 'max_steps' expects a whole number, got 'six'"),
    ("per_device_train_batch_size: 0", "field 'per_device_train_batch_size' must be at least 1, got 0"),
    ("learning_rate: -0.5", "field 'learning_rate' must be above 0, got -0.5"),
    ("lr_scheduler_type: cosin", "field 'lr_scheduler_type' expects one of linear, cosine"),
    ("bf16: maybe", "field 'bf16' expects true or false"),
])
def test_bad_value_in_yaml_is_one_line_exit_2_before_the_model_loads(line, message, sft_dir, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(line + "\n")
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["train", "sft", "--data", str(sft_dir), "--model", "no-such-model/",
                                 "--out", str(out), "--config", str(cfg)])
    assert r.exit_code == 2, r.output
    assert f"bad.yaml: SFTConfig {message}" in r.output and "Traceback" not in r.output
    assert "cosin" not in line or "did you mean cosine?" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_bad_value_from_a_flag_and_in_a_run_config_section(sft_dir, tmp_path):
    from cai.training import TrainingConfigError, check_config_fields, train_sft

    with pytest.raises(TrainingConfigError, match="options: SFTConfig field 'max_steps' expects a whole number"):
        train_sft(sft_dir, "no-such-model/", tmp_path / "o", max_steps="six")
    with pytest.raises(TrainingConfigError, match=r"run\.yaml: stages\.rl\.config: PPOConfig field 'kl_coef' must"):
        check_config_fields("ppo", {"kl_coef": -1}, "run.yaml: stages.rl.config")
    with pytest.raises(TrainingConfigError, match=r"GRPOConfig: generation_batch_size \(4\) must be divisible"):
        check_config_fields("grpo", {"num_generations": 3, "per_device_train_batch_size": 4}, "run.yaml")


def test_yaml_strings_are_coerced_as_trl_does(tmp_path):
    from trl import DPOConfig

    from cai.training.config import build_config

    cfg_file = tmp_path / "c.yaml"
    # PyYAML reads 1e-4 (no dot) as a string; TRL's parser makes it a float, and so do we.
    cfg_file.write_text('learning_rate: 1e-4\nmax_steps: "3"\nbf16: "false"\nloss_type: [sigmoid]\n'
                        "warmup_steps: \"2\"\nlr_scheduler_type: cosine\nseed: 7.0\n")
    cfg, settings = build_config(DPOConfig, tmp_path, config_file=cfg_file)
    assert settings["learning_rate"] == 1e-4 and isinstance(settings["learning_rate"], float)
    assert (cfg.learning_rate, cfg.max_steps, cfg.bf16, cfg.seed) == (1e-4, 3, False, 7)
    assert cfg.loss_type == ["sigmoid"] and isinstance(cfg.seed, int)


def _tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("command, extra", [("reward", []), ("sft", []), ("sft", ["--lora"])])
def test_two_identical_runs_give_identical_weights(command, extra, sft_dir, pref_dir, tiny_model_dir, tmp_path):
    """The reward head and a LoRA adapter start from fresh random weights: seeded before the model loads."""
    import torch

    data = pref_dir if command == "reward" else sft_dir
    outs = [tmp_path / f"{command}-{i}" for i in (1, 2)]
    for out in outs:
        r = CliRunner().invoke(cli, ["train", command, "--data", str(data), "--model", str(tiny_model_dir),
                                     "--out", str(out), "--max-steps", "2", "--learning-rate", "1e-3",
                                     "--max-length", "64", *extra])
        assert r.exit_code == 0, r.output
    a, b = (_tensors(o) for o in outs)
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])], "two identical runs trained different weights"
    if command == "reward":
        assert any(k.startswith("score") for k in a)
        s1, s2 = (json.loads((o / "training_summary.json").read_text()) for o in outs)
        assert s1["eval"] == s2["eval"] and s1["final_loss"] == s2["final_loss"]


def test_cai_run_refuses_a_bad_trainer_value_before_anything_runs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"name: chk\nconstitution: {root / 'tests/fixtures/tiny_constitution.yaml'}\n"
        "pipeline: [revisions, helpful, sft-data, sft]\n"
        f"prompts: {{red_team: {root / 'examples/prompts/red_team.jsonl'}, "
        f"helpful: {root / 'examples/prompts/helpful.jsonl'}, held_out: 2, per_round: 4}}\n"
        "stages:\n  sft: {config: {learning_rate: -0.5}}\n")
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "out"), "--no-report"])
    assert r.exit_code == 2, r.output
    assert "run.yaml: stages.sft.config: SFTConfig field 'learning_rate' must be above 0" in r.output
    assert not (tmp_path / "out").exists()
