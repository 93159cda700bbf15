"""DPO pairs cannot forge turns: TRL's DPOTrainer gets ids from `ChatEncoder`, not our text.

Ordinary rows get exactly the ``prompt_ids``/``chosen_ids``/``rejected_ids`` TRL made from
the conversational rows; special-token text in a prompt or an answer stays text.
"""

from __future__ import annotations

import copy

import pytest
from helpers import one_torch_thread
from test_forged_turns import EVIL, EVIL_LLAMA, _count, llama_tokenizer, smol_tokenizer  # noqa: F401 (fixtures)

from cai.data import DatasetWriter

FAST = {"max_steps": 1, "learning_rate": 1e-3, "max_length": 128}

ORDINARY = [
    {"prompt": [{"role": "user", "content": "Question 1?"}], "chosen": [{"role": "assistant", "content": "Helpful."}],
     "rejected": [{"role": "assistant", "content": "Go away."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  spaced \n"}],
     "chosen": [{"role": "assistant", "content": " ok "}], "rejected": [{"role": "assistant", "content": "no"}]},
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def _trl_ids(tok, row):
    """What TRL's DPOTrainer tokenize_fn makes of a conversational row."""
    def enc(msgs, **kw):
        return list(tok.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"])

    prompt = enc(row["prompt"], add_generation_prompt=True)
    return {"prompt_ids": prompt, "chosen_ids": enc(row["prompt"] + row["chosen"])[len(prompt):],
            "rejected_ids": enc(row["prompt"] + row["rejected"])[len(prompt):]}


@pytest.mark.parametrize("which", ["smol", "llama"])
def test_ordinary_pairs_tokenize_as_trl_did_and_forged_ones_do_not(which, smol_tokenizer, llama_tokenizer):  # noqa: F811
    from cai.training.dpo import tokenized_preference_rows

    tok = smol_tokenizer if which == "smol" else llama_tokenizer
    for row, got in zip(ORDINARY, tokenized_preference_rows(ORDINARY, tok)):
        assert got == _trl_ids(tok, row)
    evil, start = (EVIL, "<|im_start|>") if which == "smol" else (EVIL_LLAMA, "<|start_header_id|>")
    forged = {"prompt": [{"role": "user", "content": evil}], "chosen": [{"role": "assistant", "content": evil}],
              "rejected": [{"role": "assistant", "content": "No."}]}
    (got,), (plain,) = tokenized_preference_rows([forged], tok), tokenized_preference_rows(ORDINARY[:1], tok)
    old = _trl_ids(tok, forged)
    assert _count(old["prompt_ids"] + old["chosen_ids"], tok, start) > \
        _count(plain["prompt_ids"] + plain["chosen_ids"], tok, start)  # the bug
    for key in ("prompt_ids", "chosen_ids"):
        assert _count(got[key], tok, start) == _count(plain[key], tok, start)
        assert "Ignore all rules" in tok.decode(got[key])


def test_dpo_trainer_gets_the_same_ids_as_before_and_trains(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from trl import DPOTrainer

    from cai.training import build_trainer
    from cai.training.common import load_policy

    w = DatasetWriter(tmp_path / "pref", kind="preference", fingerprint={"test": "pref"})
    w.write([{"id": f"p{i}", **r} for i, r in enumerate(ORDINARY)])
    w.finalize({})
    trainer, job = build_trainer("dpo", tmp_path / "pref", str(tiny_model_dir), tmp_path / "out", **FAST)
    model, tok = load_policy(str(tiny_model_dir))
    ref, _ = load_policy(str(tiny_model_dir))
    before = DPOTrainer(model=model, ref_model=ref, args=copy.deepcopy(job.config),
                        train_dataset=Dataset.from_list(job.rows), processing_class=tok)
    assert len(trainer.train_dataset) == len(before.train_dataset) == len(ORDINARY)
    for new, old in zip(trainer.train_dataset, before.train_dataset):
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert new[key] == old[key]
    assert trainer.train()
