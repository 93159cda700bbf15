"""Where a training row's signal came from: who wrote its text, and who decided its label.

Every training stage records these shares over the rows it trained on, and the report
shows them per round, so a reader can see whether a round improved from the model's own
feedback or from text written into the constitution.

* ``text``: ``constitution`` when any text the row trains toward or away from was
  supplied by the constitution (its ``refusals:``); ``model`` when every side is
  model-written; ``human`` for rows a person wrote.
* ``label``: for preference rows, who decided which side is better: ``construction``
  (contrastive pairs, by how they were made), ``model`` (the judge's soft labels, a
  scored signal, the model's own revision), ``human`` (a person's review); ``none`` for
  SFT rows, which carry no preference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TEXT_SOURCES = ("constitution", "model", "human")
LABEL_SOURCES = ("construction", "model", "human", "none")

#: A preference row's ``label_source`` -> (text source, label source).
_PREFERENCE = {
    # One side of every contrastive pair is the constitution's refusal text (chosen for red-team
    # prompts, rejected for helpful ones).
    "contrastive": ("constitution", "construction"),
    "judge": ("model", "model"),
    "scored": ("model", "model"),
    "revision": ("model", "model"),
    "human": ("model", "human"),
}


def row_origin(row: dict[str, Any]) -> tuple[str, str]:
    """(text source, label source) of one training row; ("unknown", "unknown") when it says nothing."""
    if "messages" in row:  # an SFT row
        if row.get("target_source") == "constitution_refusal":
            return "constitution", "none"
        if row.get("target_source") == "human":
            return "human", "none"
        return "model", "none"
    return _PREFERENCE.get(str(row.get("label_source")), ("unknown", "unknown"))


def provenance_shares(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Shares of each text source and label source over the rows (rounded to 4 places)."""
    text: dict[str, int] = {}
    label: dict[str, int] = {}
    n = 0
    for row in rows:
        t, lab = row_origin(row)
        text[t] = text.get(t, 0) + 1
        label[lab] = label.get(lab, 0) + 1
        n += 1
    return {"rows": n,
            "text": {k: round(v / n, 4) for k, v in sorted(text.items())} if n else {},
            "label": {k: round(v / n, 4) for k, v in sorted(label.items())} if n else {}}


__all__ = ["TEXT_SOURCES", "LABEL_SOURCES", "row_origin", "provenance_shares"]
