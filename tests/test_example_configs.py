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


def test_self_improve_continues_a_finished_quickstart(monkeypatch, tmp_path):
    """self-improve's round 1 is the quickstart's, setting for setting, so `--resume --rounds 3` on a finished
    quickstart run reruns none of its training (only stages reading the feedback model or the pair set)."""
    from cai.rounds.runner import Run

    monkeypatch.chdir(ROOT)
    quick = load_run_config(ROOT / "examples/configs/quickstart.yaml")
    si = load_run_config(ROOT / "examples/configs/self-improve.yaml")
    assert si.pipeline_of(1) == quick.pipeline
    q, s = Run(quick, tmp_path / "q"), Run(si, tmp_path / "s")
    for name in quick.pipeline:
        stage = get_stage(name)
        reads_feedback = {"models.feedback", "prompts.labelled_pairs"} & set(stage.uses)
        if not reads_feedback:
            assert q._key(1, stage)[0] == s._key(1, stage)[0], name
