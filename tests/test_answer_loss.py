"""cai's fused answer loss equals the plain token loss (plus the decision weights), gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import one_torch_thread
from test_sft_forged_turns import ORDINARY, _sft_dir

from cai.training import answer_loss as al

FAST = {"max_steps": 1, "learning_rate": 1e-3, "max_length": 128}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def _reference(hidden, head, labels, tokens, weight):
    """Full logits at every position, CE per answer token, the first `tokens` of each row weighted."""
    logits = head(hidden)[:, :-1].float()
    tgt = labels[:, 1:]
    valid = tgt != -100
    rank = valid.long().cumsum(1)
    w = torch.where(valid & (rank <= tokens), weight, 1.0)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none", ignore_index=-100)
    return (ce * w.reshape(-1) * valid.reshape(-1)).sum() / valid.sum()


@pytest.mark.parametrize("tokens, weight, bias", [(0, 1.0, False), (2, 20.0, False), (1, 3.0, True)])
def test_loss_and_gradients_equal_the_full_logits_loss(monkeypatch, tokens, weight, bias):
    monkeypatch.setattr(al, "CHUNK", 5)  # several chunks, the last one short
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 37, bias=bias)
    hidden = torch.randn(3, 9, 16, requires_grad=True)
    labels = torch.randint(0, 37, (3, 9))
    labels[0, :3] = -100
    labels[1, :6] = -100
    labels[2, 7:] = -100  # padding after the answer
    want = _reference(hidden, head, labels, tokens, weight)
    want.backward()
    want_grads = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
    hidden.grad = None
    head.zero_grad()
    got, correct, entropy, n = al.answer_loss(hidden, head, labels, decision_tokens=tokens, decision_weight=weight)
    (2 * got).backward()  # the upstream gradient scales what the forward computed
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got_grads = [hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, 2 * w, rtol=1e-4, atol=1e-6)
    assert int(n) == int((labels[:, 1:] != -100).sum())
    logits = head(hidden)[:, :-1][labels[:, 1:] != -100]
    assert int(correct) == int((logits.argmax(-1) == labels[:, 1:][labels[:, 1:] != -100]).sum())
    p = logits.softmax(-1)
    assert entropy.item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-4)


def test_under_bf16_autocast_it_stays_close_to_the_fp32_loss():
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 301, bias=False)
    hidden = torch.randn(2, 12, 64)
    labels = torch.randint(0, 301, (2, 12))
    labels[:, :4] = -100
    want = _reference(hidden, head, labels, 2, 20.0).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = al.answer_loss(hidden, head, labels, decision_tokens=2, decision_weight=20.0)[0].item()
    assert got == pytest.approx(want, rel=2e-2)


def test_the_sft_trainer_trains_with_it_and_logs_what_trl_logs(tmp_path, tiny_model_dir):
    from cai.training import build_trainer

    sft = _sft_dir(tmp_path, ORDINARY)
    trainer, job = build_trainer("sft", sft, str(tiny_model_dir), tmp_path / "on", decision_tokens=2,
                                 decision_weight=5.0, **FAST)
    assert job.info["loss"] == "answer_loss"
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    with torch.no_grad():
        on = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # no labels: plain
    hidden_free = _reference_from_logits(logits, batch["labels"], 2, 5.0)
    assert on == pytest.approx(hidden_free, rel=1e-4)
    assert trainer._metrics["train"]["mean_token_accuracy"] and trainer._metrics["train"]["entropy"]
    trainer.train()
    assert trainer.state.log_history[0]["loss"] > 0


def _reference_from_logits(logits, labels, tokens, weight):
    tgt = labels[:, 1:]
    valid = tgt != -100
    rank = valid.long().cumsum(1)
    w = torch.where(valid & (rank <= tokens), weight, 1.0)
    ce = F.cross_entropy(logits[:, :-1].float()[valid], tgt[valid], reduction="none")
    return ((ce * w[valid]).sum() / valid.sum()).item()


def test_an_explicit_nll_loss_keeps_trls_path(tmp_path, tiny_model_dir):
    from cai.training import build_trainer

    trainer, job = build_trainer("sft", _sft_dir(tmp_path, ORDINARY), str(tiny_model_dir), tmp_path / "out",
                                 decision_tokens=2, decision_weight=5.0, loss_type="nll", **FAST)
    assert job.info["loss"] == "nll" and trainer.decision == (2, 5.0)


def test_training_attention_is_eager_for_short_rows_and_flash_for_long_ones(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from cai.training.common import EAGER_ATTENTION_BYTES, training_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = model.config
    per_row = cfg.num_attention_heads * 8 * cfg.num_hidden_layers  # bytes per score element, all layers
    short = int((EAGER_ATTENTION_BYTES / per_row / 8) ** 0.5)
    assert training_attention(model, 8, short) == "eager"
    assert training_attention(model, 8, 4 * short) == "sdpa"


def test_eager_and_flash_attention_train_to_the_same_loss(tmp_path, tiny_model_dir):
    """The switch is a speed choice only: one step's loss and gradients agree between the two."""
    from cai.training import build_trainer

    sft = _sft_dir(tmp_path, ORDINARY)
    losses = {}
    for impl in ("eager", "sdpa"):
        trainer, job = build_trainer("sft", sft, str(tiny_model_dir), tmp_path / impl, **FAST)
        assert job.info["attention"] == "eager"
        trainer.model.set_attn_implementation(impl)
        batch = next(iter(trainer.get_train_dataloader()))
        losses[impl] = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-4)


