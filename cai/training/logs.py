"""What a training run writes while it trains: one short line per logging step, the full log on disk.

TRL's trainers print every log dict as it is (PPO's has 18 keys and wraps over
three lines) through transformers' ``ProgressCallback``/``PrinterCallback``.
`attach_step_log` swaps those for `StepLog`: on the console one line per logging
step with the few figures a person watches (a tqdm bar under it on a terminal,
plain lines in a log file, see `cai.progress`), and every log dict, whole, appended
to ``OUT/train_log.jsonl`` as it arrives, so a run that dies mid-way keeps its
curve (``training_summary.json`` holds the same history once training ends).

`quiet_trl_warnings` filters, around our calls into TRL only, the deprecation
warnings TRL's own code triggers in transformers (nothing the user can act on).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cai.progress import bars_enabled, echo_line, progress_enabled

#: Where the full per-step log goes, in the trained model's directory.
TRAIN_LOG_FILE = "train_log.jsonl"

#: The figures worth a glance, in the order shown (the first few present are shown).
CONSOLE_KEYS = (
    "loss", "eval_loss", "accuracy", "eval_accuracy", "rewards/accuracies", "rewards/margins", "margin",
    "objective/scores", "objective/kl", "objective/entropy", "loss/policy_avg", "loss/value_avg",
    "reward", "kl", "entropy", "mean_token_accuracy", "learning_rate", "grad_norm",
)
#: Short names for the console (the file keeps TRL's).
SHORT = {"learning_rate": "lr", "rewards/accuracies": "acc", "rewards/margins": "margin",
         "objective/scores": "score", "objective/kl": "kl", "objective/entropy": "entropy",
         "loss/policy_avg": "policy_loss", "loss/value_avg": "value_loss", "mean_token_accuracy": "token_acc"}
MAX_SHOWN = 6


def _num(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def step_line(name: str, step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """The console line for one log dict: the end-of-training dict gets its own wording."""
    if "train_runtime" in logs:
        loss = next((logs[k] for k in ("train_loss",) if k in logs), None)
        tail = f", train_loss {_num(loss)}" if loss is not None else ""
        return f"{name}: trained {step} steps in {float(logs['train_runtime']):.1f}s{tail}"
    shown = [f"{SHORT.get(k, k)} {_num(logs[k])}" for k in CONSOLE_KEYS if k in logs][:MAX_SHOWN]
    of = f"/{max_steps}" if max_steps and max_steps > 0 else ""
    what = "eval at step" if all(k.startswith("eval_") or k in ("epoch", "step") for k in logs) else "step"
    return f"{name} {what} {step}{of}: " + ", ".join(shown or ["(no figures)"])


def resumed_log(path: Path, step: int) -> list[dict[str, Any]]:
    """The log entries of steps up to ``step`` (a torn last line, from a kill mid-write, is dropped)."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
            out.append(entry)
    return out


class StepLog:
    """A transformers ``TrainerCallback`` (duck-typed, so importing this imports no transformers).

    Built by `attach_step_log`, which makes it a real subclass at first use.
    """

    def __init__(self, name: str, out_dir: str | Path) -> None:
        self.name = name
        self.path = Path(out_dir) / TRAIN_LOG_FILE
        self.bar: Any = None
        self._started = time.time()

    # transformers calls these with (args, state, control, **kwargs)
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A fresh run starts the file over; a run resumed from a checkpoint keeps the steps before it
        # (the ones after it are trained again and logged again), and its clock goes on from there.
        kept = resumed_log(self.path, state.global_step) if state.global_step else []
        self.path.write_text("".join(json.dumps(e, default=str) + "\n" for e in kept), encoding="utf-8")
        self._started = time.time() - (float(kept[-1].get("time", 0.0)) if kept else 0.0)
        if bars_enabled() and not getattr(args, "disable_tqdm", False):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps or None, desc=self.name, unit="step", dynamic_ncols=True,
                            leave=False)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        logs = {k: v for k, v in logs.items() if k != "total_flos"}
        if self.path.exists():  # opened per entry: an evaluation after on_train_end is logged too
            entry = {"step": state.global_step, "time": round(time.time() - self._started, 3), **logs}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, default=str) + "\n")
        if not progress_enabled():
            return
        line = step_line(self.name, state.global_step, state.max_steps, logs)
        if self.bar is not None:
            self.bar.write(line)
        else:
            echo_line(line)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if state.is_world_process_zero and progress_enabled():
            echo_line(f"{self.name}: full training log in {self.path}")


def attach_step_log(trainer: Any, name: str, out_dir: str | Path) -> Any:
    """Replace the trainer's console callbacks with a `StepLog`; returns the callback added."""
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback

    cls = type("StepLogCallback", (StepLog, TrainerCallback), {})
    for old in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(old)
    try:  # the notebook bar is what transformers picks inside Jupyter
        from transformers.utils.notebook import NotebookProgressCallback

        trainer.remove_callback(NotebookProgressCallback)
    except ImportError:
        pass
    callback = cls(name, out_dir)
    trainer.add_callback(callback)
    return callback


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


#: What TRL's own code (trl 1.12 on transformers 5.2x) makes transformers and torch say, by logger:
#: SFTTrainer builds its output with ``past_key_values=``; PPOTrainer passes a generation config
#: with extra arguments, asks ``is_gradient_checkpointing`` and takes the variance of one value
#: when a minibatch holds one sequence. None of it is about the user's settings or cai's code.
TRL_LOGGED = {
    "transformers.utils.generic": ("`past_key_values`/`cache_params` are deprecated",),
    "transformers.generation.utils": ("Passing `generation_config` together with generation-related",),
}
TRL_WARNINGS = ((FutureWarning, r".*`is_gradient_checkpointing` is deprecated"),
                (UserWarning, r"var\(\): degrees of freedom is <= 0"))


@contextmanager
def quiet_trl_warnings() -> Iterator[None]:
    """Hide, while TRL trains, the deprecations its own code triggers (see `TRL_LOGGED`, `TRL_WARNINGS`)."""
    filters = [(logging.getLogger(name), _DropMessages(*fragments)) for name, fragments in TRL_LOGGED.items()]
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for category, pattern in TRL_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern, category=category)
            yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)


__all__ = ["StepLog", "attach_step_log", "quiet_trl_warnings", "step_line", "TRAIN_LOG_FILE"]
