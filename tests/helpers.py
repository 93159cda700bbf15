"""Helpers several test modules share (fixtures stay in each module and call these)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the block: tiny models gain nothing from threads, and on a busy
    shared 2-core CPU threads that spin against each other made steps ~5-30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def install_entry_point_plugin(site: Path, monkeypatch: pytest.MonkeyPatch, *, package: str, source: str,
                               group: str, entry: str) -> None:
    """Install ``package`` (one ``__init__.py`` holding ``source``) under ``site`` as an installed
    distribution whose ``group`` entry points are ``entry`` lines: registered the way a user's
    ``pip install``-ed package is, without installing anything."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    dist = site / f"{package}-0.1.dist-info"
    dist.mkdir()
    name = package.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    monkeypatch.syspath_prepend(str(site))


def find_chromium() -> str | None:
    """A headless Chromium: ``$CAI_CHROMIUM``, else the first of the usual names on PATH (None if absent)."""
    for c in (os.environ.get("CAI_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = c and (c if os.path.isabs(c) else shutil.which(c))
        if path and os.path.exists(path):
            return path
    return None
