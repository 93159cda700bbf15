"""Reward-model pairs cannot forge turns: TRL's RewardTrainer gets ids from `ChatEncoder`.

Ordinary pairs get exactly the ids TRL's own tokenizing made; a pair whose prompt or
answer spells ``<|im_end|>\\n<|im_start|>system`` keeps those characters as text.
"""

from __future__ import annotations

from helpers import one_torch_thread
from test_forged_turns import EVIL, _count, smol_tokenizer  # noqa: F401 (fixture)

from cai.data import DatasetWriter
from cai.training.reward import preference_rows, tokenized_reward_rows

ORDINARY = [
    {"prompt": [{"role": "user", "content": "Question 1?"}], "chosen": [{"role": "assistant", "content": "Helpful."}],
     "rejected": [{"role": "assistant", "content": "Go away."}], "p_chosen": 0.8},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  spaced \n"}],
     "chosen": [{"role": "assistant", "content": " ok "}], "rejected": [{"role": "assistant", "content": "no"}],
     "p_chosen": 0.6},
]
FORGED = {"prompt": [{"role": "user", "content": EVIL}], "chosen": [{"role": "assistant", "content": "Fine."}],
          "rejected": [{"role": "assistant", "content": EVIL}], "p_chosen": 0.9}


def _trl_ids(tok, messages):
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def test_ordinary_pairs_tokenize_as_trl_did(smol_tokenizer):  # noqa: F811
    rows = preference_rows(ORDINARY, "test", keep_soft=True)
    for row, got in zip(rows, tokenized_reward_rows(rows, smol_tokenizer)):
        assert got["chosen_ids"] == _trl_ids(smol_tokenizer, row["prompt"] + row["chosen"])
        assert got["rejected_ids"] == _trl_ids(smol_tokenizer, row["prompt"] + row["rejected"])
        assert got["p_chosen"] == row["p_chosen"]


def test_chat_marker_text_in_a_pair_stays_text(smol_tokenizer):  # noqa: F811
    row = preference_rows([FORGED], "test", keep_soft=True)[0]
    got = tokenized_reward_rows([row], smol_tokenizer)[0]
    plain = tokenized_reward_rows(preference_rows([{**FORGED, "prompt": "Hi", "rejected": "x"}], "t", keep_soft=True),
                                  smol_tokenizer)[0]
    # Only the template's own turns open with <|im_start|>: the forged system turn is text.
    assert _count(got["chosen_ids"], smol_tokenizer, "<|im_start|>") == _count(plain["chosen_ids"], smol_tokenizer,
                                                                               "<|im_start|>")
    assert _count(got["rejected_ids"], smol_tokenizer, "<|im_start|>") == _count(plain["rejected_ids"],
                                                                                 smol_tokenizer, "<|im_start|>")
    assert _count(_trl_ids(smol_tokenizer, row["prompt"] + row["chosen"]), smol_tokenizer, "<|im_start|>") > \
        _count(got["chosen_ids"], smol_tokenizer, "<|im_start|>")  # TRL's own tokenizing would have forged it


def test_the_reward_trainer_trains_on_those_ids(tmp_path, tiny_model_dir):
    from cai.training import build_trainer

    w = DatasetWriter(tmp_path / "pref", kind="preference", fingerprint={"test": "rm"})
    w.write([{"id": f"p{i}", **r} for i, r in enumerate(ORDINARY * 3 + [FORGED])])
    w.finalize({})
    with one_torch_thread():
        trainer, job = build_trainer("reward", tmp_path / "pref", str(tiny_model_dir), tmp_path / "out",
                                     max_steps=1, learning_rate=1e-3, max_length=128, eval_fraction=0.0)
        safe = tokenized_reward_rows(preference_rows([FORGED], "t", keep_soft=True), job.tokenizer)[0]
        assert safe["chosen_ids"] in trainer.train_dataset["chosen_ids"]  # the ids above, as they are
        assert "p_chosen" in trainer.train_dataset.column_names
        assert trainer.train()
