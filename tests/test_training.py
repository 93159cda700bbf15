"""Trainers on a tiny random Llama: each runs a few steps, changes its weights, saves a loadable model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import one_torch_thread

from cai.data import DatasetWriter, PromptRecord
from cai.errors import DataError, UserInputError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


FAST = {"max_steps": 2, "learning_rate": 1e-3, "max_length": 64}


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def _changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if k in after and not torch.equal(before[k], after[k])]


def _write(directory: Path, kind: str, rows: list[dict]) -> Path:
    w = DatasetWriter(directory, kind=kind, fingerprint={"test": kind})
    w.write(rows)
    w.finalize({})
    return directory


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    rows = [
        {"id": f"s{i}", "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": f"How do I do thing {i}?"},
            {"role": "assistant", "content": f"Carefully, step {i}."},
        ], "prompt": f"How do I do thing {i}?", "revisions": [{"principle_id": "p", "critique": "c", "revision": "r"}]}
        for i in range(4)
    ]
    return _write(tmp_path_factory.mktemp("sft"), "sft", rows)


@pytest.fixture(scope="module")
def pref_dir(tmp_path_factory) -> Path:
    rows = [
        {"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
         "chosen": [{"role": "assistant", "content": "A helpful answer."}],
         "rejected": [{"role": "assistant", "content": "Go away."}],
         "p_chosen": [0.9, 0.6, 0.8, 0.7, 0.95, 0.55][i], "principle_ids": ["harm"], "position_consistent": i % 2 == 0,
         "p_ab": 0.9, "p_ba": 0.8, "rationales": []}
        for i in range(6)
    ]
    return _write(tmp_path_factory.mktemp("pref"), "preference", rows)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Tell me about {w}."}) + "\n" for w in ["cats", "rain", "bread", "tea"]))
    return p


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A (random) reward model on the tiny Llama: what `cai train reward` outputs."""
    from cai.training.common import load_reward_model

    torch.manual_seed(1)
    model, tok = load_reward_model(str(tiny_model_dir), from_policy=True)
    out = tmp_path_factory.mktemp("tiny-rm")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _check_saved_policy(result, before: dict) -> None:
    from cai.models import load_model

    assert (result.path / "model.safetensors").is_file()
    summary = json.loads((result.path / "training_summary.json").read_text())
    assert summary["steps"] >= 1 and summary["seconds"] > 0 and "versions" in summary
    loaded = load_model(str(result.path), device="cpu")
    after = _weights(loaded.model)
    changed = _changed(before, after)
    assert changed, "training left every weight unchanged"
    return summary


# --- SFT ---------------------------------------------------------------------------------


def test_sft_masks_prompt_tokens(sft_dir, tiny_model_dir, tmp_path):
    from cai.training import build_trainer

    trainer, job = build_trainer("sft", sft_dir, str(tiny_model_dir), tmp_path / "out", **FAST)
    tok = job.tokenizer
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    ids = batch["input_ids"][0]
    trained = tok.decode(ids[labels != -100])
    # Only the assistant's answer (and its end-of-turn token) carries loss; the system/user turns do not.
    assert "Carefully, step 0." in trained
    assert "How do I do thing" not in trained and "Be kind" not in trained
    assert (labels == -100).sum() > 5


def test_sft_trains_and_saves(sft_dir, tiny_model_dir, tmp_path):
    from cai.models import load_model
    from cai.training import train_sft

    before = _weights(load_model(str(tiny_model_dir), device="cpu").model)
    result = train_sft(sft_dir, str(tiny_model_dir), tmp_path / "sft-out", **FAST)
    summary = _check_saved_policy(result, before)
    assert summary["trainer"] == "sft" and summary["data"]["rows_used"] == 4
    assert summary["losses"] and summary["config"]["max_steps"] == 2


def test_sft_lora_saves_merged_weights(sft_dir, tiny_model_dir, tmp_path):
    from cai.models import load_model
    from cai.training import train_sft

    before = _weights(load_model(str(tiny_model_dir), device="cpu").model)
    result = train_sft(sft_dir, str(tiny_model_dir), tmp_path / "lora-out", lora=True, **FAST)
    assert not (result.path / "adapter_config.json").exists()  # merged, a plain model directory
    summary = _check_saved_policy(result, before)
    assert summary["lora"] is True


