"""The principles x prompts matrix: a thin view over the critique-and-revise stage and the judge.

For each prompt, the initial response (``policy_conversation``); for each (prompt,
principle) cell, one critique-then-revise step built by the stage's own conversation
builders (``critique_conversation``, ``revision_conversation``, ``few_shot_context``),
checked by the stage's own gates (``degenerate_reason`` with ``Gates``), sampled with
the stage's own settings (``ReviseConfig.params``, through the stage's batch runner),
then the judge's soft preference for the revision over the initial response in both
orders (``ConstitutionJudge.compare``). So a cell is exactly what ``cai generate
revisions`` would produce for that prompt had it drawn that principle (n_revisions=1).

Cells not in the cache advance together: one batched ``generate`` for the initial
responses that are missing, one for all missing critiques, one for all missing
revisions (plus one per retry round), and one judge scoring call for all of them (each
cell judged by its own principle only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

from cai.backends.base import Backend
from cai.constitution import Constitution, Principle
from cai.data import PromptRecord
from cai.judge import OPTIONS, ConstitutionJudge
from cai.refusal import RefusalDetector
from cai.stages.responses import policy_conversation
from cai.stages.revise import (
    BatchRunner,
    ReviseConfig,
    critique_conversation,
    degenerate_reason,
    few_shot_context,
    revision_conversation,
)
from cai.stages.revision_checks import normalize_words
from cai.stages.runner import ChunkResult
from cai.templates import TEMPLATE_VARIABLES, PromptTemplates
from cai.workbench.backend import LazyBackend
from cai.workbench.cache import CellCache, cell_key, initial_key, shared_context

#: The templates a workbench run renders (all linted before any model loads).
TEMPLATES = ("initial_response", "critique", "revision", "preference")
#: Cell verdicts, in the order the views list them.
VERDICTS = ("better", "worse", "unclear", "rejected", "unjudged", "no_response")


@dataclass
class Matrix:
    """One constitution run on some prompts: per prompt its initial response, per cell its view (a dict)."""

    constitution: Constitution
    principles: list[Principle]
    records: list[PromptRecord]
    initial: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    model: str
    settings: dict[str, Any]
    templates: dict[str, dict[str, str]]
    timing: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def cell(self, principle_id: str, prompt_id: str) -> dict[str, Any]:
        for c in self.cells:
            if c["principle_id"] == principle_id and c["prompt_id"] == prompt_id:
                return c
        raise KeyError((principle_id, prompt_id))

    def row(self, principle_id: str) -> list[dict[str, Any]]:
        return [c for c in self.cells if c["principle_id"] == principle_id]


def change(a: str, b: str) -> float:
    """How much b differs from a: 1 - the word-level similarity ratio (0 = same words, 1 = nothing shared)."""
    wa, wb = normalize_words(a).split(), normalize_words(b).split()
    if not wa and not wb:
        return 0.0
    return round(1.0 - SequenceMatcher(None, wa, wb, autojunk=False).ratio(), 4)


def _verdict(initial: dict[str, Any], cell: dict[str, Any]) -> str:
    if initial["degenerate"]:
        return "no_response"
    if cell.get("reason"):
        return "rejected"
    j = cell.get("judge")
    if not j or j.get("p_revision") is None:
        return "unjudged"
    p = j["p_revision"]
    if j.get("position_consistent") is False or p == 0.5:
        return "unclear"
    return "better" if p > 0.5 else "worse"


def _judgement(j: Any) -> dict[str, Any]:
    def num(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else round(float(x), 4)  # NaN (skipped) -> None

    return {"p_revision": num(j.p_a), "p_revision_first": num(j.p_a_first), "p_revision_second": num(j.p_a_second),
            "position_consistent": j.position_consistent, "truncated": j.truncated, "skipped": j.skipped,
            "failure": getattr(j, "failure", None), "notes": list(j.notes)}


def _refusal(detector: RefusalDetector, text: str | None) -> dict[str, str] | None:
    m = detector.detect(text) if text else None
    return {"marker": m.marker, "matched": m.matched} if m else None


def run_matrix(
    constitution: Constitution,
    principles: Sequence[Principle],
    records: Sequence[PromptRecord],
    backend: Backend | LazyBackend | Callable[[], Backend],
    *,
    config: ReviseConfig | None = None,
    templates: PromptTemplates | None = None,
    cache: CellCache | None = None,
    model_key: str | None = None,
    detector: RefusalDetector | None = None,
) -> Matrix:
    """Compute (or take from the cache) every cell of principles x records.

    ``principles`` are the constitution's own (the judge looks each cell's principle up by id).
    """
    t0 = time.perf_counter()
    own = {q.id: q for q in constitution.principles}
    foreign = [p.id for p in principles if own.get(p.id) != p]
    if foreign:  # a caller's bug, not the user's: cells keyed by one text would be judged by another
        raise ValueError(f"run_matrix: principle(s) {', '.join(foreign)} are not those of the constitution given")
    config = (config or ReviseConfig()).model_copy(update={"n_revisions": 1})
    templates = templates or PromptTemplates(constitution=constitution)
    templates.validate({n: TEMPLATE_VARIABLES[n] for n in TEMPLATES})
    source = backend if isinstance(backend, LazyBackend) else LazyBackend(backend, model_key)
    model = model_key or source.model_key
    cache = cache or CellCache(None)
    detector = detector or RefusalDetector()
    prov = templates.provenance(TEMPLATES)
    tsha = {k.removesuffix(".jinja"): v["sha256"] for k, v in prov.items()}
    settings = {"revise": config.model_dump(mode="json"),
                "judge": {"both_orders": True, "options": list(OPTIONS), "principles_per_pair": 1}}
    records, principles = list(records), list(principles)
    hits0, misses0 = cache.hits, cache.misses
    result = ChunkResult()  # token counts and the stage's tallies, as the stage keeps them
    load0 = source.load_s

    # The initial responses.
    initial: list[dict[str, Any]] = []
    todo: list[int] = []
    for i, rec in enumerate(records):
        key = initial_key(model, tsha, rec, constitution, config.params("response").to_dict(), config.retries)
        got = cache.get("initial", key)
        initial.append({"key": key, "cached": got is not None, **(got or {})})
        if got is None:
            todo.append(i)
    if todo:
        batch = BatchRunner(source.get(), config, result)
        convs = [policy_conversation(records[i], templates, constitution) for i in todo]
        out = batch.run("response", 0, convs, lambda k, text: degenerate_reason("response", text))
        for i, (text, reason, gen) in zip(todo, out):
            value = {"text": text, "degenerate": reason, "finish_reason": gen.finish_reason}
            cache.put("initial", initial[i]["key"], value)
            initial[i].update(value)

    # The cells: keys, then what the cache holds.
    few_shot = few_shot_context(constitution, config.few_shot)
    context = shared_context(constitution, config.few_shot)
    cells: list[dict[str, Any]] = []
    missing: list[int] = []  # indexes into cells
    where: list[tuple[int, Principle]] = []  # (record index, principle) per cell
    for p in principles:
        for i, rec in enumerate(records):
            cell: dict[str, Any] = {"principle_id": p.id, "prompt_id": rec.id}
            where.append((i, p))
            if initial[i]["degenerate"]:
                cell.update(key=None, cached=initial[i]["cached"], critique=None, revision=None, reason=None,
                            finish_reason=None, judge=None)
            else:
                key = cell_key(model, tsha, rec, p, context, initial[i]["text"], settings)
                got = cache.get("cell", key)
                cell.update({**(got or {}), "key": key, "cached": got is not None})
                if got is None:
                    missing.append(len(cells))
            cells.append(cell)

    if missing:
        _compute(missing, cells, where, records, initial, constitution, templates, few_shot, config, source, result)
        for k in missing:
            c = cells[k]
            cache.put("cell", c["key"], {f: c.get(f) for f in
                                          ("critique", "revision", "reason", "finish_reason", "judge")})

    # The view: verdicts, change, the refusal detector's call on each text.
    for c, (i, p) in zip(cells, where):
        init = initial[i]
        c["verdict"] = _verdict(init, c)
        c["change"] = change(init["text"], c["revision"]) if c.get("revision") else None
        c["refusal"] = {"critique": _refusal(detector, c.get("critique")),
                        "revision": _refusal(detector, c.get("revision"))}
    for init in initial:
        init["refusal"] = _refusal(detector, init.get("text"))

    total = time.perf_counter() - t0
    computed_cells = len(missing)
    return Matrix(
        constitution=constitution, principles=principles, records=records, initial=initial, cells=cells,
        model=model, settings=settings, templates=prov,
        timing={"total_s": round(total, 3), "model_load_s": round(source.load_s - load0, 3)},
        counts={"cells": len(cells), "cells_computed": computed_cells, "cells_cached": len(cells) - computed_cells
                - sum(1 for c in cells if c["key"] is None),
                "initial_computed": len(todo), "initial_cached": len(records) - len(todo),
                "cache_hits": cache.hits - hits0, "cache_misses": cache.misses - misses0,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                **{f"tally.{k}": v for k, v in sorted(result.tallies.items())}},
    )


def _compute(
    missing: list[int],
    cells: list[dict[str, Any]],
    where: list[tuple[int, Principle]],
    records: list[PromptRecord],
    initial: list[dict[str, Any]],
    constitution: Constitution,
    templates: PromptTemplates,
    few_shot: list[dict[str, Any]],
    config: ReviseConfig,
    source: LazyBackend,
    result: ChunkResult,
) -> None:
    """One critique-then-revise step for every missing cell (batched as ``revise`` batches a step), then the judge."""
    backend = source.get()
    batch = BatchRunner(backend, config, result)
    refusal = RefusalDetector().is_refusal  # what revise() gives the gates (the default markers)
    ex_texts = ({"critique": [ex.critique for ex in constitution.few_shot],
                 "revision": [ex.revision for ex in constitution.few_shot]} if config.few_shot
                else {"critique": [], "revision": []})

    def rec(k: int) -> PromptRecord:
        return records[where[k][0]]

    def resp(k: int) -> str:
        return initial[where[k][0]]["text"]

    def prin(k: int) -> Principle:
        return where[k][1]

    convs = [critique_conversation(rec(k), resp(k), prin(k), constitution, templates, few_shot) for k in missing]
    crits = batch.run("critique", 1, convs, lambda n, text: degenerate_reason(
        "critique", text, principle=prin(missing[n]), response=resp(missing[n]), prompt=rec(missing[n]).text,
        gates=config.gates, exemplar_texts=ex_texts["critique"]))
    ready: list[int] = []
    for k, (text, reason, _) in zip(missing, crits):
        cells[k].update(critique=text, revision=None, finish_reason=None, judge=None,
                        reason=f"critique_{reason}" if reason else None)
        if not reason:
            ready.append(k)
    if ready:
        convs = [revision_conversation(rec(k), resp(k), cells[k]["critique"], prin(k), constitution, templates,
                                       few_shot) for k in ready]
        revs = batch.run("revision", 1, convs, lambda n, text: degenerate_reason(
            "revision", text, principle=prin(ready[n]), response=resp(ready[n]), critique=cells[ready[n]]["critique"],
            prompt=rec(ready[n]).text, gates=config.gates, exemplar_texts=ex_texts["revision"], is_refusal=refusal))
        for k, (text, reason, gen) in zip(ready, revs):
            cells[k].update(revision=text, finish_reason=gen.finish_reason,
                            reason=f"revision_{reason}" if reason else None)

    # The judge: P(revision better than the initial response) by the cell's own principle, both orders.
    # A revision that is empty or the initial response itself has nothing to judge.
    to_judge: list[int] = []
    for k in missing:
        rev = cells[k].get("revision")
        if not rev or normalize_words(rev) == normalize_words(resp(k)):
            continue
        if prin(k).comparison_question:
            to_judge.append(k)
        else:
            cells[k]["judge"] = {"p_revision": None, "notes": ["the principle has no comparison_question"]}
    if to_judge:
        # One judge over the principles these cells need, each pair forced to its cell's own principle:
        # one scoring call for every cell, and a cell's label depends on its principle alone.
        judge = ConstitutionJudge(constitution, backend, templates=templates,
                                  principles=[prin(k).id for k in to_judge], both_orders=True, seed=config.seed)
        verdicts = judge.compare([rec(k).messages for k in to_judge], [cells[k]["revision"] for k in to_judge],
                                 [resp(k) for k in to_judge], principles=[prin(k).id for k in to_judge])
        for k, j in zip(to_judge, verdicts):
            cells[k]["judge"] = _judgement(j)

__all__ = ["Matrix", "run_matrix", "change", "TEMPLATES", "VERDICTS"]
