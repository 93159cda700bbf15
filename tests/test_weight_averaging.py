"""Tail weight averaging (`cai.training.averaging`): the saved weights are the mean over the last steps."""

from __future__ import annotations

import pytest
import torch
from helpers import one_torch_thread
from test_sft_forged_turns import ORDINARY, _sft_dir
from test_training import prompts_file, reward_model_dir  # noqa: F401 (fixtures)

from cai.errors import UserInputError
from cai.training.averaging import first_averaged_step, tail_average_callback

FAST = {"max_steps": 4, "learning_rate": 1e-3, "max_length": 128, "per_device_train_batch_size": 1}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def test_the_tail_is_the_last_fraction_of_the_steps():
    assert first_averaged_step(4, 0.5) == 3
    assert first_averaged_step(120, 0.25) == 91
    assert first_averaged_step(10, 0.01) == 10  # at least the last step
    assert first_averaged_step(1, 0.5) == 1


def test_the_model_ends_as_the_mean_of_the_weights_after_each_tail_step(tmp_path, tiny_model_dir):
    from transformers import TrainerCallback

    from cai.training import build_trainer

    snapshots: dict[int, list[torch.Tensor]] = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    trainer, _ = build_trainer("sft", _sft_dir(tmp_path, ORDINARY), str(tiny_model_dir), tmp_path / "out", **FAST)
    trainer.add_callback(Snapshot())
    averager = tail_average_callback(0.5)
    trainer.add_callback(averager)
    trainer.train()
    assert sorted(snapshots) == [1, 2, 3, 4]
    assert averager.summary() == {"average_tail": 0.5, "averaged_from_step": 3, "averaged_steps": 2}
    final = [p.detach() for p in trainer.model.parameters() if p.requires_grad]
    moved = 0
    for got, s3, s4 in zip(final, snapshots[3], snapshots[4]):
        torch.testing.assert_close(got, (s3 + s4) / 2, rtol=1e-6, atol=1e-7)
        moved += not torch.equal(s3, s4)
    assert moved > 0  # the two iterates differ, so the mean is not just the last one


def test_train_saves_the_averaged_model_and_records_it(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from cai.training import train_sft

    data = _sft_dir(tmp_path, ORDINARY)
    plain = train_sft(data, str(tiny_model_dir), tmp_path / "plain", config=FAST)
    averaged = train_sft(data, str(tiny_model_dir), tmp_path / "avg", config=FAST, average_tail=0.5)
    assert "weight_averaging" not in plain.summary
    assert averaged.summary["weight_averaging"] == {"average_tail": 0.5, "averaged_from_step": 3,
                                                    "averaged_steps": 2}
    a = load_file(tmp_path / "plain" / "model.safetensors")
    b = load_file(tmp_path / "avg" / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("value", [1.0, -0.1, "half", True])
def test_bad_fractions_are_refused_before_the_model_loads(tmp_path, value):
    from cai.training import train_sft

    with pytest.raises(UserInputError, match="average_tail must be a number from 0"):
        train_sft(_sft_dir(tmp_path, ORDINARY), "no/such-model", tmp_path / "out", config=FAST, average_tail=value)


def test_ppo_own_loop_averages_too(prompts_file, tiny_model_dir, reward_model_dir, tmp_path):
    """PPO runs its own loop (not Trainer.train), with the same callback events: the averaging holds there."""
    from cai.training import train_ppo

    kw = dict(max_steps=2, learning_rate=1e-3, response_length=8, kl_coef=0.1, num_ppo_epochs=1)
    res = train_ppo(prompts_file, str(tiny_model_dir), str(reward_model_dir), tmp_path / "ppo", average_tail=0.5, **kw)
    assert res.summary["weight_averaging"] == {"average_tail": 0.5, "averaged_from_step": 2, "averaged_steps": 1}


def test_stage_sections_take_it_and_check_it():
    from pydantic import ValidationError

    from cai.rounds.stages.sft import SFTSection

    assert SFTSection().average_tail == 0.0
    assert SFTSection(average_tail=0.5).average_tail == 0.5
    with pytest.raises(ValidationError):
        SFTSection(average_tail=1.0)
