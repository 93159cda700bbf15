"""A user's prompt files in: .jsonl, .csv, .txt, a saved HF dataset or a cai dataset directory.

Every prompt becomes a ``PromptRecord`` whose id is a hash of its conversation (unless
the file gives one), so rerunning a command on the same file skips what is done. A bad
file stops with a one-line ``DataError`` naming the file and line, never a traceback.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cai.errors import DataError
from cai.ids import stable_hash
from cai.layout import DATA_FILE  # noqa: F401 (a directory holding it is read as a prompt set)

Conversation = list[dict[str, str]]



@dataclass
class PromptRecord:
    """One prompt: its conversation so far (ending with a user turn) and any extra fields."""

    messages: Conversation
    id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = stable_hash(self.messages)

    @property
    def text(self) -> str:
        """The last user message: what a one-turn prompt set calls 'prompt'."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def _record_from_obj(obj: Any, where: str) -> PromptRecord:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with a 'prompt' or 'messages' field")
    extra = {k: v for k, v in obj.items() if k not in ("prompt", "messages", "id")}
    if isinstance(obj.get("messages"), list):
        msgs = obj["messages"]
        ok = all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in msgs
        )
        if not msgs or not ok or msgs[-1]["role"] != "user":
            raise DataError(
                f"{where}: 'messages' must be a list of {{role, content}} ending with a user turn"
            )
        messages = [{"role": m["role"], "content": m["content"]} for m in msgs]
    elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
        messages = [{"role": "user", "content": obj["prompt"].strip()}]
    else:
        raise DataError(f"{where}: no 'prompt' (non-empty text) or 'messages' field; add one")
    rid = str(obj["id"]) if obj.get("id") not in (None, "") else ""
    return PromptRecord(messages=messages, id=rid, extra=extra)


def user_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) for each line of a user's text file.

    UTF-8, with or without a byte-order mark. A file in another encoding, or a binary
    one, stops with a one-line DataError naming the file and line, not a traceback.
    """
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__}); check the path") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise DataError(f"{path}: is UTF-16 text; save it as UTF-8 (most editors: 'Save with encoding')")
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
            if b"\x00" in raw:
                raise DataError(
                    f"{path}:{lineno}: holds a NUL byte, so it is a binary file, not text; "
                    "give a UTF-8 .jsonl, .csv or .txt prompt file"
                )
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "save the file as UTF-8"
                ) from None


def iter_jsonl_objects(path: Path) -> Iterator[tuple[str, Any]]:
    """(``path:line``, parsed object) for each non-blank line of a user's JSONL file.

    Unlike ``read_jsonl`` (our own, possibly torn files), a bad line here is the user's
    to fix, so it stops with its line number.
    """
    for lineno, line in user_text_lines(path):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); one JSON object per line") from None


def load_prompts(path: str | Path, *, limit: int | None = None) -> list[PromptRecord]:
    """Load a prompt set: .jsonl, .csv, .txt, a saved HF dataset, or a cai dataset directory."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: prompt file not found; check the path")
    records: list[PromptRecord] = []
    wheres: list[str] = []  # where each record came from, for errors about two of them
    if p.is_dir():
        if (p / DATA_FILE).is_file():  # a cai dataset directory: its rows
            return load_prompts(p / DATA_FILE, limit=limit)
        try:
            import datasets

            ds = datasets.load_from_disk(str(p))
        except Exception as e:  # datasets raises several types for a non-dataset dir
            raise DataError(f"{p}: not a saved Hugging Face dataset ({e}); use save_to_disk output") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        for i, obj in enumerate(ds):
            records.append(_record_from_obj(obj, f"{p}[row {i}]"))
            wheres.append(f"row {i}")
            if limit and len(records) >= limit:
                break
    elif p.suffix == ".jsonl" or p.suffix == ".json":
        for where, obj in iter_jsonl_objects(p):
            records.append(_record_from_obj(obj, where))
            wheres.append(f"line {where.rsplit(':', 1)[1]}")
            if limit and len(records) >= limit:
                break
    elif p.suffix == ".csv":
        reader = csv.DictReader(line for _, line in user_text_lines(p))
        try:
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise DataError(f"{p}:1: CSV needs a 'prompt' column in its header row")
            for obj in reader:
                where = f"{p}:{reader.line_num}"
                records.append(_record_from_obj({k: v for k, v in obj.items() if k}, where))
                wheres.append(f"line {reader.line_num}")
                if limit and len(records) >= limit:
                    break
        except csv.Error as e:
            raise DataError(f"{p}:{reader.line_num}: malformed CSV ({e}); check the quoting on that line") from None
    elif p.suffix == ".txt":
        for _, line in user_text_lines(p):
            if line.strip():
                records.append(PromptRecord(messages=[{"role": "user", "content": line.strip()}]))
                if limit and len(records) >= limit:
                    break
    else:
        raise DataError(f"{p}: unknown prompt file type; use .jsonl, .csv, .txt or a dataset directory")
    if not records:
        raise DataError(f"{p}: no prompts found; the file is empty")
    _check_explicit_ids(p, records, wheres)
    return dedup_ids(records)


def _check_explicit_ids(path: Path, records: list[PromptRecord], wheres: list[str]) -> None:
    """Two rows may share an id only when they hold the same prompt (then they are one prompt);
    different prompts under one id would silently become one, so that is an error."""
    first: dict[str, int] = {}
    for i, (r, where) in enumerate(zip(records, wheres)):
        j = first.setdefault(r.id, i)
        if j != i and records[j].messages != r.messages:
            raise DataError(f"{path}: {wheres[j]} and {where} share id {r.id!r} but hold different prompts; "
                            "give each its own id (identical prompts may share one)")


def dedup_ids(records: list[PromptRecord]) -> list[PromptRecord]:
    """The records without repeats of an id, first kept: identical prompts share an id, and a
    resume must see each once."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out
