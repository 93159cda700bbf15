"""Progress: one place, so every long loop looks the same and a log file stays readable.

On a terminal (stderr is a TTY) loops draw tqdm bars. Anywhere else (``make demo >
log``, CI, a pipe) a bar would write carriage returns and cursor escapes into the
file, so the outermost loop writes one plain line when it ends (and one a minute
while it runs) and nested loops write nothing. ``CAI_NO_PROGRESS=1`` turns both off.
`quiet_library_progress` makes transformers, datasets and huggingface_hub follow
the same rule for their own bars (weight loading, dataset maps, shard writing).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

#: Seconds between a running loop's lines when stderr is not a terminal.
LINE_EVERY_S = 60.0

_depth = 0  # how many progress loops are open (only the outermost writes lines off a terminal)


def progress_enabled(requested: bool = True) -> bool:
    """Whether progress is shown at all (``CAI_NO_PROGRESS`` turns it off everywhere)."""
    return requested and os.environ.get("CAI_NO_PROGRESS", "") == ""


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal, where bars can redraw in place."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream (click's test runner) is no terminal
        return False


def bars_enabled(requested: bool = True) -> bool:
    """Whether to draw live bars (a terminal and progress on): what to pass as ``use_tqdm``/``disable_tqdm``."""
    return progress_enabled(requested) and on_terminal()


def quiet_library_progress() -> None:
    """Turn off the bars of transformers, datasets and huggingface_hub when no terminal would draw them.

    Their bars honour environment variables read at import, so set those (a user's own
    setting wins) and tell any library already imported.
    """
    if bars_enabled():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def echo_line(text: str) -> None:
    """Write one line to stderr without breaking a bar that is being drawn."""
    if bars_enabled() and _depth:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def _rate(n: float, seconds: float) -> str:
    return f"{n / seconds:.3g}/s" if seconds > 0 and n else "0/s"


class LineProgress:
    """The off-terminal stand-in for a tqdm bar: the same ``update``, plain lines instead of redraws."""

    def __init__(self, *, total: int, desc: str, unit: str, write: bool, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.write = total, desc, unit, write
        self.n = self._skip = initial  # rows a resumed loop found done: counted, but not in its rate
        self.started = self.last_line = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.write and now - self.last_line >= LINE_EVERY_S and self.n < self.total:
            self.last_line = now
            echo_line(self._line(now, done=False))

    def _line(self, now: float, *, done: bool) -> str:
        seconds = now - self.started
        worked = self.n - self._skip
        resumed = f", {self._skip} done before" if self._skip else ""
        state = "" if done else " so far"
        units = self.unit if self.unit.endswith("s") or self.total == 1 else self.unit + "s"
        return (f"{self.desc}: {self.n}/{self.total} {units}{state} in {seconds:.1f}s "
                f"({_rate(worked, seconds)}{resumed})")

    def close(self) -> None:
        if self.write:
            echo_line(self._line(time.monotonic(), done=True))


@contextmanager
def progress_bar(*, total: int, desc: str, unit: str = "it", enabled: bool = True,
                 initial: int = 0) -> Iterator[Any]:
    """A progress object with ``update(n)``: a tqdm bar on a terminal, plain lines elsewhere (see the module doc).

    ``initial``: what a resumed loop found already done (counted, not part of the rate).
    """
    global _depth
    if bars_enabled(enabled):
        from tqdm.auto import tqdm

        bar: Any = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr,
                        dynamic_ncols=True, leave=False)
    else:
        bar = LineProgress(total=total, desc=desc, unit=unit, initial=initial,
                          write=progress_enabled(enabled) and _depth == 0)
    _depth += 1
    try:
        yield bar
    finally:
        _depth -= 1
        bar.close()


__all__ = ["progress_bar", "progress_enabled", "bars_enabled", "on_terminal", "quiet_library_progress",
           "echo_line", "LineProgress", "LINE_EVERY_S"]
