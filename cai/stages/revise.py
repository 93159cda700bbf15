"""SL-CAI: sample a response, then critique and revise it by sampled principles.

Every prompt in a chunk advances together, one step at a time: one batched
``generate`` for the initial responses, then per revision step one for the
critiques and one for the revisions (plus one per retry round for degenerate
outputs). Each step critiques the *latest* good response only, not the whole
chain so far: small models lose the thread in long multi-turn contexts, and the
few-shot exemplars already use most of the budget.

A degenerate output (empty, the request echoed back, a revision that changes
nothing, ...) is recorded on the step with its reason and counted; the chain
goes on from the last good response. A prompt whose chain produced no good
revision becomes a failure row with the raw text.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.base import Backend, Generation, SamplingParams, provenance
from cai.constitution import Constitution, Principle
from cai.data import PromptRecord, stable_hash
from cai.errors import UserInputError
from cai.stages.responses import policy_conversation, record_messages
from cai.stages.revision_pairs import PREFERENCE_DIR, preference_row, write_preference_view  # noqa: F401
from cai.stages.revision_checks import Gates, clean_output, degenerate_reason, exemplar_overlap  # noqa: F401
from cai.stages.runner import ChunkResult, DatasetJob, DatasetRunOptions, run_dataset, stage_fingerprint
from cai.templates import TEMPLATE_VARIABLES, Conversation, PromptTemplates

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+

RESPONSE_TEMPLATE = "initial_response"
CRITIQUE_TEMPLATE = "critique"
REVISION_TEMPLATE = "revision"
TEMPLATES = (RESPONSE_TEMPLATE, CRITIQUE_TEMPLATE, REVISION_TEMPLATE)
#: Greedy retries would repeat the same output; they sample at this temperature instead.
RETRY_TEMPERATURE = 0.7


class Sampling(BaseModel):
    """Sampling for one kind of call (response, critique or revision)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0, description="0 means greedy.")
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int | None = Field(None, description="Default: ReviseConfig.seed.")


class ReviseConfig(BaseModel):
    """Settings of the critique-and-revise stage. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    n_revisions: int = Field(1, ge=1, description="Critique-then-revise steps per prompt.")
    few_shot: bool = Field(True, description="Put the constitution's exemplars in front as prior turns.")
    unique_principles: bool = Field(False, description="Use each principle at most once per prompt.")
    emit_all_revisions: bool = Field(False, description="One SFT row per good revision step, not just the last.")
    retries: int = Field(0, ge=0, description="Re-sample degenerate outputs up to this many times.")
    seed: int = Field(0, description="Seeds principle sampling and (by default) generation.")
    response: Sampling = Field(default_factory=Sampling)
    critique: Sampling = Field(default_factory=lambda: Sampling(max_new_tokens=96))
    revision: Sampling = Field(default_factory=Sampling)
    gates: Gates = Field(default_factory=Gates)

    def params(self, kind: str, offset: int = 0) -> SamplingParams:
        s: Sampling = getattr(self, kind)
        # A distinct stream per kind: with one seed, critique and revision would draw the same
        # random numbers, and a model that barely reads its prompt would echo itself.
        salt = {"response": 0, "critique": 7919, "revision": 15838}.get(kind, 0)
        seed = (s.seed if s.seed is not None else self.seed) + offset + salt
        return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=seed)


# --- conversations ---------------------------------------------------------------------


def few_shot_context(constitution: Constitution, enabled: bool = True) -> list[dict[str, Any]]:
    """Exemplars for the templates: the file's fields plus the exemplar's own principle (or None)."""
    if not enabled:
        return []
    out = []
    for ex in constitution.few_shot:
        item: dict[str, Any] = ex.model_dump()
        item["principle"] = constitution.principle(ex.principle_id) if ex.principle_id else None
        out.append(item)
    return out


def _with_history(record: PromptRecord, rendered: Conversation) -> Conversation:
    # Earlier turns of a multi-turn record go in front, as the initial response saw them.
    history = record.messages[:-1]
    if history and history[0]["role"] == "system":
        rendered = [m for m in rendered if m["role"] != "system"]
    return history + rendered


def critique_conversation(
    record: PromptRecord,
    response: str,
    principle: Principle,
    constitution: Constitution,
    templates: PromptTemplates,
    few_shot: list[dict[str, Any]],
) -> Conversation:
    return _step_conversation(CRITIQUE_TEMPLATE, record, response, principle, constitution, templates, few_shot)


def revision_conversation(
    record: PromptRecord,
    response: str,
    critique: str,
    principle: Principle,
    constitution: Constitution,
    templates: PromptTemplates,
    few_shot: list[dict[str, Any]],
) -> Conversation:
    return _step_conversation(REVISION_TEMPLATE, record, response, principle, constitution, templates, few_shot,
                              critique=critique)


def _step_conversation(template: str, record: PromptRecord, response: str, principle: Principle,
                       constitution: Constitution, templates: PromptTemplates, few_shot: list[dict[str, Any]],
                       **extra: Any) -> Conversation:
    rendered = templates.render_messages(
        template, system_prompt=constitution.system_prompt, prompt=record.text, response=response,
        principle=principle, few_shot=few_shot, constitution=constitution, **extra,
    )
    return _with_history(record, rendered)


def sample_plan(record: PromptRecord, constitution: Constitution, config: ReviseConfig) -> list[Principle]:
    """The principles for one prompt's steps, seeded by (seed, record id): independent of chunking."""
    rng = random.Random(stable_hash(config.seed, record.id))
    return constitution.sample_principles(config.n_revisions, rng, unique=config.unique_principles)


