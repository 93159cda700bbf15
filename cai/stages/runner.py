"""Drive a stage over a prompt set in chunks, writing as it goes, so a kill loses at most a chunk.

A stage is a function ``process(records) -> ChunkResult``; it makes its backend
calls over the whole chunk at once. The runner skips records already written,
streams the rest through, and keeps the token counts for the summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypedDict

from cai.data import DatasetWriter, PromptRecord
from cai.progress import progress_bar

if TYPE_CHECKING:
    from cai.backends.base import Backend
    from cai.templates import PromptTemplates


@dataclass
class ChunkResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Stage-specific tallies (e.g. degenerate outputs by reason), summed over chunks.
    tallies: dict[str, int] = field(default_factory=dict)

    def add(self, other: "ChunkResult") -> None:
        self.rows += other.rows
        self.failures += other.failures
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        for k, v in other.tallies.items():
            self.tallies[k] = self.tallies.get(k, 0) + v


@dataclass
class StageStats:
    done_before: int = 0
    rows: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    tallies: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped_already_done": self.done_before,
            "new_rows": self.rows,
            "new_failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 2),
            "completion_tokens_per_s": round(self.tokens_per_s, 2),
            **({"tallies": self.tallies} if self.tallies else {}),
        }


def run_stage(
    records: Sequence[PromptRecord],
    writer: DatasetWriter,
    process: Callable[[list[PromptRecord]], ChunkResult],
    *,
    chunk_size: int = 64,
    desc: str = "stage",
    row_key: Callable[[PromptRecord], str] | None = None,
    progress: bool = True,
    done: Callable[[PromptRecord], bool] | None = None,
) -> StageStats:
    """Run ``process`` over ``records`` chunk by chunk, skipping the chunks already written.

    A record is finished when ``done(record)`` (default: ``writer`` holds a row or failure
    under ``row_key(record)``, the record's id unless given). Chunks are cut from the whole
    record list, so they hold the same records on every run: a chunk that a kill left
    half-written is processed again whole, and only its missing rows are written. Backends
    seed sampling per call, so a chunk's rows depend on which records it holds; chunks cut
    from the unfinished records alone would sample other rows than an uninterrupted run
    (tests/test_faults.py).
    """
    key = row_key or (lambda r: r.id)
    is_done = done or (lambda r: writer.is_done(key(r)))
    finished = [is_done(r) for r in records]
    stats = StageStats(done_before=sum(finished))
    started = time.perf_counter()
    with progress_bar(total=len(records), desc=desc, unit="prompt", enabled=progress,
                      initial=stats.done_before) as bar:
        for start in range(0, len(records), chunk_size):
            left = finished[start : start + chunk_size].count(False)
            if not left:
                continue
            result = process(list(records[start : start + chunk_size]))
            # The writer skips what it holds already: the finished records of a redone chunk.
            stats.failed += writer.write_failures(result.failures)
            stats.rows += writer.write(result.rows)
            stats.prompt_tokens += result.prompt_tokens
            stats.completion_tokens += result.completion_tokens
            for k, v in result.tallies.items():
                stats.tallies[k] = stats.tallies.get(k, 0) + v
            bar.update(left)
    stats.seconds = time.perf_counter() - started
    return stats


@dataclass
class DatasetJob:
    """A row-by-row stage as a declared job: what it writes, how a chunk is processed, when a record is done.

    `run_dataset` does the rest for every such stage: the writer (fingerprint
    check, resume, torn-line repair), skipping finished records, chunked
    processing, failure tallies by reason, the summary and the dataset card.
    """

    kind: str
    fingerprint: dict[str, Any]
    process: Callable[[list[PromptRecord]], ChunkResult]
    title: str
    desc: str = "stage"
    provenance: dict[str, Any] | None = None
    #: Whether a record is finished (default: a row or failure is stored under its id).
    done: Callable[[DatasetWriter, PromptRecord], bool] | None = None
    #: Extra summary fields, computed from the finished directory.
    summarize: Callable[[DatasetWriter], dict[str, Any]] | None = None
    #: Records per ``process`` call when the caller does not say (smaller for stages whose
    #: chunk holds several backend calls per record).
    chunk_size: int = 64


class DatasetRunOptions(TypedDict, total=False):
    """How a dataset stage is run, as opposed to what it computes: the keywords every ``run_X``
    stage function (``run_revisions``, ``run_responses``, ...) takes and hands to `run_dataset`
    unchanged, so they are declared, defaulted and documented once."""

    #: Remove cai's files in the directory and start over instead of resuming.
    overwrite: bool
    #: Records per ``process`` call (default: the job's ``chunk_size``).
    chunk_size: int | None
    #: Show a progress bar.
    progress: bool
    #: Added to the directory's provenance (e.g. the prompt file it was run on).
    extra_provenance: dict[str, Any] | None


def stage_fingerprint(
    stage: str, policy: Backend, templates: PromptTemplates, template_names: Iterable[str], **settings: Any
) -> dict[str, Any]:
    """A dataset stage's `DatasetJob.fingerprint`: the stage, the model that writes its rows, the digests
    of the templates it renders, and its own ``settings``. Every one of them decides the rows, so a
    directory written under another fingerprint is not resumed (`DatasetWriter` refuses it).

    The dtype the backend computes in is part of it: ``dtype: auto`` is bf16 on a CPU with
    native bf16 and fp32 elsewhere, and their greedy texts differ, so a directory begun on one
    machine is not silently finished in another precision on the next."""
    from cai.backends.base import provenance

    info = provenance(policy)
    dtype = info.get("dtype_used") or info.get("dtype") or info.get("inner_dtype")  # vLLM; transformers; a Ray pool
    return {"stage": stage, "policy": policy.model_id, "templates": templates.digests(template_names),
            **({"dtype": str(dtype)} if dtype else {}), **settings}


def check_same_prompts(writer: DatasetWriter, records: Sequence[PromptRecord]) -> None:
    """Refuse a rerun whose prompt set does not hold every prompt already written (another prompt file).

    Extending the same set (a higher --limit, more lines appended) resumes; rows of prompts
    that are not in this set would be merged in silently, so that is an error instead.
    """
    from cai.data import read_jsonl, read_rows
    from cai.errors import UserInputError

    if not writer.done_ids and not writer.failed_ids:
        return
    ids = {r.id for r in records}
    written = [*read_rows(writer.dir), *read_jsonl(writer.fail_path)]
    stray = [x for x in written if str(x.get("source_id", x.get("id"))) not in ids]
    if stray:
        raise UserInputError(
            f"{writer.dir}: holds rows of {len(stray)} prompt(s) that are not in this prompt set "
            "(another prompt file?); rerun with the same prompts, add --overwrite, or use a new --out")


def failures_by_reason(writer: DatasetWriter) -> dict[str, int]:
    from cai.data import read_jsonl

    out: dict[str, int] = {}
    for row in read_jsonl(writer.fail_path):
        reason = row.get("reason", "unknown")
        out[reason] = out.get(reason, 0) + 1
    return out


def run_dataset(
    records: Sequence[PromptRecord],
    out_dir: Any,
    job: DatasetJob,
    *,
    overwrite: bool = False,
    chunk_size: int | None = None,
    progress: bool = True,
    extra_provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``job`` over ``records`` into a resumable dataset directory; returns counts and summary.

    The keywords are `DatasetRunOptions`.
    """
    writer = DatasetWriter(out_dir, kind=job.kind, fingerprint=job.fingerprint,
                           provenance={**(job.provenance or {}), **(extra_provenance or {})}, overwrite=overwrite)
    check_same_prompts(writer, records)
    done = job.done or (lambda w, r: w.is_done(r.id))
    stats = run_stage(records, writer, job.process, chunk_size=chunk_size or job.chunk_size, desc=job.desc,
                      progress=progress, done=lambda r: done(writer, r))
    summary = {**stats.to_dict(), "prompts": len(records), "failed_by_reason": failures_by_reason(writer)}
    if job.summarize is not None:
        summary.update(job.summarize(writer))
    return writer.finalize(summary, title=job.title)
