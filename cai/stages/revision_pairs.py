"""The revision ≻ initial preference view of a revisions dataset (``label_source: revision``).

It lives in ``OUT/.cai/preference/``, not beside ``data.jsonl``: ``datasets``
skips hidden directories, so ``load_dataset('json', data_dir=OUT)`` reads only
the SFT rows (a ``preference/`` subdirectory made it read both, with mismatched
columns). The dataset card names it as its ``preference`` config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.data import DatasetWriter, is_cai_dataset, read_jsonl, remove_cai_files
from cai.layout import LEGACY_PREFERENCE_DIR, PREFERENCE_DIR, preference_view  # noqa: F401 (re-exported)


def preference_row(row: dict[str, Any]) -> dict[str, Any]:
    """revision ≻ initial, as a TRL explicit-prompt conversational preference row."""
    return {
        "id": row.get("source_id", row["id"]),
        "prompt": row["messages"][:-1],
        "chosen": [{"role": "assistant", "content": row["revision"]}],
        "rejected": [{"role": "assistant", "content": row["initial_response"]}],
        "p_chosen": 1.0,
        "principle_ids": row["principle_ids"],
        "label_source": "revision",
        "source": "revision_over_initial",
    }


def write_preference_view(out_dir: str | Path, fp: dict[str, Any], provenance_: dict[str, Any]) -> int:
    """Rebuild the view (`PREFERENCE_DIR`) from data.jsonl (streamed), so it always matches the SFT rows."""
    out_dir = Path(out_dir)
    legacy = out_dir / LEGACY_PREFERENCE_DIR
    if legacy.is_dir() and not legacy.is_symlink() and is_cai_dataset(legacy):
        # cai's own older copy: left there, load_dataset(data_dir=OUT) would read it (a user's files stay)
        remove_cai_files(legacy)
        if not any(legacy.iterdir()):
            legacy.rmdir()
    writer = DatasetWriter(out_dir / PREFERENCE_DIR, kind="preference", fingerprint=fp,
                           provenance=provenance_, overwrite=True)
    n = 0
    chunk: list[dict[str, Any]] = []
    for row in read_jsonl(out_dir / "data.jsonl"):
        if row.get("final", True):
            chunk.append(preference_row(row))
        if len(chunk) >= 256:
            n += writer.write(chunk)
            chunk = []
    n += writer.write(chunk)
    writer.finalize({"pairs": n, "derived_from": "../../data.jsonl"},
                    title="cai revisions: preference view (revision ≻ initial)")
    return n