# --- the stage -------------------------------------------------------------------------


class BatchRunner:
    """Runs one kind of call (response, critique or revision) for many conversations in one batch.

    Degenerate outputs (see ``degenerate_reason``, passed in as ``check``) are re-sampled together,
    up to ``config.retries`` times, with the stage's seeds and retry temperature; token counts and
    the degenerate/retry tallies go into ``result``. The revise stage and the workbench both run
    their calls through it, so a workbench cell samples exactly as the stage does.
    """

    def __init__(self, backend: Backend, config: ReviseConfig, result: ChunkResult) -> None:
        self.backend = backend
        self.config = config
        self.result = result

    def _tally(self, key: str, n: int = 1) -> None:
        self.result.tallies[key] = self.result.tallies.get(key, 0) + n

    def run(
        self,
        kind: str,
        step: int,
        convs: list[Conversation],
        check: Callable[[int, str], str | None],
    ) -> list[tuple[str, str | None, Generation]]:
        """(clean text, degenerate reason or None, last generation) per conversation."""
        out: list[tuple[str, str | None, Generation]] = [("", None, Generation(text=""))] * len(convs)
        pending = list(range(len(convs)))
        for attempt in range(self.config.retries + 1):
            if not pending:
                break
            params = self.config.params(kind, offset=1000 * step + attempt)
            if attempt:
                self._tally("retried", len(pending))
                if params.temperature == 0:
                    params = SamplingParams(params.max_new_tokens, RETRY_TEMPERATURE, params.top_p, params.seed)
            gens = self.backend.generate([convs[i] for i in pending], params)
            still = []
            for i, gen in zip(pending, gens):
                self.result.prompt_tokens += gen.prompt_tokens
                self.result.completion_tokens += gen.completion_tokens
                text = clean_output(gen.text)
                reason = check(i, text)
                out[i] = (text, reason, gen)
                if reason:
                    self._tally(f"degenerate.{kind}.{reason}")
                    still.append(i)
                elif attempt:
                    self._tally("recovered_by_retry")
            pending = still
        return out


