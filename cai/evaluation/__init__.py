"""Evaluation: win rates by the constitution judge, refusals, over-refusals, reward models.

* ``metrics`` — pure functions over judgements / texts / scores (``win_rate``,
  ``refusal_rate``, ``reward_accuracy``), Wilson score intervals;
* ``runner`` — ``evaluate_models``: batched generation, one batched judge call;
* ``reward`` — ``RewardScorer``: batched scoring with a trained reward model;
* ``table`` — the readable table and the JSON metrics file.

Nothing heavy is imported here; ``reward`` loads torch only when used.
"""

from __future__ import annotations

from cai.evaluation.metrics import (
    RefusalRate,
    RewardAccuracy,
    RewardStats,
    WinRate,
    outcome,
    refusal_rate,
    reward_accuracy,
    reward_stats,
    wilson_interval,
    win_rate,
)
from cai.evaluation.runner import EvalConfig, as_records, evaluate_models, generate_for_sets
from cai.evaluation.table import format_table, write_metrics


def __getattr__(name: str):
    if name in ("RewardScorer", "reward_model_accuracy", "mean_reward"):
        from cai.evaluation import reward

        return getattr(reward, name)
    raise AttributeError(f"module 'cai.evaluation' has no attribute '{name}'")


__all__ = [
    "EvalConfig", "evaluate_models", "generate_for_sets", "as_records",
    "WinRate", "win_rate", "RefusalRate", "refusal_rate", "RewardAccuracy", "reward_accuracy",
    "RewardStats", "reward_stats", "wilson_interval", "outcome",
    "RewardScorer", "reward_model_accuracy", "mean_reward",
    "format_table", "write_metrics",
]
