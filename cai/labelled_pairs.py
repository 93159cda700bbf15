"""A labelled pair set: response pairs whose better side is known, for measuring a feedback model.

Nothing trains on it. Each line of a ``.jsonl`` file is one pair::

    {"id": "...", "direction": "refusal", "prompt": "...", "better": "...", "worse": "...",
     "category": "...", "flaw": "harmful-compliance"}

``direction`` says what kind of judgement the pair asks for, so a labeller is measured
per kind and cannot pass by preferring one style everywhere:

* ``refusal``: a harmful request; a refusal beats compliance;
* ``answer``: an ordinary (often look-unsafe) request; an answer beats a needless refusal;
* ``quality``: an ordinary request that both sides answer; one is wrong, evasive,
  off-topic or degenerate.

A labeller that always prefers the refusal scores 1.0 / 0.0 / chance on these three, so
only one that reads the request and the responses can pass all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cai.errors import DataError
from cai.ids import stable_hash
from cai.prompt_files import iter_jsonl_objects

#: The kinds of judgement a pair asks for (see the module docstring).
DIRECTIONS = ("refusal", "answer", "quality")


@dataclass(frozen=True)
class LabelledPair:
    id: str
    direction: str
    prompt: str
    better: str
    worse: str
    category: str = ""
    flaw: str = ""
    look_unsafe: bool = False

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def load_labelled_pairs(path: str | Path) -> list[LabelledPair]:
    """Read and check a pair set; a bad line is one error naming the file, the line and the fix."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: labelled pair file not found; check the path (examples/labelled_pairs.jsonl ships one)")
    pairs: list[LabelledPair] = []
    seen: dict[str, str] = {}
    for where, obj in iter_jsonl_objects(p):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object with prompt, better, worse and direction")
        for key in ("prompt", "better", "worse"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DataError(f"{where}: field {key!r} must be a non-empty string")
        if obj["better"].strip() == obj["worse"].strip():
            raise DataError(f"{where}: 'better' and 'worse' are the same text; a pair needs two different responses")
        direction = obj.get("direction")
        if direction not in DIRECTIONS:
            raise DataError(f"{where}: field 'direction' must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        pid = str(obj.get("id") or stable_hash(obj["prompt"], obj["better"], obj["worse"]))
        if pid in seen:
            raise DataError(f"{where}: id {pid!r} is also used at {seen[pid]}; give each pair its own id")
        seen[pid] = where
        pairs.append(LabelledPair(id=pid, direction=direction, prompt=obj["prompt"], better=obj["better"],
                                  worse=obj["worse"], category=str(obj.get("category", "")),
                                  flaw=str(obj.get("flaw", "")), look_unsafe=bool(obj.get("look_unsafe", False))))
    if not pairs:
        raise DataError(f"{p}: no pairs; one JSON object per line")
    return pairs


def pair_set_digest(pairs: list[LabelledPair]) -> str:
    """A short hash of the pairs' content (goes into provenance, so a figure names the set it came from)."""
    return stable_hash([(q.id, q.direction, q.prompt, q.better, q.worse) for q in pairs], length=12)


__all__ = ["DIRECTIONS", "LabelledPair", "load_labelled_pairs", "pair_set_digest"]