def revise(
    records: Sequence[PromptRecord],
    constitution: Constitution,
    backend: Backend,
    *,
    templates: PromptTemplates | None = None,
    config: ReviseConfig = ReviseConfig(),
) -> ChunkResult:
    """Critique-and-revise every record; SFT rows (with the whole trace) and failure rows out.

    Pure apart from the backend calls. Row ``id`` is the record id (the final
    revision); with ``emit_all_revisions`` earlier steps get ``{id}.r{step}`` and
    every row carries ``source_id``.
    """
    templates = templates or PromptTemplates(constitution=constitution)
    check_config(constitution, config)
    result = ChunkResult()
    batch = BatchRunner(backend, config, result)
    few_shot = few_shot_context(constitution, config.few_shot)
    records = list(records)
    plans = [sample_plan(r, constitution, config) for r in records]
    from cai.refusal import RefusalDetector

    refusal = RefusalDetector().is_refusal
    # Exemplar texts a small critic tends to copy, unless the exemplar is for this very prompt.
    ex_texts = {"critique": [ex.critique for ex in constitution.few_shot],
                "revision": [ex.revision for ex in constitution.few_shot]} if config.few_shot else \
        {"critique": [], "revision": []}

    # Step 0: the initial responses.
    convs = [policy_conversation(r, templates, constitution) for r in records]
    initial = batch.run("response", 0, convs, lambda i, text: degenerate_reason("response", text))
    current: list[str] = [text for text, _, _ in initial]
    alive = [reason is None for _, reason, _ in initial]
    traces: list[list[dict[str, Any]]] = [[] for _ in records]

    for step in range(config.n_revisions):
        rows = [i for i in range(len(records)) if alive[i] and step < len(plans[i])]
        if not rows:
            break
        convs = [
            critique_conversation(records[i], current[i], plans[i][step], constitution, templates, few_shot)
            for i in rows
        ]
        crits = batch.run(
            "critique", step + 1, convs,
            lambda k, text: degenerate_reason("critique", text, principle=plans[rows[k]][step], response=current[rows[k]],
                                              prompt=records[rows[k]].text, gates=config.gates,
                                              exemplar_texts=ex_texts["critique"]),
        )
        ready = []  # (row, critique) pairs whose critique is usable
        for k, i in enumerate(rows):
            text, reason, _ = crits[k]
            if reason:
                traces[i].append({"step": step + 1, "principle_id": plans[i][step].id, "critique": text,
                                  "revision": None, "degenerate": f"critique_{reason}"})
            else:
                ready.append((i, text))
        if not ready:
            continue
        convs = [
            revision_conversation(records[i], current[i], crit, plans[i][step], constitution, templates, few_shot)
            for i, crit in ready
        ]
        revs = batch.run(
            "revision", step + 1, convs,
            lambda k, text: degenerate_reason("revision", text, principle=plans[ready[k][0]][step],
                                              response=current[ready[k][0]], critique=ready[k][1],
                                              prompt=records[ready[k][0]].text, gates=config.gates,
                                              exemplar_texts=ex_texts["revision"], is_refusal=refusal),
        )
        for (i, crit), (text, reason, gen) in zip(ready, revs):
            entry: dict[str, Any] = {"step": step + 1, "principle_id": plans[i][step].id, "critique": crit,
                                     "revision": text, "finish_reason": gen.finish_reason}
            if reason:
                entry["degenerate"] = f"revision_{reason}"
            else:
                current[i] = text
            traces[i].append(entry)

    for i, rec in enumerate(records):
        _emit(rec, initial[i], traces[i], config, result)
    return result


