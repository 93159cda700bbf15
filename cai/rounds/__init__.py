"""Iterative self-improvement rounds: the orchestrator behind `cai run`.

Each round runs the config's ``pipeline``, a list of registered stages (see
``spec``); the default is the card's chain:

1. ``revisions``   critique-and-revise the red-team prompts with policy_k
2. ``helpful``     policy_k's own responses to helpful prompts (so SFT does not learn to refuse all)
3. ``sft-data``    mix of 1 and 2 (``stages.sft_data.helpful_fraction``)
4. ``sft``         SFT of policy_k on 3
5. ``preferences`` AI preference labels, SFT model as policy, the configured feedback model
6. ``reward``      reward model on 5 (soft labels)
7. ``rl``          PPO (default), RLOO, GRPO or DPO -> policy_{k+1}
8. ``eval``        policy_{k+1} against round 0 and round k-1 on held-out prompts

Modules: ``spec`` (what a stage is, the registry), ``config`` (the run config),
``context`` (what a stage is handed), ``runner`` (keys, resume, manifest),
``manifest``, and ``stages/<name>.py`` for each built-in stage.
"""

from __future__ import annotations

from cai.rounds.config import RunConfigBase, check_run_config, load_run_config, run_config_class
from cai.rounds.manifest import MANIFEST, RunManifest, read_manifest, run_status, status_json
from cai.rounds.runner import Run, run_rounds
from cai.rounds.spec import DEFAULT_PIPELINE, RoundStage, get_stage, register_stage, stage_registry


def __getattr__(name: str):
    if name == "RunConfig":  # the config class for the stages registered now
        return run_config_class()
    raise AttributeError(f"module 'cai.rounds' has no attribute '{name}'")


__all__ = ["RunConfig", "RunConfigBase", "Run", "RunManifest", "RoundStage", "MANIFEST", "DEFAULT_PIPELINE",
           "load_run_config", "check_run_config", "run_config_class", "run_rounds", "run_status", "read_manifest", "status_json",
           "register_stage", "stage_registry", "get_stage"]
