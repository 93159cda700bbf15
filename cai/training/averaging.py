"""Tail weight averaging: the saved model is the mean of the weights over the last steps of training.

Why: at a constant learning rate the last iterate of SGD/Adam wanders around the
region the loss has settled in, and which point of that wander training stops at
decides a lot at this model size: which borderline prompt gets a refusal. The mean
of the last iterates (Polyak-Ruppert averaging; SWA, Izmailov et al. 2018; LAWA,
Kaddour 2022) sits nearer the centre of that region and costs one fp32 copy of the
trainable weights and one pass over them per step. ``average_tail: 0.5`` averages
the weights after each of the last half of the optimizer steps.
"""

from __future__ import annotations

import math
from typing import Any

from cai.errors import UserInputError


def check_average_tail(value: Any, where: str) -> float:
    """The fraction, checked: a number in [0, 1) (0: off, the last iterate as before)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise UserInputError(f"{where}: average_tail must be a number from 0 (off) up to but not including 1, "
                             f"the fraction of final steps whose weights are averaged; got {value!r}")
    return float(value)


def first_averaged_step(max_steps: int, fraction: float) -> int:
    """The first optimizer step (1-based) whose weights join the mean: the last ``fraction`` of ``max_steps``."""
    return max(1, max_steps - max(1, math.floor(max_steps * fraction)) + 1)


class TailAverage:
    """A transformers ``TrainerCallback`` (mixed in by `tail_average_callback`) keeping the running mean."""

    STATE_FILE = "cai_tail_average.pt"

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.start = 0
        self.count = 0
        self._mean: list[Any] = []
        self._params: list[Any] = []
        #: A checkpoint the run resumes from: its saved mean is loaded at the start of training.
        self.resume_from: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.start = first_averaged_step(state.max_steps, self.fraction)
        self._params = [p for p in model.parameters() if p.requires_grad]
        if self.resume_from is not None:
            self.load_state(self.resume_from)

    def save_state(self, folder: Any) -> None:
        """The running mean and its count, into a checkpoint folder (`cai.training.checkpoints`)."""
        import torch

        torch.save({"count": self.count, "mean": self._mean}, f"{folder}/{self.STATE_FILE}")

    def load_state(self, folder: Any) -> None:
        import os

        import torch

        path = f"{folder}/{self.STATE_FILE}"
        if os.path.isfile(path):
            saved = torch.load(path, weights_only=True)
            self.count, self._mean = int(saved["count"]), list(saved["mean"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

        if state.global_step < self.start:
            return
        self.count += 1
        with torch.no_grad():
            if not self._mean:
                self._mean = [p.detach().float().clone() for p in self._params]
            else:  # mean_n = mean_{n-1} + (p - mean_{n-1}) / n
                for m, p in zip(self._mean, self._params):
                    m.add_(p.detach().float() - m, alpha=1.0 / self.count)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

        if not self._mean:
            return
        with torch.no_grad():
            for m, p in zip(self._mean, self._params):
                p.copy_(m.to(p.dtype))
        self._mean = []

    def summary(self) -> dict[str, Any]:
        return {"average_tail": self.fraction, "averaged_from_step": self.start, "averaged_steps": self.count}


def tail_average_callback(fraction: float) -> Any:
    from transformers import TrainerCallback

    cls = type("TailAverageCallback", (TailAverage, TrainerCallback), {})
    return cls(fraction)


__all__ = ["check_average_tail", "first_averaged_step", "tail_average_callback", "TailAverage"]
