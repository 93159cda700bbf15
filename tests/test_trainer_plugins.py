"""A trainer from outside the package, registered as a user's package would (an entry point), trained for real."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import install_entry_point_plugin, one_torch_thread

from cai.data import DatasetWriter

#: A user's package: KTO (TRL core) on cai's preference rows, each pair split into a good and a bad example.
PLUGIN = '''
from cai.training import TrainerSpec
from cai.training.dpo import with_reference
from cai.training.reward import preference_rows


def kto_rows(raw, job):
    out = []
    for row in preference_rows(raw, job.where, keep_soft=False):
        out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    return out


SPEC = TrainerSpec(
    name="kto", config_class="trl:KTOConfig", trainer_class="trl:KTOTrainer", data_kind="preference",
    defaults={"max_length": 64, "learning_rate": 1e-4}, rows=kto_rows, build=with_reference,
    summary=lambda trainer, job: {"examples": len(job.rows)},
)
'''


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    from cai.training import spec

    install_entry_point_plugin(tmp_path / "site", monkeypatch, package="kto_plugin", source=PLUGIN,
                               group="cai.trainers", entry="kto = kto_plugin:SPEC")
    spec.trainer_registry(rescan=True)
    yield tmp_path
    spec._REGISTRY.pop("kto", None)
    sys.modules.pop("kto_plugin", None)


@pytest.fixture
def pref_dir(tmp_path) -> Path:
    w = DatasetWriter(tmp_path / "pref", kind="preference", fingerprint={"t": 1})
    w.write([{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
              "chosen": [{"role": "assistant", "content": "A helpful answer."}],
              "rejected": [{"role": "assistant", "content": "Go away."}], "p_chosen": 0.8} for i in range(4)])
    w.finalize({})
    return tmp_path / "pref"


def test_plugin_trainer_is_registered_and_trains(plugin, pref_dir, tiny_model_dir):
    import torch

    from cai.models import load_model
    from cai.training import check_config_fields, get_trainer, train, trainer_registry
    from cai.training.spec import commands_for_kind

    assert "kto" in trainer_registry() and get_trainer("kto").config_cls().__name__ == "KTOConfig"
    assert "cai train kto" in commands_for_kind("preference")
    check_config_fields("kto", {"desirable_weight": 1.0}, "x.yaml")  # its config's own fields
    before = {k: v.clone() for k, v in load_model(str(tiny_model_dir), device="cpu").model.state_dict().items()}
    result = train("kto", pref_dir, str(tiny_model_dir), plugin / "kto-out", max_steps=2)
    summary = json.loads((result.path / "training_summary.json").read_text())
    assert summary["trainer"] == "kto" and summary["steps"] == 2 and summary["examples"] == 8
    assert summary["config_class"] == "KTOConfig" and summary["data"]["rows_used"] == 4
    after = load_model(str(result.path), device="cpu").model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


def test_plugin_trainer_errors_before_models_load(plugin, pref_dir, tmp_path):
    from cai.errors import DataError
    from cai.training import TrainingConfigError, train

    with pytest.raises(TrainingConfigError, match="unknown KTOConfig field 'desirable_weigth'; did you mean"):
        train("kto", pref_dir, "no-such-model/", tmp_path / "x", desirable_weigth=2.0)
    sft = DatasetWriter(tmp_path / "sft", kind="sft", fingerprint={"t": 1})
    sft.finalize({})
    with pytest.raises(DataError, match="`cai train kto` needs 'preference' rows"):
        train("kto", tmp_path / "sft", "no-such-model/", tmp_path / "x")


def test_duplicate_trainer_name_refused():
    from cai.training import TrainerSpec, register_trainer

    with pytest.raises(ValueError, match="already registered"):
        register_trainer(TrainerSpec(name="sft", config_class="trl:SFTConfig", trainer_class="trl:SFTTrainer",
                                     data_kind="sft", rows=lambda raw, job: raw))


def test_plugin_trainer_gets_a_cai_train_command_with_its_trl_flags(plugin, pref_dir, tiny_model_dir):
    from click.testing import CliRunner

    from cai.cli.main import cli

    r = CliRunner().invoke(cli, ["train", "--help"])
    assert r.exit_code == 0 and "kto" in r.output
    r = CliRunner().invoke(cli, ["train", "kto", "--help"], terminal_width=200)
    assert "TRL KTOConfig fields" in r.output and "--desirable_weight, --desirable-weight FLOAT" in r.output
    out = plugin / "kto-cli"
    r = CliRunner().invoke(cli, ["train", "kto", "--data", str(pref_dir), "--model", str(tiny_model_dir),
                                 "--out", str(out), "--max_steps", "1", "--desirable-weight", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["trainer"] == "kto" and summary["steps"] == 1 and summary["config"]["desirable_weight"] == 2.0


def test_a_plugin_trainer_can_be_the_rounds_rl_step(plugin, tmp_path, tiny_model_dir):
    from click.testing import CliRunner
    from test_rounds import write_config

    from cai.cli.main import cli

    rl = "  rl: {config: {total_episodes: 4, per_device_train_batch_size: 2, response_length: 8, num_ppo_epochs: 1}}"
    cfg = write_config(tmp_path / "run.yaml", tiny_model_dir, rounds=1, **{
        rl: "  rl: {algorithm: kto, config: {max_steps: 1, max_length: 128}}",
        "stages:\n": "pipeline: [revisions, helpful, sft-data, sft, preferences, rl]\nstages:\n",
        "per_round: 6": "per_round: 4"})
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-report"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run/round-1/rl/training_summary.json").read_text())
    assert summary["trainer"] == "kto" and summary["steps"] == 1
    unknown = write_config(tmp_path / "bad.yaml", tiny_model_dir, rounds=1, **{rl: "  rl: {algorithm: nope}"})
    r = CliRunner().invoke(cli, ["run", str(unknown), "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "stages.rl.algorithm: trainer 'nope' unknown" in r.output and "kto" in r.output


def test_an_rl_algorithm_that_trains_on_sft_rows_is_refused(tmp_path, tiny_model_dir):
    from click.testing import CliRunner
    from test_rounds import write_config

    from cai.cli.main import cli

    rl = "  rl: {config: {total_episodes: 4, per_device_train_batch_size: 2, response_length: 8, num_ppo_epochs: 1}}"
    cfg = write_config(tmp_path / "run.yaml", tiny_model_dir, rounds=1, **{rl: "  rl: {algorithm: sft}"})
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "stages.rl.algorithm sft trains on 'sft' rows" in r.output
