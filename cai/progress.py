"""Progress bars: one place, so every long loop looks the same and can be silenced."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm.auto import tqdm


def progress_enabled(requested: bool = True) -> bool:
    return requested and os.environ.get("CAI_NO_PROGRESS", "") == ""


@contextmanager
def progress_bar(*, total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[tqdm]:
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not progress_enabled(enabled),
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
    try:
        yield bar
    finally:
        bar.close()
