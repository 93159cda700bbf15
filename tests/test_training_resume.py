"""A training run cut off after a checkpoint resumes to the weights an uninterrupted run saves."""

from __future__ import annotations

import json

import pytest
from helpers import one_torch_thread
from test_sft_forged_turns import ORDINARY, _sft_dir

from cai.training import checkpoints as ckpt

FAST = {"max_steps": 5, "learning_rate": 1e-3, "max_length": 128, "per_device_train_batch_size": 1,
        "lr_scheduler_type": "linear"}


class Cut(Exception):
    pass


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def _train(data, model, out, **kw):
    from cai.training import train_sft

    return train_sft(data, model, out, config=FAST, checkpoint_steps=1, average_tail=0.6, **kw)


@pytest.mark.parametrize("cut_at", [1, 3])  # before and inside the averaged tail (steps 3-5)
def test_a_run_cut_after_a_checkpoint_resumes_to_the_same_weights(tmp_path, tiny_model_dir, monkeypatch, cut_at):
    data = _sft_dir(tmp_path, ORDINARY * 3)
    ref = _train(data, str(tiny_model_dir), tmp_path / "ref")
    assert not ckpt.checkpoint_dir(tmp_path / "ref").exists()  # removed once the model is saved

    on_save = ckpt.Checkpointer.on_save

    def cut(self, args, state, control, **kw):
        on_save(self, args, state, control, **kw)
        if state.global_step == cut_at:
            raise Cut()

    monkeypatch.setattr(ckpt.Checkpointer, "on_save", cut)
    with pytest.raises(Cut):
        _train(data, str(tiny_model_dir), tmp_path / "out")
    assert ckpt.last_checkpoint(tmp_path / "out").name == f"checkpoint-{cut_at}"
    monkeypatch.setattr(ckpt.Checkpointer, "on_save", on_save)
    got = _train(data, str(tiny_model_dir), tmp_path / "out", resume=True)

    assert got.summary["resumed_from_step"] == cut_at
    assert (tmp_path / "out/model.safetensors").read_bytes() == (tmp_path / "ref/model.safetensors").read_bytes()
    assert got.summary["weight_averaging"]["averaged_steps"] == ref.summary["weight_averaging"]["averaged_steps"]
    log = [json.loads(line) for line in (tmp_path / "out/train_log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in log if "loss" in e]
    assert steps == [1, 2, 3, 4, 5]  # each step once: the ones before the checkpoint kept, the rest logged again
    assert [e["loss"] for e in log if "loss" in e] == [e["loss"] for e in ref.summary["log_history"] if "loss" in e]


def test_an_incomplete_checkpoint_is_never_resumed_from(tmp_path):
    root = ckpt.checkpoint_dir(tmp_path)
    for step, complete in ((2, True), (4, False)):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (root / f"checkpoint-{step}" / ckpt.COMPLETE).write_text("")
    assert ckpt.last_checkpoint(tmp_path).name == "checkpoint-2"
    assert ckpt.last_checkpoint(tmp_path / "nothing") is None


def test_without_resume_old_checkpoints_are_cleared(tmp_path, tiny_model_dir):
    data = _sft_dir(tmp_path, ORDINARY)
    stale = ckpt.checkpoint_dir(tmp_path / "out") / "checkpoint-9"
    stale.mkdir(parents=True)
    (stale / ckpt.COMPLETE).write_text("")
    res = _train(data, str(tiny_model_dir), tmp_path / "out")
    assert "resumed_from_step" not in res.summary and not stale.exists()


def test_cai_train_resume_continues_from_the_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    from click.testing import CliRunner

    from cai.cli.main import cli

    data = _sft_dir(tmp_path, ORDINARY * 3)
    out = tmp_path / "out"
    monkeypatch.setattr(ckpt, "EVERY_SECONDS", 0.0)
    on_save = ckpt.Checkpointer.on_save

    def cut(self, args, state, control, **kw):
        on_save(self, args, state, control, **kw)
        if state.global_step == 2:
            raise Cut()

    args = ["train", "sft", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out),
            "--max-steps", "4", "--learning-rate", "1e-3", "--max-length", "128"]
    monkeypatch.setattr(ckpt.Checkpointer, "on_save", cut)
    r = CliRunner().invoke(cli, args)
    assert isinstance(r.exception, Cut)
    monkeypatch.setattr(ckpt.Checkpointer, "on_save", on_save)
    r = CliRunner().invoke(cli, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
