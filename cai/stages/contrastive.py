"""Contrastive preference pairs (RLCD, Yang et al. 2023), labelled by construction.

Each pair contrasts an answer made under a harmless-leaning context with one made
under an empty context, so its label does not depend on a feedback model (the source
for a labeller at chance). Built from `distill` rows, without a model call:

* red-team prompt: chosen = the distilled harmless answer (the constitution's, or the
  policy's in-context refusal), rejected = the policy's plain answer, kept only when that
  plain answer is not itself a refusal (``both_refuse`` otherwise);
* helpful prompt: chosen = the policy's own plain answer, rejected = a refusal from the
  constitution (``refusals:``, picked by the row id): this side teaches *not* refusing.

Rows are TRL explicit-prompt conversational preference rows with ``p_chosen: 1.0`` and
``label_source: contrastive``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable

from cai.constitution import Constitution
from cai.refusal import RefusalDetector


def contrastive_pairs(
    distilled: Iterable[dict[str, Any]],
    constitution: Constitution,
    *,
    detector: RefusalDetector | None = None,
    helpful_side: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(pairs, skipped rows with reasons, tallies) from distill rows."""
    detector = detector or RefusalDetector()
    refusals = constitution.all_refusals()
    pairs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    tallies: dict[str, int] = {}

    def skip(row: dict[str, Any], reason: str) -> None:
        skipped.append({"id": row["id"], "reason": reason, "raw": row.get("plain_response")})
        tallies[reason] = tallies.get(reason, 0) + 1

    for row in distilled:
        prompt = row["messages"][:-1]
        target = row["messages"][-1]["content"]
        plain = (row.get("plain_response") or "").strip()
        if row.get("set") == "red_team":
            if not plain:
                skip(row, "empty_plain_answer")
                continue
            if detector.is_refusal(plain):
                skip(row, "both_refuse")
                continue
            chosen, rejected, side = target, plain, "harmless_over_compliant"
        else:
            if not helpful_side:
                continue
            if not refusals:
                skip(row, "no_constitution_refusals")
                continue
            chosen, rejected, side = target, random.Random(row["id"]).choice(refusals), "answer_over_refusal"
        pairs.append({
            "id": row["id"],
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "p_chosen": 1.0,
            "label_source": "contrastive",
            "contrast": side,
            "principle_ids": [],
            "position_consistent": None,
            "rationales": [],
            "set": row.get("set"),
            "category": row.get("category"),
            "look_unsafe": row.get("look_unsafe", False),
        })
        tallies[side] = tallies.get(side, 0) + 1
    return pairs, skipped, tallies




def run_contrastive(
    distill_dir: str | Path,
    out_dir: str | Path,
    constitution: Constitution,
    *,
    helpful_side: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Contrastive pairs from a distill directory into a preference dataset directory; counts and summary.

    Derived data, no model call: a directory that already holds the pairs is left as it is.
    """
    from cai.data import DatasetWriter, read_rows

    pairs, skipped, tallies = contrastive_pairs(read_rows(distill_dir), constitution, helpful_side=helpful_side)
    writer = DatasetWriter(out_dir, kind="preference", overwrite=overwrite,
                           fingerprint={"stage": "contrastive", "helpful_side": helpful_side},
                           provenance={"label_source": "contrastive", "derived_from": str(distill_dir),
                                       "constitution": constitution.provenance()})
    if writer.counts()["rows"] == 0:
        writer.write_failures(skipped)
        writer.write(pairs)
    return writer.finalize({"pairs": len(pairs), "tallies": tallies},
                           title="cai contrastive pairs (labelled by construction)")


__all__ = ["contrastive_pairs", "run_contrastive"]