def _pref_dir(tmp_path):
    from test_dpo_forged_turns import ORDINARY as PAIRS

    from cai.data import DatasetWriter

    rows = [{"id": f"p{i}", **r} for i, r in enumerate(PAIRS * 3)]
    rows += [{"id": "long", "prompt": [{"role": "user", "content": "A longer question, with more words in it?"}],
              "chosen": [{"role": "assistant", "content": "A longer answer that runs on for a while."}],
              "rejected": [{"role": "assistant", "content": "No."}]}]
    w = DatasetWriter(tmp_path / "pref", kind="preference", fingerprint={"test": "pref"})
    w.write(rows)
    w.finalize({})
    return tmp_path / "pref"


def test_dpo_answer_logps_give_trls_loss_gradients_and_metrics(tmp_path, tiny_model_dir):
    from cai.training import build_trainer

    trainer, job = build_trainer("dpo", _pref_dir(tmp_path), str(tiny_model_dir), tmp_path / "out",
                                 per_device_train_batch_size=4, bf16=False, **FAST)
    assert job.info["loss"] == "answer_logps" and trainer.answer_logps
    # Move the policy off the reference, so the loss and its gradient are not the trivial log(2) point.
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(trainer.get_train_dataloader()))
    results = {}
    for fast in (True, False):
        trainer.answer_logps = fast
        trainer.model.zero_grad()
        trainer._metrics["train"].clear()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
        results[fast] = (loss.item(), grads, {k: v[-1] for k, v in trainer._metrics["train"].items()})
    (fast_loss, fast_grads, fast_m), (trl_loss, trl_grads, trl_m) = results[True], results[False]
    assert fast_loss == pytest.approx(trl_loss, rel=1e-4) and abs(fast_loss - 0.6931) > 1e-3
    assert len(fast_grads) == len(trl_grads)
    for a, b in zip(fast_grads, trl_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    assert set(fast_m) == set(trl_m)
    for key in trl_m:
        if key != "num_tokens":
            assert fast_m[key] == pytest.approx(trl_m[key], rel=1e-3, abs=1e-5), key


def test_dpo_settings_outside_the_plain_loss_keep_trls_path(tmp_path, tiny_model_dir):
    from cai.training import build_trainer

    trainer, job = build_trainer("dpo", _pref_dir(tmp_path), str(tiny_model_dir), tmp_path / "out",
                                 loss_type=["ipo"], **FAST)
    assert job.info["loss"] == "trl" and not trainer.answer_logps
    assert trainer.train()
