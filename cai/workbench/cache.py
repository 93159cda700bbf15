"""The workbench's per-cell cache: one small JSON file per computed thing, named by the hash of its inputs.

Two kinds of entry:

* ``initial``: a prompt's initial response. Key: the model, the ``initial_response``
  template's text, the prompt (its whole conversation), the constitution's system
  prompt and the response sampling (seed included).
* ``cell``: one (prompt, principle) cell: critique, revision, gate verdict, judgement.
  Key: the model, the principle's own text fields (critique_request, revision_request,
  comparison_question; not its id, weight or tags), what every cell shares (system
  prompt, few-shot exemplars with their principles' texts), the texts of the critique,
  revision and preference templates, the prompt, the initial response it revises, and
  the stage settings (``ReviseConfig``: seed, sampling, retries, gates) and judge settings.

So editing one principle's text changes only its own cells' keys (unless a few-shot
exemplar names that principle: then every cell's prompt shows the new text, and every
cell is recomputed, as it must be).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cai.constitution import Constitution, Principle
from cai.data import PromptRecord, stable_hash
from cai.errors import UserInputError

#: Bumped when what a cached entry holds, or how it is computed, changes.
CACHE_VERSION = 1
KINDS = ("initial", "cell")


def principle_text(p: Principle | None) -> dict[str, Any] | None:
    """The fields of a principle that reach a prompt."""
    if p is None:
        return None
    return {"critique_request": p.critique_request, "revision_request": p.revision_request,
            "comparison_question": p.comparison_question}


def shared_context(constitution: Constitution, few_shot: bool) -> dict[str, Any]:
    """What every cell's prompts share: the system prompt and the few-shot exemplars as rendered."""
    exemplars = []
    if few_shot:
        for ex in constitution.few_shot:
            own = constitution.principle(ex.principle_id) if ex.principle_id else None
            exemplars.append({"prompt": ex.prompt, "response": ex.response, "critique": ex.critique,
                              "revision": ex.revision, "principle": principle_text(own)})
    return {"system_prompt": constitution.system_prompt, "few_shot": exemplars}


def initial_key(model: str, template_sha: dict[str, str], record: PromptRecord, constitution: Constitution,
                response_params: dict[str, Any], retries: int) -> str:
    return stable_hash(CACHE_VERSION, "initial", model, template_sha["initial_response"], record.messages,
                       constitution.system_prompt, response_params, retries, length=32)


def cell_key(model: str, template_sha: dict[str, str], record: PromptRecord, principle: Principle,
             context: dict[str, Any], initial_text: str, settings: dict[str, Any]) -> str:
    return stable_hash(CACHE_VERSION, "cell", model, principle_text(principle), context,
                       {k: template_sha[k] for k in ("critique", "revision", "preference")},
                       record.messages, initial_text, settings, length=32)


class CellCache:
    """A directory of JSON entries (``DIR/<kind>/<key[:2]>/<key>.json``); ``None`` keeps nothing.

    ``read=False`` recomputes everything (and still writes what it computed).
    """

    def __init__(self, root: str | Path | None, *, read: bool = True) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.read = read
        self.hits = 0
        self.misses = 0
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                    pass
            except OSError as e:
                raise UserInputError(f"{self.root}: cannot use as the workbench cache ({e.strerror or e}); "
                                     "give another --cache directory") from None

    def _path(self, kind: str, key: str) -> Path:
        assert self.root is not None and kind in KINDS
        return self.root / kind / key[:2] / f"{key}.json"

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        if self.root is None or not self.read:
            self.misses += 1
            return None
        try:
            value = json.loads(self._path(kind, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or cut short by a kill: compute it again
            self.misses += 1
            return None
        if not isinstance(value, dict) or value.get("key") != key:
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        if self.root is None:
            return
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**value, "key": key}, f, ensure_ascii=False, sort_keys=True)
        os.replace(tmp, path)  # atomic: a reader sees the old entry, or none, or the whole new one

    def describe(self) -> dict[str, Any]:
        return {"dir": str(self.root) if self.root else None, "read": self.read}


__all__ = ["CellCache", "CACHE_VERSION", "cell_key", "initial_key", "principle_text", "shared_context"]
