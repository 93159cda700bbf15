"""`--launcher accelerate`: the relaunch command line, the shipped accelerate configs, and a real 2-process launch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

from cai.errors import CaiError, UserInputError
from cai.training.launch import (
    LAUNCHED_ENV,
    build_accelerate_argv,
    launch_with_accelerate,
    read_accelerate_config,
    strip_launcher_args,
)

CONFIGS = Path(__file__).parent.parent / "examples" / "accelerate"


def test_strip_launcher_args_both_spellings():
    argv = ["train", "sft", "--data", "d", "--launcher", "accelerate", "--accelerate-config=x.yaml", "--out", "o"]
    assert strip_launcher_args(argv) == ["train", "sft", "--data", "d", "--out", "o"]
    assert strip_launcher_args(["train", "--launcher=accelerate", "--accelerate-config", "x", "sft"]) == ["train", "sft"]


def test_build_argv_reruns_the_same_command(tmp_path):
    cfg = CONFIGS / "ddp.yaml"
    argv = build_accelerate_argv(
        ["train", "sft", "-d", "data", "-o", "out", "--launcher", "accelerate", "--accelerate-config", str(cfg)],
        cfg, machine_rank=1, main_process_ip="10.0.0.1", num_processes=16,
    )
    assert argv == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
        "--num_processes", "16", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
        "--module", "cai.cli.main", "train", "sft", "-d", "data", "-o", "out",
    ]
    with pytest.raises(UserInputError, match="unknown accelerate override"):
        build_accelerate_argv(["train"], cfg, gpus=2)
    with pytest.raises(UserInputError, match="not found"):
        build_accelerate_argv(["train"], tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: MULTI_GPU\n")
    with pytest.raises(UserInputError, match="missing compute_environment"):
        read_accelerate_config(bad)


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("zero3", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_shipped_configs_load_in_accelerate(name, kind):
    path = CONFIGS / f"{name}.yaml"
    data = read_accelerate_config(path)
    assert data["distributed_type"] == kind and data["num_machines"] == 1
    # accelerate's own loader rejects unknown keys, so a renamed field fails here.
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.distributed_type.value == kind
    if name == "zero3":
        assert cfg.deepspeed_config["zero_stage"] == 3 and cfg.deepspeed_config["zero3_save_16bit_model"]
    if name == "fsdp":
        assert cfg.fsdp_config["fsdp_version"] == 2
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_real_launch_runs_cai_in_two_processes(capfd, monkeypatch):
    monkeypatch.delenv(LAUNCHED_ENV, raising=False)
    rc = launch_with_accelerate(["--version", "--launcher", "accelerate"], CONFIGS / "ddp.yaml", num_processes=2)
    out = capfd.readouterr().out
    assert rc == 0 and out.count("cai, version") == 2
    monkeypatch.setenv(LAUNCHED_ENV, "accelerate")
    with pytest.raises(CaiError, match="already running under accelerate"):
        launch_with_accelerate(["--version"], CONFIGS / "ddp.yaml")


def test_train_launcher_accelerate_needs_a_config_file():
    from click.testing import CliRunner

    from cai.cli.main import cli

    r = CliRunner().invoke(cli, ["train", "--launcher", "accelerate", "sft", "--data", "x", "--out", "y"])
    assert r.exit_code == 2 and "--accelerate-config" in r.output and "Traceback" not in r.output
