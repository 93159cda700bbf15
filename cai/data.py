"""Dataset directories out (prompt files in: `cai.prompt_files`, re-exported here).

A dataset directory holds:

* ``data.jsonl`` — good rows, appended while the stage runs (TRL-native columns);
* ``README.md`` — the dataset card (Hugging Face front matter + provenance);
* ``.cai/failures.jsonl`` — rows that failed (raw model text and a reason), never silently dropped;
* ``.cai/cai_dataset.json`` — machine-readable provenance: kind, fingerprint, counts, summary.

cai's own files sit in the hidden ``.cai/`` so that ``load_dataset(OUT)``,
``load_dataset("json", data_dir=OUT)`` and ``trl sft --dataset_name OUT`` read
the rows and nothing else. Directories written before kept them next to
``data.jsonl``; they are still read, and moved on the next write.

Row ids are deterministic hashes of a row's inputs, so rerunning the same command
skips what is done: nothing is lost and nothing duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from cai.errors import DataError
from cai.ids import stable_hash  # noqa: F401 (re-exported)

# Prompt files in (`cai.prompt_files`); imported here for the callers that read both.
from cai.prompt_files import (  # noqa: F401 (re-exported)
    Conversation,
    PromptRecord,
    dedup_ids,
    iter_jsonl_objects,
    load_prompts,
    user_text_lines,
)

log = logging.getLogger(__name__)

# The directory's layout (file names, the preference view) lives in cai.layout, the bottom layer.
from cai.layout import (  # noqa: E402, F401 (re-exported)
    CAI_DIR,
    CARD_FILE,
    CARD_MARKER,
    DATA_FILE,
    FAILURES_FILE,
    LEGACY_FILES,
    LEGACY_META,
    META_FILE,
    QUARANTINE_FILE,
    meta_path,
)

#: Dataset kinds and the command that makes each; training uses this to refuse the wrong kind.
KINDS = {
    "responses": "cai generate responses",
    "sft": "cai generate revisions / cai generate cot",
    "preference": "cai generate preferences / cai generate revisions (preference view)",
    "prompts": "cai generate prompts / cai data dedup",
}


# --- dataset directories ------------------------------------------------------------------


def _repair_tail(path: Path) -> None:
    """Drop a half-written last line left by a kill, so appends stay valid JSONL."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        f.seek(cut)
        f.truncate()


def _quarantine_corrupt_lines(path: Path, quarantine: Path) -> int:
    """Move lines of ``path`` that are not JSON objects into ``quarantine`` (with their line number);
    returns how many. Their rows are then not done, so a resume makes them again, and the file
    loads with ``datasets`` and TRL again."""
    if not path.exists():
        return 0
    good, bad = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                ok = isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                ok = False
            (good if ok else bad).append(line if ok else {"line": lineno, "text": line.rstrip("\n")})
    if not bad:
        return 0
    with quarantine.open("a", encoding="utf-8") as q:
        for item in bad:
            q.write(json.dumps({**item, "quarantined": time.time()}, ensure_ascii=False) + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(good), encoding="utf-8")
    os.replace(tmp, path)
    return len(bad)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return
    with p.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from an interrupted write


def read_rows(directory: str | Path) -> list[dict[str, Any]]:
    return list(read_jsonl(Path(directory) / DATA_FILE))


def is_cai_dataset(directory: str | Path) -> bool:
    return meta_path(directory) is not None


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = meta_path(directory)
    if path is None:
        raise DataError(f"{directory}: not a cai dataset directory (no {META_FILE}); make one with cai generate ...")
    return json.loads(path.read_text(encoding="utf-8"))


def _move_legacy_files(directory: Path) -> None:
    """Move cai's files out of the rows' way, into .cai/ (a directory an older cai wrote)."""
    for old, new in LEGACY_FILES.items():
        if (directory / old).is_file() and not (directory / new).exists():
            (directory / CAI_DIR).mkdir(exist_ok=True)
            os.replace(directory / old, directory / new)


