"""Checkpoints a killed training run resumes from: every few minutes of training, the last two kept.

The Trainer's own checkpoint (weights, optimizer, scheduler, RNG states, trainer state
and data position) plus cai's tail-averaging state, then a ``cai_complete`` marker
written last: a checkpoint without it was cut off mid-save and is never resumed from
(the one before it is, which is why two are kept). Saved on a time interval rather
than a step interval so that one setting fits a 3-second step on a laptop and a
30-second one on a cluster: at most `EVERY_SECONDS` of training is redone after a kill.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from cai.training.config import CHECKPOINT_SUBDIR

#: Seconds of training between checkpoints (the most work a kill can cost).
EVERY_SECONDS = 120.0
#: Written into a checkpoint once everything in it is on disk.
COMPLETE = "cai_complete"
#: Checkpoints kept: the newest may be cut off by a kill, the one before it is whole.
KEEP = 2


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_SUBDIR


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``OUT/checkpoints`` (None: nothing to resume from)."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return None
    done = [d for d in root.glob("checkpoint-*") if (d / COMPLETE).is_file() and d.name.split("-")[-1].isdigit()]
    return max(done, key=lambda d: int(d.name.split("-")[-1])) if done else None


def clear_checkpoints(out_dir: str | Path) -> None:
    shutil.rmtree(checkpoint_dir(out_dir), ignore_errors=True)


class Checkpointer:
    """A transformers ``TrainerCallback`` (mixed in by `checkpointer`): asks for a save every
    ``every_seconds`` (or ``every_steps``) and marks each checkpoint complete after the others saved."""

    def __init__(self, every_seconds: float | None, every_steps: int | None, extra: list[Any]) -> None:
        self.every_seconds, self.every_steps, self.extra = every_seconds, every_steps, extra
        self._last = time.monotonic()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            return  # the final model is saved anyway
        due = (self.every_steps and state.global_step % self.every_steps == 0) or \
              (self.every_seconds is not None and time.monotonic() - self._last >= self.every_seconds)
        if due:
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = time.monotonic()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        for cb in self.extra:  # callbacks with state of their own (tail averaging)
            cb.save_state(folder)
        (folder / COMPLETE).write_text("", encoding="utf-8")


def checkpointer(every_seconds: float | None = EVERY_SECONDS, every_steps: int | None = None,
                 extra: list[Any] | None = None) -> Any:
    from transformers import TrainerCallback

    cls = type("CheckpointCallback", (Checkpointer, TrainerCallback), {})
    return cls(every_seconds, every_steps, list(extra or []))


__all__ = ["COMPLETE", "EVERY_SECONDS", "KEEP", "checkpointer", "checkpoint_dir", "clear_checkpoints",
           "last_checkpoint"]
