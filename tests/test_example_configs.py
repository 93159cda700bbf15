"""Every shipped run config still loads and validates (configs rot when fields are renamed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai.rounds import get_stage, load_run_config

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIGS = ["quickstart.yaml", "card-chain.yaml", "self-improve.yaml"]


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_run_config_loads(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_run_config(ROOT / "examples/configs" / name)
    assert cfg.pipeline and all(get_stage(s) for s in cfg.pipeline)
    # the held-out eval sets are separate files, never slices of the training sets
    assert cfg.prompts.eval_red_team and cfg.prompts.eval_helpful
    assert Path(cfg.prompts.eval_red_team).name.startswith("eval_")
