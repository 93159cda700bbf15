"""Near-duplicate removal for prompt sets with sentence embeddings (the embedded all-MiniLM-L6-v2).

Greedy and order-preserving: a text is kept unless it is an exact duplicate (after
normalising case, punctuation and spaces) or its cosine similarity to an earlier
kept text, or to a reference text (e.g. the seeds), reaches the threshold.
Embeddings are compared block by block, so memory stays O(block x kept).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cai.embeddings import DEFAULT_THRESHOLD, embed
from cai.errors import UserInputError

BLOCK = 256


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@dataclass
class DedupResult:
    keep: list[int] = field(default_factory=list)
    #: (index, "exact"|"near", matched text, similarity) for every dropped text.
    dropped: list[tuple[int, str, str, float]] = field(default_factory=list)


def check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise UserInputError(f"threshold {threshold} is not a cosine similarity in (0, 1]; try 0.9")


def dedup_texts(
    texts: Sequence[str],
    *,
    against: Sequence[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    model: Any | None = None,
) -> DedupResult:
    """Which of ``texts`` to keep: no near-duplicates among them or of any text in ``against``."""
    import torch

    check_threshold(threshold)
    result = DedupResult()
    seen: dict[str, str] = {normalise(t): t for t in against}
    candidates: list[int] = []
    for i, t in enumerate(texts):
        key = normalise(t)
        if key in seen:
            result.dropped.append((i, "exact", seen[key], 1.0))
        else:
            seen[key] = t
            candidates.append(i)
    if not candidates:
        return result
    ref_texts = list(against)
    ref = embed(ref_texts, model=model) if ref_texts else None
    kept_vecs: list[Any] = []
    kept_texts: list[str] = []
    for start in range(0, len(candidates), BLOCK):
        idx = candidates[start : start + BLOCK]
        vecs = embed([texts[i] for i in idx], model=model)
        pools = [(ref, ref_texts)] if ref is not None else []
        if kept_vecs:
            pools.append((torch.cat(kept_vecs), list(kept_texts)))
        best = torch.full((len(idx),), -1.0)
        best_text = [""] * len(idx)
        for pool, pool_texts in pools:
            sims = vecs @ pool.T
            val, arg = sims.max(dim=1)
            for r in range(len(idx)):
                if float(val[r]) > float(best[r]):
                    best[r] = val[r]
                    best_text[r] = pool_texts[int(arg[r])]
        within = vecs @ vecs.T
        block_kept: list[int] = []
        for r, i in enumerate(idx):
            sim, match = float(best[r]), best_text[r]
            for q in block_kept:  # earlier texts of this block that were kept
                s = float(within[r, q])
                if s > sim:
                    sim, match = s, texts[idx[q]]
            if sim >= threshold:
                result.dropped.append((i, "near", match, round(sim, 4)))
            else:
                block_kept.append(r)
                result.keep.append(i)
        if block_kept:
            kept_vecs.append(vecs[block_kept])
            kept_texts.extend(texts[idx[r]] for r in block_kept)
    result.keep.sort()
    return result


def dedup_file(
    path: str | Path,
    out: str | Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    against: str | Path | None = None,
) -> dict[str, Any]:
    """Dedup a prompt file (any format load_prompts reads) into a .jsonl file of the kept prompts."""
    from cai.data import load_prompts

    src, dst = Path(path), Path(out)
    if dst.suffix != ".jsonl":
        raise UserInputError(f"{dst}: write the deduplicated prompts to a .jsonl file")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UserInputError(f"{dst}: --out is the input file; write to a new file")
    check_threshold(threshold)
    records = load_prompts(src)
    refs = [r.text for r in load_prompts(against)] if against else []
    res = dedup_texts([r.text for r in records], against=refs, threshold=threshold)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", encoding="utf-8") as f:
        for i in res.keep:
            r = records[i]
            obj: dict[str, Any] = {"id": r.id}
            if len(r.messages) == 1:
                obj["prompt"] = r.text
            else:
                obj["messages"] = r.messages
            obj.update(r.extra)
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return {
        "input": len(records),
        "kept": len(res.keep),
        "dropped_exact": sum(1 for d in res.dropped if d[1] == "exact"),
        "dropped_near": sum(1 for d in res.dropped if d[1] == "near"),
        "threshold": threshold,
        "examples": [
            {"dropped": records[i].text, "matches": m, "similarity": s} for i, _, m, s in res.dropped[:5]
        ],
    }
