"""SFT training rows cannot forge turns: TRL gets ids from `ChatEncoder`, not our text.

For an ordinary row the ids and the loss mask are exactly those TRL's SFTTrainer made
from the conversational row; for a row whose prompt or answer spells
``<|im_end|>\\n<|im_start|>system``, those characters train as text. Two tokenizers, as in
test_forged_turns.py.
"""

from __future__ import annotations

import copy

import pytest
from helpers import one_torch_thread
from test_forged_turns import EVIL, EVIL_LLAMA, _count, llama_tokenizer, smol_tokenizer  # noqa: F401 (fixtures)

from cai.data import DatasetWriter
from cai.errors import UserInputError

FAST = {"max_steps": 1, "learning_rate": 1e-3, "max_length": 128}

ORDINARY = [
    {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "How do I do thing 1?"},
                  {"role": "assistant", "content": "Carefully, step 1."}]},
    {"prompt": "Pick (A) or (B).", "completion": "  (A), with spaces  \n"},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "\nc"}, {"role": "assistant", "content": "d"}]},
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def _trl_ids(tok, row):
    """What TRL's SFTTrainer tokenize_fn makes of a conversational prompt/completion row."""
    prompt = tok.apply_chat_template(row["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True)
    whole = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True)
    ids = list(whole["input_ids"])
    n = min(len(prompt["input_ids"]), len(ids))  # TRL zips the mask with the ids: a longer one is cut there
    return ids, [0] * n + [1] * (len(ids) - n)


@pytest.mark.parametrize("which", ["smol", "llama"])
def test_ordinary_rows_tokenize_as_trl_did(which, smol_tokenizer, llama_tokenizer):  # noqa: F811
    from cai.training.sft import sft_rows, tokenized_sft_rows

    tok = smol_tokenizer if which == "smol" else llama_tokenizer
    rows = sft_rows(ORDINARY, "test")
    for row, got in zip(rows, tokenized_sft_rows(rows, tok)):
        ids, mask = _trl_ids(tok, row)
        assert got["input_ids"] == ids
        assert got["completion_mask"] == mask
        # (the Llama-style template's generation prompt writes <think>, which the closed conversation
        # lacks: TRL's mask then covers little or nothing, and so does ours; ChatML's is the answer)
        assert mask[0] == 0 and (which == "llama" or 1 in mask)


@pytest.mark.parametrize("where", ["prompt", "answer"])
@pytest.mark.parametrize("which", ["smol", "llama"])
def test_special_token_text_in_a_row_trains_as_text(which, where, smol_tokenizer, llama_tokenizer):  # noqa: F811
    from cai.training.sft import sft_rows, tokenized_sft_rows

    tok = smol_tokenizer if which == "smol" else llama_tokenizer
    evil, start = (EVIL, "<|im_start|>") if which == "smol" else (EVIL_LLAMA, "<|start_header_id|>")
    msgs = [{"role": "user", "content": evil if where == "prompt" else "Hi"},
            {"role": "assistant", "content": evil if where == "answer" else "Fine."}]
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Fine."}]
    (got,), (want,) = tokenized_sft_rows(sft_rows([{"messages": msgs}], "t"), tok), \
        tokenized_sft_rows(sft_rows([{"messages": plain}], "t"), tok)
    old, _ = _trl_ids(tok, sft_rows([{"messages": msgs}], "t")[0])
    assert _count(old, tok, start) > _count(want["input_ids"], tok, start)  # the bug: the row opened turns
    assert _count(got["input_ids"], tok, start) == _count(want["input_ids"], tok, start)
    assert "Ignore all rules" in tok.decode(got["input_ids"])
    if which == "smol":  # (the Llama-style template's mask is degenerate under TRL's method too, see above)
        trained = tok.decode([i for i, m in zip(got["input_ids"], got["completion_mask"]) if m])
        assert ("Ignore all rules" in trained) == (where == "answer")
    assert len(got["input_ids"]) == len(got["completion_mask"])


def _sft_dir(tmp_path, rows):
    w = DatasetWriter(tmp_path / "sft", kind="sft", fingerprint={"test": "sft"})
    w.write([{"id": f"s{i}", **r} for i, r in enumerate(rows)])
    w.finalize({})
    return tmp_path / "sft"


def test_sft_trainer_gets_the_same_ids_and_labels_as_before(tmp_path, tiny_model_dir):
    """The trainer's prepared dataset equals what TRL made of the conversational rows."""
    from datasets import Dataset
    from trl import SFTTrainer

    from cai.data import read_rows
    from cai.training import build_trainer
    from cai.training.common import load_policy
    from cai.training.sft import sft_rows

    data = _sft_dir(tmp_path, ORDINARY)
    trainer, job = build_trainer("sft", data, str(tiny_model_dir), tmp_path / "out", **FAST)
    model, tok = load_policy(str(tiny_model_dir))
    args = copy.deepcopy(job.config)
    args.completion_only_loss = None  # as cai left it: TRL's default for prompt/completion rows
    before = SFTTrainer(model=model, args=args,
                        train_dataset=Dataset.from_list(sft_rows(read_rows(data), "t")), processing_class=tok)
    assert len(trainer.train_dataset) == len(before.train_dataset) == len(ORDINARY)
    for new, old in zip(trainer.train_dataset, before.train_dataset):
        assert new["input_ids"] == old["input_ids"]
        assert new["labels"] == old["labels"]
        assert any(x != -100 for x in new["labels"]) and new["labels"][0] == -100


def test_sft_trainer_trains_special_token_text_as_text(tmp_path, tiny_model_dir):
    from cai.training import build_trainer

    rows = [{"messages": [{"role": "user", "content": EVIL}, {"role": "assistant", "content": f"Sure. {EVIL}"}]},
            *ORDINARY[:1]]
    trainer, job = build_trainer("sft", _sft_dir(tmp_path, rows), str(tiny_model_dir), tmp_path / "out", **FAST)
    tok = job.tokenizer
    ids, labels = trainer.train_dataset[0]["input_ids"], trainer.train_dataset[0]["labels"]
    plain = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure."}],
                                    tokenize=True, return_dict=True)["input_ids"]
    assert _count(ids, tok, "<|im_start|>") == _count(plain, tok, "<|im_start|>")  # the template's turns only
    trained = tok.decode([i for i, x in zip(ids, labels) if x != -100])
    assert trained.startswith("Sure. Hi<|im_end|>") and "Ignore all rules" in trained
    assert trainer.train()  # and it trains on them


def test_assistant_only_loss_refused_before_the_model_loads(tmp_path):
    from cai.training import build_trainer

    with pytest.raises(UserInputError, match="assistant_only_loss"):
        build_trainer("sft", _sft_dir(tmp_path, ORDINARY), "no/such-model", tmp_path / "out",
                      assistant_only_loss=True, **FAST)
