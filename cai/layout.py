"""Where things are in a cai dataset directory: the files and folders every layer agrees on.

The bottom of the package (it imports nothing from cai): `cai.data` writes these
paths, the dataset card and the Hub export read them, training looks for the
preference view, and none of them has to import another to learn a file name.
"""

from __future__ import annotations

from pathlib import Path

#: The rows, one JSON object a line (what `datasets` loads).
DATA_FILE = "data.jsonl"
#: The dataset card.
CARD_FILE = "README.md"
CARD_MARKER = "<!-- cai dataset card: cai rewrites this file; put your own notes elsewhere -->"
#: Hidden from `datasets`' file patterns, so loaders see only the rows.
CAI_DIR = ".cai"
FAILURES_FILE = f"{CAI_DIR}/failures.jsonl"
#: Lines of data.jsonl that were not JSON (a disk fault, a hand edit), moved aside on resume.
QUARANTINE_FILE = f"{CAI_DIR}/quarantine.jsonl"
META_FILE = f"{CAI_DIR}/cai_dataset.json"
LEGACY_META = "cai_dataset.json"
#: Where directories written before ``.cai/`` kept these files (read, and moved by the next writer).
LEGACY_FILES = {LEGACY_META: META_FILE, "failures.jsonl": FAILURES_FILE}
#: A revisions dataset's revision-over-initial pairs, a preference dataset of their own.
PREFERENCE_DIR = f"{CAI_DIR}/preference"
#: Where cai before this layout wrote the view (read if it is all there is, removed on the next write).
LEGACY_PREFERENCE_DIR = "preference"


def meta_path(directory: str | Path) -> Path | None:
    """The directory's cai_dataset.json (in .cai/, or where older cai versions wrote it); None if neither."""
    for path in (Path(directory) / META_FILE, Path(directory) / LEGACY_META):
        if path.is_file():
            return path
    return None


def preference_view(out_dir: str | Path) -> Path:
    """The preference view of revisions dataset ``out_dir`` (an older run's ``preference/`` if only that exists)."""
    out_dir = Path(out_dir)
    current, legacy = out_dir / PREFERENCE_DIR, out_dir / LEGACY_PREFERENCE_DIR
    if not current.is_dir() and legacy.is_dir() and meta_path(legacy) is not None:
        return legacy
    return current


__all__ = ["CAI_DIR", "CARD_FILE", "CARD_MARKER", "DATA_FILE", "FAILURES_FILE", "LEGACY_FILES", "LEGACY_META",
           "LEGACY_PREFERENCE_DIR", "META_FILE", "PREFERENCE_DIR", "QUARANTINE_FILE", "meta_path", "preference_view"]
