"""`prompts.validation`: a seeded slice of the training sets held out to choose settings on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.errors import UserInputError
from cai.rounds.config import load_run_config
from cai.rounds.context import RunResources


def _prompts(path: Path, prefix: str, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"{prefix} question {i}?"}) + "\n" for i in range(n)))
    return path


def _split(tmp_path: Path, **prompts: object) -> RunResources:
    red = _prompts(tmp_path / "red.jsonl", "red", 30)
    helpful = _prompts(tmp_path / "helpful.jsonl", "helpful", 25)
    extra = "".join(f", {k}: {v}" for k, v in prompts.items())
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"pipeline: [helpful]\nprompts: {{red_team: {red}, helpful: {helpful}{extra}}}\n")
    return RunResources(load_run_config(cfg_path), tmp_path / "run", progress=False)


def _texts(records) -> list[str]:
    return [r.text for r in records]


def test_validation_slice_is_disjoint_from_training_and_leaves_eval_as_it_was(tmp_path):
    plain = _split(tmp_path, held_out=4)
    with_val = _split(tmp_path, held_out=4, validation=5)
    tr_red, tr_help, ev_red, ev_help = with_val.prompt_split()
    val_red, val_help = with_val.validation_split()
    assert len(val_red) == len(val_help) == 5
    assert len(tr_red) == 30 - 4 - 5 and len(tr_help) == 25 - 4 - 5
    assert not set(_texts(val_red)) & set(_texts(tr_red)) and not set(_texts(val_red)) & set(_texts(ev_red))
    assert not set(_texts(val_help)) & set(_texts(tr_help))
    # Turning validation on moves prompts out of training only: the eval split is the same.
    p_red, p_help, p_ev_red, p_ev_help = plain.prompt_split()
    assert _texts(p_ev_red) == _texts(ev_red) and _texts(p_ev_help) == _texts(ev_help)
    assert set(_texts(p_red)) == set(_texts(tr_red)) | set(_texts(val_red))
    assert plain.validation_split() == ([], [])


def test_validation_larger_than_the_training_set_is_a_clear_error(tmp_path):
    res = _split(tmp_path, held_out=4, validation=40)
    with pytest.raises(UserInputError, match="validation=40"):
        res.prompt_split()
