"""`cai train ...` CLI and the example trainer configs."""

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


CONFIGS = Path(__file__).parent.parent / "examples" / "configs"
TRAINERS = ["sft", "reward", "ppo", "rloo", "grpo", "dpo"]


def _config_class(name: str):
    import trl
    from trl.experimental.ppo import PPOConfig

    return {"sft": trl.SFTConfig, "reward": trl.RewardConfig, "ppo": PPOConfig, "rloo": trl.RLOOConfig,
            "grpo": trl.GRPOConfig, "dpo": trl.DPOConfig}[name]


@pytest.mark.parametrize("name", TRAINERS)
def test_example_config_builds_its_trl_config(name, tmp_path):
    """Every key in examples/configs/<name>.yaml is a field of TRL's config (so a TRL rename fails here)."""
    from cai.training.config import build_config, load_config_file

    path = CONFIGS / f"{name}.yaml"
    data = load_config_file(path)
    assert data, f"{path} is empty"
    cfg, settings = build_config(_config_class(name), tmp_path, config_file=path)
    for key, value in data.items():
        assert getattr(cfg, key) == value, key


def test_example_configs_listed_in_readme():
    readme = (CONFIGS.parent / "README.md").read_text()
    for name in TRAINERS:
        assert f"configs/{name}.yaml" in readme


def _sft_dir(path: Path) -> Path:
    w = DatasetWriter(path, kind="sft", fingerprint={"t": 1})
    w.write([{"id": f"r{i}", "messages": [{"role": "user", "content": f"Hi {i}"},
                                          {"role": "assistant", "content": f"Hello {i}."}]} for i in range(2)])
    w.finalize({})
    return path


def test_cli_wrong_kind_exits_2_with_fitting_command(tmp_path):
    data = _sft_dir(tmp_path / "sft")
    result = CliRunner().invoke(cli, ["train", "dpo", "--data", str(data), "--model", "nowhere/",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "cai train sft" in result.output and "Traceback" not in result.output


def test_cli_bad_config_key_exits_2(tmp_path):
    data = _sft_dir(tmp_path / "sft")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    result = CliRunner().invoke(cli, ["train", "sft", "--data", str(data), "--out", str(tmp_path / "o"),
                                      "--config", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml: unknown SFTConfig field 'learning_rat'; did you mean learning_rate?" in result.output


def test_cli_sft_runs_and_flags_override_yaml(tmp_path, tiny_model_dir):
    data = _sft_dir(tmp_path / "sft")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_steps: 50\nlearning_rate: 0.01\nmax_length: 64\n")
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "sft", "--data", str(data), "--model", str(tiny_model_dir),
                                      "--out", str(out), "--config", str(cfg), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 1 and summary["config"]["learning_rate"] == 0.01
    assert "model saved" in result.output


def test_cli_sft_decision_weighting_flags(tmp_path, tiny_model_dir):
    data = _sft_dir(tmp_path / "sft")
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "sft", "--data", str(data), "--model", str(tiny_model_dir),
                                      "--out", str(out), "--max-steps", "1", "--max-length", "64",
                                      "--decision-tokens", "2", "--decision-weight", "20"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["decision_tokens"] == 2 and summary["decision_weight"] == 20.0
    bad = CliRunner().invoke(cli, ["train", "sft", "--data", str(data), "--out", str(tmp_path / "o2"),
                                   "--decision-weight", "0.5"])
    assert bad.exit_code == 2 and "--decision-weight" in bad.output


def test_cli_average_tail_flag(tmp_path, tiny_model_dir):
    data = _sft_dir(tmp_path / "sft")
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "sft", "--data", str(data), "--model", str(tiny_model_dir),
                                      "--out", str(out), "--max-steps", "4", "--max-length", "64",
                                      "--average-tail", "0.5"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["weight_averaging"] == {"average_tail": 0.5, "averaged_from_step": 3, "averaged_steps": 2}
    bad = CliRunner().invoke(cli, ["train", "dpo", "--data", str(data), "--out", str(tmp_path / "o2"),
                                   "--average-tail", "1"])
    assert bad.exit_code == 2 and "--average-tail" in bad.output


def test_cli_sft_too_short_max_length_is_one_line(tmp_path, tiny_model_dir):
    data = _sft_dir(tmp_path / "sft")
    result = CliRunner().invoke(cli, ["train", "sft", "--data", str(data), "--model", str(tiny_model_dir),
                                      "--out", str(tmp_path / "o"), "--max-length", "8"])
    assert result.exit_code == 2 and "raise --max-length" in result.output
