"""Pieces shared by the built-in stages: training sections and summary trimming."""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field


class TrainSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(default_factory=dict, description="TRL config fields for this trainer.")
    lora: bool = False
    average_tail: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Save the mean of the weights over this fraction of the final steps instead of the last step's "
        "(cai/training/averaging.py); 0: off."))


def check_trainer(trainer: str | Callable[[Any], str], key: str) -> Callable[[Any, str], None]:
    """A stage check: the section's TRL fields exist and their values build the trainer's config."""

    def check(cfg: Any, source: str) -> None:
        from cai.training import check_config_fields

        section = getattr(cfg.stages, key)
        name = trainer(section) if callable(trainer) else trainer
        check_config_fields(name, section.config, f"{source}: stages.{key}.config")

    return check


def data_stage(cfg: Any, stage: str, candidates: tuple[str, ...], pipeline: list[str] | None = None) -> str:
    """The stage whose rows ``stage`` trains on in ``pipeline`` (default: round 1's): its section's ``data``
    if that stage comes before it, else (``auto``) the first of ``candidates`` that does; "" when none does."""
    want = getattr(cfg.stages, stage.replace("-", "_")).data
    pipeline = cfg.pipeline if pipeline is None else pipeline
    present = [s for s in candidates if s in pipeline[: pipeline.index(stage)]]
    if want != "auto":
        return want if want in present else ""
    return present[0] if present else ""


def check_data_trainer(stage: str, trainer: str, candidates: tuple[str, ...], what: str) -> Callable[[Any, str], None]:
    """A stage check: its TRL fields, and a stage it can train on (``what`` of ``candidates``) before it."""

    def check(cfg: Any, source: str) -> None:
        check_trainer(trainer, stage)(cfg, source)
        pipelines = [p for p in [cfg.pipeline, *cfg.pipeline_from.values()] if stage in p]
        if any(not data_stage(cfg, stage, candidates, p) for p in pipelines):
            from cai.errors import UserInputError

            raise UserInputError(f"{source}: stages.{stage} trains on {what} of {' or '.join(candidates)}; put that "
                                 f"stage before {stage} in the pipeline (or fix stages.{stage}.data)")

    return check


def counts(result: dict[str, Any]) -> dict[str, Any]:
    return {"counts": result.get("counts", {}), **{k: v for k, v in result.get("summary", {}).items()
                                                   if k in ("new_rows", "new_failed", "completion_tokens_per_s")}}


def train_summary(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("steps", "seconds", "final_loss", "eval", "final_metrics", "weight_averaging")
    return {k: summary[k] for k in keep if k in summary}