def dataset_kind(directory: str | Path) -> str:
    return read_meta(directory).get("kind", "unknown")


class DatasetWriter:
    """Append-only, resumable writer for one dataset directory.

    ``fingerprint`` is everything that determines the rows (constitution hash,
    template hashes, models, sampling parameters). Reopening a directory made with
    another fingerprint is refused, so a resumed run never mixes settings.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        kind: str,
        fingerprint: dict[str, Any],
        provenance: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        from cai import __version__

        self.dir = Path(directory)
        self.kind = kind
        self.fingerprint = fingerprint
        self.fingerprint_hash = stable_hash(fingerprint, length=64)
        self.provenance = {"cai_version": __version__, **(provenance or {}), **fingerprint}
        self.data_path = self.dir / DATA_FILE
        self.fail_path = self.dir / FAILURES_FILE
        meta_path = self.dir / META_FILE
        try:
            _check_ours(self.dir)
            if overwrite:
                remove_cai_files(self.dir)
            if self.dir.is_dir():
                _move_legacy_files(self.dir)
            (self.dir / CAI_DIR).mkdir(parents=True, exist_ok=True)
            self._open(meta_path, kind, fingerprint)
        except OSError as e:
            raise DataError(
                f"{self.dir}: cannot write a dataset there ({e.strerror or type(e).__name__}); "
                "choose a writable --out directory"
            ) from None

    def _open(self, meta_path: Path, kind: str, fingerprint: dict[str, Any]) -> None:
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text(encoding="utf-8"))
            except ValueError:
                raise DataError(f"{meta_path}: corrupt (not JSON); rerun with --overwrite to start again") from None
            if old.get("fingerprint_hash") != self.fingerprint_hash or old.get("kind") != kind:
                changed = sorted(
                    k for k in set(old.get("fingerprint", {})) | set(fingerprint)
                    if old.get("fingerprint", {}).get(k) != fingerprint.get(k)
                ) or ["kind"]
                raise DataError(
                    f"{self.dir}: holds a dataset made with other settings ({', '.join(changed)} differ); "
                    "use a new --out directory, or --overwrite to start again"
                )
        else:
            self.started = time.time()
            self._write_meta(status="running", counts={}, summary={})
        _repair_tail(self.data_path)
        _repair_tail(self.fail_path)
        moved = _quarantine_corrupt_lines(self.data_path, self.dir / QUARANTINE_FILE)
        if moved:
            log.warning("%s: %d corrupt line(s) moved to %s; their rows are made again", self.data_path, moved,
                        QUARANTINE_FILE)
        self.done_ids: set[str] = {r["id"] for r in read_jsonl(self.data_path) if "id" in r}
        self.failed_ids: set[str] = {r["id"] for r in read_jsonl(self.fail_path) if "id" in r}

    def is_done(self, row_id: str) -> bool:
        """Done or recorded as failed: a resume skips both."""
        return row_id in self.done_ids or row_id in self.failed_ids

    def _append(self, path: Path, rows: Iterable[dict[str, Any]]) -> int:
        n = 0
        with path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        return n

    def write(self, rows: Sequence[dict[str, Any]]) -> int:
        fresh = [r for r in rows if r["id"] not in self.done_ids]
        self.done_ids.update(r["id"] for r in fresh)
        return self._append(self.data_path, fresh)

    def write_failures(self, rows: Sequence[dict[str, Any]]) -> int:
        """Each failure row needs ``id``, ``reason`` and the ``raw`` model text."""
        fresh = [r for r in rows if r["id"] not in self.failed_ids]
        self.failed_ids.update(r["id"] for r in fresh)
        return self._append(self.fail_path, fresh)

    def counts(self) -> dict[str, int]:
        return {"rows": len(self.done_ids), "failed": len(self.failed_ids)}

    def _write_meta(self, *, status: str, counts: dict[str, int], summary: dict[str, Any]) -> None:
        meta = {
            "kind": self.kind,
            "status": status,
            "fingerprint_hash": self.fingerprint_hash,
            "fingerprint": self.fingerprint,
            "provenance": self.provenance,
            "counts": counts,
            "summary": summary,
        }
        tmp = self.dir / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        tmp.replace(self.dir / META_FILE)

    def finalize(self, summary: dict[str, Any] | None = None, *, title: str | None = None) -> dict[str, Any]:
        """Mark complete and write the dataset card. Returns the counts and summary."""
        counts = self.counts()
        summary = dict(summary or {})
        self._write_meta(status="complete", counts=counts, summary=summary)
        if is_cai_card(self.dir / CARD_FILE):
            write_card(self.dir, kind=self.kind, provenance=self.provenance, counts=counts, summary=summary,
                       title=title)
        else:  # a README.md the user put there since: theirs, left alone
            log.warning("%s: not a cai dataset card; left as is (cai_dataset.json holds the provenance)",
                        self.dir / CARD_FILE)
        return {"counts": counts, "summary": summary}


def _check_ours(directory: Path) -> None:
    """Refuse a non-empty directory that cai did not make (no cai_dataset.json): its files are the user's."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise DataError(f"{directory}: is a file, not a directory; choose a directory for --out")
    if is_cai_dataset(directory):
        return
    theirs = sorted(e.name for e in directory.iterdir()
                    if not e.name.startswith(".") and e.name != LEGACY_META + ".tmp")
    if theirs:
        shown = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
        raise DataError(
            f"{directory}: not empty and not a cai dataset directory (it holds {shown}); "
            "cai writes only into a new or empty --out directory, so choose another one"
        )


