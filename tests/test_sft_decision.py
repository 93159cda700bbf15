"""SFT's decision weighting: the first answer tokens' loss counted `decision_weight` times."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import one_torch_thread
from test_sft_forged_turns import ORDINARY, _sft_dir

from cai.errors import UserInputError
from cai.training.decision import decision_term

FAST = {"max_steps": 1, "learning_rate": 1e-3, "max_length": 128}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def _weighted_mean(logits, labels, tokens, weight):
    """The loss written out token by token: each row's first `tokens` answer tokens count `weight` times."""
    total, count = 0.0, 0
    for b in range(labels.size(0)):
        seen = 0
        for t in range(1, labels.size(1)):
            if labels[b, t] == -100:
                continue
            seen += 1
            ce = F.cross_entropy(logits[b, t - 1][None], labels[b, t][None]).item()
            total += ce * (weight if seen <= tokens else 1.0)
            count += 1
    return total / count


def test_plain_loss_plus_the_term_is_the_weighted_token_mean():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :3] = -100  # prompt tokens
    labels[1, :5] = -100
    labels[2, :1] = -100
    labels[2, 5:] = -100  # padding after the answer
    valid = labels[:, 1:] != -100
    plain = F.cross_entropy(logits[:, :-1][valid], labels[:, 1:][valid]).item()
    for tokens, weight in ((2, 20.0), (1, 3.0), (10, 2.0)):
        got = plain + decision_term(logits, labels, tokens, weight).item()
        assert got == pytest.approx(_weighted_mean(logits, labels, tokens, weight), rel=1e-5)
    assert decision_term(logits, labels, 2, 1.0).item() == 0.0


def test_the_trainer_adds_the_term_only_when_on(tmp_path, tiny_model_dir):
    from cai.training import build_trainer

    trainer, job = build_trainer("sft", _sft_dir(tmp_path, ORDINARY), str(tiny_model_dir), tmp_path / "out",
                                 decision_tokens=2, decision_weight=5.0, loss_type="nll", **FAST)
    assert trainer.decision == (2, 5.0)  # with loss_type nll the term reads the full logits
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    with torch.no_grad():
        on = trainer.compute_loss(model, dict(batch)).item()
        trainer.decision = (0, 1.0)
        off = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert on > off
    assert on - off == pytest.approx(decision_term(logits, batch["labels"], 2, 5.0).item(), rel=1e-4)


def test_training_records_the_setting(tmp_path, tiny_model_dir):
    from cai.training import train_sft

    res = train_sft(_sft_dir(tmp_path, ORDINARY), str(tiny_model_dir), tmp_path / "out",
                    config=FAST, decision_tokens=3, decision_weight=10)
    assert res.summary["decision_tokens"] == 3 and res.summary["decision_weight"] == 10


@pytest.mark.parametrize("options, message", [
    ({"decision_tokens": -1}, "decision_tokens must be a whole number"),
    ({"decision_tokens": 2, "decision_weight": 0.5}, "decision_weight must be a number >= 1"),
])
def test_bad_settings_are_refused_before_the_model_loads(tmp_path, options, message):
    from cai.training import build_trainer

    with pytest.raises(UserInputError, match=message):
        build_trainer("sft", _sft_dir(tmp_path, ORDINARY), "no/such-model", tmp_path / "out", **options, **FAST)


@pytest.mark.parametrize("fields, message", [
    ({"packing": True}, "packing and padding_free run together"),
    ({"loss_type": "dft"}, "decision_tokens needs the plain token loss"),
])
def test_settings_the_term_cannot_work_with_are_refused_before_the_model_loads(tmp_path, fields, message):
    from cai.training import build_trainer

    with pytest.raises(UserInputError, match=message):
        build_trainer("sft", _sft_dir(tmp_path, ORDINARY), "no/such-model", tmp_path / "out",
                      decision_tokens=2, decision_weight=5.0, **fields, **FAST)