def _emit(
    rec: PromptRecord,
    initial: tuple[str, str | None, Generation],
    trace: list[dict[str, Any]],
    config: ReviseConfig,
    result: ChunkResult,
) -> None:
    text, reason, _ = initial
    base = {"prompt": rec.text, **({"extra": rec.extra} if rec.extra else {})}
    if reason:
        result.failures.append({"id": rec.id, **base, "reason": f"response_{reason}", "raw": text})
        result.tallies[f"failed.response_{reason}"] = result.tallies.get(f"failed.response_{reason}", 0) + 1
        return
    good = [s for s in trace if "degenerate" not in s]
    if not good:
        why = trace[-1]["degenerate"] if trace else "no_steps"
        raw = (trace[-1]["revision"] or trace[-1]["critique"]) if trace else ""
        result.failures.append({"id": rec.id, **base, "reason": why, "raw": raw,
                                "initial_response": text, "revisions": trace})
        result.tallies[f"failed.{why}"] = result.tallies.get(f"failed.{why}", 0) + 1
        return
    emitted = good if config.emit_all_revisions else good[-1:]
    for n, step in enumerate(emitted):
        last = n == len(emitted) - 1
        row: dict[str, Any] = {
            # The final row carries the record id, so a resume keys on it; written last.
            "id": rec.id if last else f"{rec.id}.r{step['step']}",
            "messages": record_messages(rec) + [{"role": "assistant", "content": step["revision"]}],
            "source_prompt": rec.text, **({"extra": rec.extra} if rec.extra else {}),
            "initial_response": text,
            "revision": step["revision"],
            "revisions": trace,
            "principle_ids": [s["principle_id"] for s in trace],
        }
        if config.emit_all_revisions:
            row["source_id"] = rec.id
            row["step"] = step["step"]
            row["final"] = last
        result.rows.append(row)
    result.tallies["revisions_kept"] = result.tallies.get("revisions_kept", 0) + len(good)


def check_config(constitution: Constitution, config: ReviseConfig) -> None:
    """Refuse settings that cannot work, before any generation."""
    if config.unique_principles and config.n_revisions > len(constitution.principles):
        raise UserInputError(
            f"{config.n_revisions} revisions with unique principles, but {constitution.source or constitution.name} "
            f"has {len(constitution.principles)} principles; lower --n-revisions or drop --unique-principles"
        )


# --- writing a dataset directory -------------------------------------------------------


def fingerprint(
    backend: Backend, templates: PromptTemplates, constitution: Constitution, config: ReviseConfig
) -> dict[str, Any]:
    """Everything that decides the rows; a resume with other settings is refused."""
    return stage_fingerprint("revisions", backend, templates, TEMPLATES, config=config.model_dump(mode="json"),
                             constitution=constitution.provenance())


def run_revisions(
    records: Sequence[PromptRecord],
    out_dir: str | Path,
    constitution: Constitution,
    backend: Backend,
    *,
    config: ReviseConfig = ReviseConfig(),
    templates: PromptTemplates | None = None,
    **run: Unpack[DatasetRunOptions],
) -> dict[str, Any]:
    """Critique-and-revise a prompt set into a resumable dataset directory; returns counts + summary."""
    templates = templates or PromptTemplates(constitution=constitution)
    templates.validate({name: TEMPLATE_VARIABLES[name] for name in TEMPLATES})
    check_config(constitution, config)
    fp = fingerprint(backend, templates, constitution, config)
    prov = {"policy_backend": provenance(backend), "templates": templates.provenance(TEMPLATES)}
    job = DatasetJob(
        kind="sft", fingerprint=fp, provenance=prov, desc="revisions",
        title="cai revisions (SL-CAI critique and revise)",
        process=lambda chunk: revise(chunk, constitution, backend, templates=templates, config=config),
        summarize=lambda w: {"preference_pairs": write_preference_view(w.dir, fp, w.provenance)},
    )
    return run_dataset(records, out_dir, job, **run)


__all__ = [
    "ReviseConfig", "Sampling", "BatchRunner", "revise", "run_revisions", "degenerate_reason",
    "few_shot_context", "critique_conversation", "revision_conversation", "sample_plan", "fingerprint",
    "preference_row",
]