def remove_cai_files(directory: Path) -> None:
    """What ``--overwrite`` discards: only the files cai wrote, and cai dataset subdirectories.

    Anything else (the user's notes, a README.md that is not a cai card) stays.
    """
    if not is_cai_dataset(directory):
        return
    cai_dir = directory / CAI_DIR
    subs = [*directory.iterdir(), *(cai_dir.iterdir() if cai_dir.is_dir() else ())]
    for sub in subs:  # e.g. the preference view of a revisions dataset (.cai/preference, once preference/)
        if sub.is_dir() and not sub.is_symlink() and sub.name != CAI_DIR and is_cai_dataset(sub):
            remove_cai_files(sub)
            if not any(sub.iterdir()):
                sub.rmdir()
    if is_cai_card(directory / CARD_FILE) and (directory / CARD_FILE).exists():
        (directory / CARD_FILE).unlink()
    for name in (DATA_FILE, FAILURES_FILE, *LEGACY_FILES, META_FILE + ".tmp", LEGACY_META + ".tmp", META_FILE,
                 LEGACY_META):  # the markers last
        (directory / name).unlink(missing_ok=True)
    if (directory / CAI_DIR).is_dir() and not any((directory / CAI_DIR).iterdir()):
        (directory / CAI_DIR).rmdir()


#: The dataset card's first line after its front matter: how cai knows a README.md is its own.


def is_cai_card(path: Path) -> bool:
    """True when ``path`` is absent or a card cai wrote (safe for cai to replace or remove)."""
    if not path.exists():
        return True
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    return CARD_MARKER in head or "\nMade by `cai` " in head  # cards written before the marker


def write_card(directory: Path, **kwargs: Any) -> Path:
    """The dataset card (`cai.dataset_card.write_card`)."""
    from cai.dataset_card import write_card as write

    return write(directory, **kwargs)


# The rows as a `datasets.Dataset` (and TRL's margin column) live in cai.hf_export; imported here for callers.
from cai.hf_export import MARGIN_CAP, export_dataset, preference_margin, to_hf_dataset, with_margin  # noqa: E402, F401 (re-exported)