# --- reward --------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_soft_loss_equals_hard_loss_at_certain_labels(p):
    import torch.nn.functional as F

    from cai.training import soft_preference_loss

    rc, rr = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.1, 0.5, -0.7])
    soft = soft_preference_loss(rc, rr, torch.full((3,), p))
    # p=1: the chosen response is better; p=0: the pair is reversed. Both are TRL's hard loss.
    hard = -F.logsigmoid(rc - rr).mean() if p == 1.0 else -F.logsigmoid(rr - rc).mean()
    assert torch.allclose(soft, hard)


def test_soft_loss_differs_for_uncertain_labels():
    import torch.nn.functional as F

    from cai.training import soft_preference_loss

    rc, rr = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.1, 0.5, -0.7])
    hard = -F.logsigmoid(rc - rr).mean()
    for p in (0.5, 0.8):
        assert not torch.allclose(soft_preference_loss(rc, rr, torch.full((3,), p)), hard)
    # At p=0.5 the loss is lowest when the rewards are equal.
    tie = soft_preference_loss(torch.zeros(1), torch.zeros(1), torch.full((1,), 0.5))
    assert tie < soft_preference_loss(torch.ones(1), torch.zeros(1), torch.full((1,), 0.5))


def test_reward_trainer_uses_soft_loss(pref_dir, tiny_model_dir, tmp_path):
    """The trainer's loss on a batch equals TRL's hard loss at p=1 and differs at p=0.6."""
    from cai.training import build_trainer

    trainer, job = build_trainer("reward", pref_dir, str(tiny_model_dir), tmp_path / "rm", eval_fraction=0, **FAST)
    assert job.options["soft_labels"] is True
    model = trainer.model.eval()
    examples = [dict(trainer.train_dataset[i]) for i in range(2)]

    def loss_with(p):
        for e in examples:
            e["p_chosen"] = p
        batch = trainer.data_collator(examples)
        with torch.no_grad():
            return trainer.compute_loss(model, batch)

    with torch.no_grad():
        hard = trainer.compute_loss(model, trainer.data_collator([{k: e[k] for k in ("chosen_ids", "rejected_ids")}
                                                                  for e in examples]))
    assert torch.allclose(loss_with(1.0), hard)
    assert not torch.allclose(loss_with(0.6), hard)


def test_reward_trains_saves_and_reports_accuracy(pref_dir, tiny_model_dir, tmp_path):
    from cai.training import load_reward_model, train_reward

    rm, _ = load_reward_model(str(tiny_model_dir), from_policy=True)
    body_before = {k: v for k, v in _weights(rm).items() if not k.startswith("score")}
    result = train_reward(pref_dir, str(tiny_model_dir), tmp_path / "rm-out", eval_fraction=0.34, **FAST)
    summary = json.loads((result.path / "training_summary.json").read_text())
    assert summary["soft_labels"] is True and summary["eval"]["pairs"] == 2
    assert 0.0 <= summary["eval"]["accuracy"] <= 1.0
    loaded, _ = load_reward_model(str(result.path))  # loads back as a reward model
    assert loaded.config.pad_token_id is not None
    assert _changed(body_before, _weights(loaded))


# --- DPO -----------------------------------------------------------------------------------


def test_dpo_trains_with_extra_columns(pref_dir, tiny_model_dir, tmp_path):
    from cai.models import load_model
    from cai.training import train_dpo

    before = _weights(load_model(str(tiny_model_dir), device="cpu").model)
    result = train_dpo(pref_dir, str(tiny_model_dir), tmp_path / "dpo-out", **FAST)
    _check_saved_policy(result, before)


# --- online RL -------------------------------------------------------------------------------


def test_ppo_trains_policy(prompts_file, tiny_model_dir, reward_model_dir, tmp_path):
    from cai.models import load_model
    from cai.training import train_ppo

    before = _weights(load_model(str(tiny_model_dir), device="cpu").model)
    result = train_ppo(prompts_file, str(tiny_model_dir), str(reward_model_dir), tmp_path / "ppo-out",
                       max_steps=2, learning_rate=1e-3, response_length=8, kl_coef=0.1, num_ppo_epochs=1)
    summary = _check_saved_policy(result, before)
    assert summary["episodes"] == 4 and summary["config"]["kl_coef"] == 0.1
    assert len(summary["rewards"]) == 2


