"""One `train(spec, ...)` for every trainer: checks first, then seed, build, train, save.

Order matters: the spec's option check, the TRL config (fields and values), and
the dataset kind and rows are all checked before any model loads, so a bad
setting costs nothing. Seeds are set before the models load, so a freshly
initialised head (the reward model's score layer) or LoRA adapter starts the
same on every run: same seed, same data, same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.training.common import (
    TrainResult,
    base_summary,
    data_provenance,
    load_prompt_records,
    policy_trainer,
    require_kind,
    resumes,
    run_training,
    save_trained,
)
from cai.training.averaging import check_average_tail, tail_average_callback
from cai.training.config import build_config
from cai.training.logs import attach_step_log, quiet_trl_warnings
from cai.training.spec import TrainerSpec, TrainJob, get_trainer
from cai.training.throughput import count_tokens, throughput


def load_input(job: TrainJob) -> list[Any]:
    """The rows (or prompt records) the spec's kind says to read; fills ``job.info`` with their provenance."""
    spec = job.spec
    if spec.data_kind == "prompts":
        records, job.info = load_prompt_records(job.source, limit=job.options.get("limit"))
        return records
    from cai.data import read_rows

    meta = require_kind(job.source, spec.data_kind, spec.command)
    raw = read_rows(job.source)
    job.info = data_provenance(job.source, meta, len(raw))
    return raw


def seed_everything(cfg: Any) -> None:
    """Seed python, numpy and torch from the config (full determinism when it asks for it)."""
    from transformers import enable_full_determinism, set_seed

    if getattr(cfg, "full_determinism", False):
        enable_full_determinism(cfg.seed)
    else:
        set_seed(cfg.seed)


def build_trainer(spec: str | TrainerSpec, data: Any, model: str, out_dir: str | Path, *,
                  config: dict[str, Any] | None = None, config_file: str | Path | None = None,
                  lora: bool | dict[str, Any] = False,
                  **kwargs: Any) -> tuple[Any, TrainJob]:
    """The spec's TRL trainer, ready to train, and its job (tests inspect both).

    ``kwargs`` are the spec's own options (``spec.options``) and config fields (overrides).
    """
    spec = get_trainer(spec)
    options = {**spec.options, **{k: kwargs.pop(k) for k in list(kwargs) if k in spec.options}}
    job = TrainJob(spec=spec, source=data, model=model, out_dir=Path(out_dir), lora=lora, options=options)
    if spec.check is not None:
        spec.check(job)
    job.config, job.settings = build_config(spec.config_cls(), out_dir, defaults=dict(spec.defaults), config=config,
                                            config_file=config_file, overrides=kwargs)
    raw = load_input(job)
    job.rows = spec.rows(raw, job)
    seed_everything(job.config)
    return (spec.build or policy_trainer)(job), job


def train(spec: str | TrainerSpec, data: Any, model: str, out_dir: str | Path, *, resume: bool = False,
          checkpoint_seconds: float | None = None, checkpoint_steps: int | None = None,
          **kwargs: Any) -> TrainResult:
    """Train ``model`` with a registered trainer (a name or a `TrainerSpec`) on ``data``; save to ``out_dir``.

    ``data`` is what the spec's ``data_kind`` says: a cai dataset directory, or a
    prompt set (path or list of PromptRecord). ``kwargs`` are those of `build_trainer`:
    ``config`` (a dict of fields), ``config_file`` (YAML), ``lora``, the spec's own
    options, and TRL config fields as overrides (``max_steps=3``, ``learning_rate=1e-4``);
    ``average_tail`` (every trainer): save the mean of the weights over that fraction of the
    final steps instead of the last step's (`cai.training.averaging`).

    Checkpoints go to ``OUT/checkpoints`` every ``checkpoint_seconds`` of training (default
    `cai.training.checkpoints.EVERY_SECONDS`) or ``checkpoint_steps`` steps, and are removed once
    the model is saved. ``resume=True`` continues from the newest complete one (optimizer,
    scheduler, RNG, data position and averaging state included), or starts over if there is none.
    """
    from cai.training import checkpoints as ckpt

    name = spec if isinstance(spec, str) else spec.name
    average_tail = check_average_tail(kwargs.pop("average_tail", 0.0), f"cai train {name}")
    start_from = ckpt.last_checkpoint(out_dir) if resume else None
    if start_from is None:
        ckpt.clear_checkpoints(out_dir)
    with quiet_trl_warnings():
        trainer, job = build_trainer(spec, data, model, out_dir, **kwargs)
        if getattr(job.config, "save_total_limit", None) is None:
            job.config.save_total_limit = ckpt.KEEP
        # One line per logging step on the console, every log dict in OUT/train_log.jsonl.
        attach_step_log(trainer, job.spec.name, out_dir)
        averager = tail_average_callback(average_tail) if average_tail else None
        if averager is not None:
            averager.resume_from = start_from
            trainer.add_callback(averager)
        if resumes(trainer):
            every = checkpoint_seconds if checkpoint_seconds is not None or checkpoint_steps else ckpt.EVERY_SECONDS
            trainer.add_callback(ckpt.checkpointer(every, checkpoint_steps, [averager] if averager else []))
        else:  # its own loop (TRL's PPO): it starts over after a kill
            start_from = None
            if averager is not None:
                averager.resume_from = None
        counts = count_tokens(trainer)
        seconds = run_training(trainer, start_from)
    summary = base_summary(job.spec.name, model=model, settings=job.settings, config=job.config, lora=job.lora,
                           data=job.info, seconds=seconds, trainer=trainer, loss_key=job.spec.loss_key)
    summary.update(job.spec.summary(trainer, job))
    if start_from is not None:
        summary["resumed_from_step"] = int(start_from.name.split("-")[-1])
    model_ = getattr(trainer, job.spec.model_attr)
    rate = throughput(counts, job.spec.name, sum(p.numel() for p in model_.parameters()),
                      bf16=bool(getattr(job.config, "bf16", False)), device=model_.device.type)
    if rate is not None:
        summary["throughput"] = rate
    if averager is not None:
        summary["weight_averaging"] = averager.summary()
    result = save_trained(getattr(trainer, job.spec.model_attr), job.tokenizer, out_dir, summary)
    if job.settings.get("save_strategy", "no") == "no":  # cai's own checkpoints; ones the user asked for stay
        ckpt.clear_checkpoints(out_dir)
    return result


__all__ = ["train", "build_trainer", "load_input", "seed_everything"]
