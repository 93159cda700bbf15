"""``cai constitution diff A B``: what changed between two constitutions, principle by principle, and what
the change does on the prompts (both versions run through the same matrix and cache)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from cai.backends.base import Backend
from cai.constitution import Constitution, Principle
from cai.data import PromptRecord
from cai.errors import UserInputError
from cai.stages.revise import ReviseConfig
from cai.templates import PromptTemplates
from cai.workbench.backend import LazyBackend
from cai.workbench.cache import CellCache
from cai.workbench.matrix import Matrix, run_matrix
from cai.workbench.selection import PrincipleSpec, select_principles

#: Principle fields compared; the first three reach the prompts, weight and tags only sampling.
FIELDS = ("critique_request", "revision_request", "comparison_question", "weight", "tags")
#: Constitution-wide fields compared, and whether a change there reaches every cell's prompts.
SHARED = {"system_prompt": True, "few_shot": True, "templates": True, "refusals": False, "name": False,
          "version": False, "description": False}


def word_diff(a: str, b: str) -> list[list[str]]:
    """[op, text] runs, op one of '=', '-', '+': a word-level diff (whitespace kept with the words)."""
    import re

    wa, wb = re.findall(r"\S+\s*", a), re.findall(r"\S+\s*", b)
    ops: list[list[str]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if tag == "equal":
            ops.append(["=", "".join(wa[i1:i2])])
        else:
            if i2 > i1:
                ops.append(["-", "".join(wa[i1:i2])])
            if j2 > j1:
                ops.append(["+", "".join(wb[j1:j2])])
    return ops


def render_word_diff(ops: list[list[str]]) -> str:
    """git --word-diff style: [-removed-]{+added+}."""
    out = []
    for n, (op, text) in enumerate(ops):
        if op == "=":
            out.append(text)
            continue
        t = text.rstrip()
        replaced = op == "-" and n + 1 < len(ops) and ops[n + 1][0] == "+"  # its space comes after the insertion
        out.append(("[-" + t + "-]" if op == "-" else "{+" + t + "+}") + ("" if replaced else text[len(t):]))
    return "".join(out)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=1, default=str)


def _field_diff(a: Any, b: Any) -> dict[str, Any]:
    return {"a": _text(a), "b": _text(b), "diff": word_diff(_text(a), _text(b))}


def constitution_diff(a: Constitution, b: Constitution) -> dict[str, Any]:
    """Principles added, removed, changed (field by field, word diff) or unchanged; constitution-wide changes."""
    ids_a = [p.id for p in a.principles]
    ids_b = [p.id for p in b.principles]
    order = ids_a + [i for i in ids_b if i not in ids_a]
    principles = []
    for pid in order:
        pa = a.principle(pid) if pid in ids_a else None
        pb = b.principle(pid) if pid in ids_b else None
        if pa is None or pb is None:
            p = pa or pb
            assert p is not None
            principles.append({"id": pid, "status": "removed" if pb is None else "added",
                               "fields": {f: _field_diff(getattr(pa, f) if pa else None,
                                                         getattr(pb, f) if pb else None)
                                          for f in FIELDS if getattr(p, f) not in (None, [])}})
            continue
        fields = {f: _field_diff(getattr(pa, f), getattr(pb, f)) for f in FIELDS if getattr(pa, f) != getattr(pb, f)}
        principles.append({"id": pid, "status": "changed" if fields else "unchanged", "fields": fields})
    shared = []
    for f, reaches in SHARED.items():
        va, vb = getattr(a, f), getattr(b, f)
        if f == "few_shot":
            va, vb = [x.model_dump() for x in va], [x.model_dump() for x in vb]
        if va != vb:
            shared.append({"field": f, "affects_cells": reaches, **_field_diff(va, vb)})
    return {"a": a.provenance(), "b": b.provenance(), "principles": principles, "shared": shared}


def affects_all(d: dict[str, Any]) -> bool:
    return any(s["affects_cells"] for s in d["shared"])


def diff_principle_ids(a: Constitution, b: Constitution, d: dict[str, Any], spec: PrincipleSpec | str,
                       *, seed: int = 0) -> list[str]:
    """The principle ids to run: ``changed`` (default: those added, removed or edited in a way that reaches
    the prompts, or all when a constitution-wide change reaches every cell), ``all``, a number sampled
    from B, or ids (each in A or B)."""
    union = [p["id"] for p in d["principles"]]
    if spec == "changed":
        if affects_all(d):
            return union
        prompt_fields = set(FIELDS[:3])
        return [p["id"] for p in d["principles"]
                if p["status"] in ("added", "removed") or set(p["fields"]) & prompt_fields]
    if spec == "all":
        return union
    if isinstance(spec, int):
        return [p.id for p in select_principles(b, spec, seed=seed)]
    assert isinstance(spec, list)
    unknown = [i for i in spec if i not in union]
    if unknown:
        raise UserInputError(
            f"--principles: neither {a.source or a.name} nor {b.source or b.name} has a principle "
            f"{', '.join(repr(u) for u in unknown)}; use one of: {', '.join(union)}")
    return list(spec)


@dataclass
class DiffRun:
    text: dict[str, Any]
    principle_ids: list[str]
    a: Matrix
    b: Matrix


def run_diff(
    a: Constitution,
    b: Constitution,
    principle_ids: Sequence[str],
    records: Sequence[PromptRecord],
    backend: Backend | LazyBackend | Callable[[], Backend],
    *,
    config: ReviseConfig | None = None,
    templates_a: PromptTemplates | None = None,
    templates_b: PromptTemplates | None = None,
    cache: CellCache | None = None,
    model_key: str | None = None,
    text: dict[str, Any] | None = None,
) -> DiffRun:
    """Both versions through ``run_matrix`` with one backend (loaded once, if at all) and one cache:
    cells whose inputs did not change are computed once."""
    source = backend if isinstance(backend, LazyBackend) else LazyBackend(backend, model_key)
    cache = cache or CellCache(None)

    def pick(c: Constitution) -> list[Principle]:
        have = {p.id for p in c.principles}
        return [c.principle(i) for i in principle_ids if i in have]

    ma = run_matrix(a, pick(a), records, source, config=config, templates=templates_a, cache=cache,
                    model_key=model_key)
    mb = run_matrix(b, pick(b), records, source, config=config, templates=templates_b, cache=cache,
                    model_key=model_key)
    return DiffRun(text=text or constitution_diff(a, b), principle_ids=list(principle_ids), a=ma, b=mb)


__all__ = ["constitution_diff", "diff_principle_ids", "run_diff", "DiffRun", "word_diff", "render_word_diff",
           "affects_all"]