def _length_judge(prompts, completions, **kwargs):
    return [float(len(c[0]["content"]) if isinstance(c, list) else len(c)) / 10 for c in completions]


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_group_trainers(name, prompts_file, tiny_model_dir, reward_model_dir, tmp_path):
    import cai.training as training
    from cai.data import load_prompts
    from cai.models import load_model

    before = _weights(load_model(str(tiny_model_dir), device="cpu").model)
    fn = getattr(training, f"train_{name}")
    result = fn(load_prompts(prompts_file), str(tiny_model_dir), tmp_path / f"{name}-out",
                reward_model=str(reward_model_dir), judge=_length_judge, beta=0.05,
                max_steps=2, learning_rate=1e-3, max_completion_length=8, num_generations=2,
                per_device_train_batch_size=2)
    summary = _check_saved_policy(result, before)
    assert summary["data"]["reward_functions"] == [f"reward_model:{reward_model_dir}", "judge:_length_judge"]
    assert summary["config"]["beta"] == 0.05 and len(summary["rewards"]) == 2


# --- errors before any model loads -------------------------------------------------------------


def test_wrong_kind_names_the_fitting_command(sft_dir, pref_dir, tmp_path):
    from cai.training import train_dpo, train_grpo, train_reward, train_sft

    missing = "no-such-model-dir/"  # a model load would fail differently; the data check must come first
    with pytest.raises(DataError, match="cai train reward / cai train dpo"):
        train_sft(pref_dir, missing, tmp_path / "x")
    with pytest.raises(DataError, match="cai train sft"):
        train_reward(sft_dir, missing, tmp_path / "x")
    with pytest.raises(DataError, match="cai train sft"):
        train_dpo(sft_dir, missing, tmp_path / "x")
    with pytest.raises(DataError, match="cai train reward"):
        train_grpo(pref_dir, missing, tmp_path / "x", judge=_length_judge)


def test_unknown_config_key_names_file_and_key(sft_dir, tmp_path):
    from cai.training import TrainingConfigError, train_sft

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_steps: 2\nmax_seq_length: 128\n")
    with pytest.raises(TrainingConfigError, match=r"bad\.yaml: unknown SFTConfig field 'max_seq_length'"):
        train_sft(sft_dir, "no-such-model-dir/", tmp_path / "x", config_file=cfg)


def test_config_layers_yaml_then_flags(tmp_path):
    from trl import SFTConfig

    from cai.training.config import build_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("learning_rate: 0.5\nmax_steps: 7\nlogging_steps: 3\n")
    cfg, settings = build_config(SFTConfig, tmp_path, defaults={"max_length": 99}, config_file=cfg_file,
                                 overrides={"max_steps": 2, "learning_rate": None})
    assert (cfg.learning_rate, cfg.max_steps, cfg.logging_steps, cfg.max_length) == (0.5, 2, 3, 99)
    assert cfg.output_dir.startswith(str(tmp_path))


def test_rl_needs_a_reward(prompts_file, tmp_path):
    from cai.training import train_rloo

    with pytest.raises(UserInputError, match="needs a reward"):
        train_rloo(prompts_file, "no-such-model-dir/", tmp_path / "x")


def test_in_memory_prompts_accepted():
    from cai.training.common import load_prompt_records

    records, prov = load_prompt_records([PromptRecord(messages=[{"role": "user", "content": "hi"}])])
    assert len(records) == 1 and prov["source"] == "in-memory"


def test_importing_cai_training_does_not_import_trl():
    import subprocess
    import sys

    code = ("import sys, cai.training, cai.training.sft, cai.training.reward, cai.training.ppo, "
            "cai.training.grpo, cai.training.rloo, cai.training.dpo, cai.training.spec, cai.training.runner, "
            "cai.training.config, cai.cli.train; cai.training.trainer_registry(); "
            "assert 'trl' not in sys.modules, 'trl imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
