"""Sentence embeddings (the embedded all-MiniLM-L6-v2) and near-duplicate search."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

DEFAULT_THRESHOLD = 0.9


@lru_cache(maxsize=2)
def load_embedder(path: str | None = None) -> Any:
    """A SentenceTransformer, from a path or the embedded package, always offline."""
    from sentence_transformers import SentenceTransformer

    from cai.models import embedder_path

    return SentenceTransformer(str(path or embedder_path()), device="cpu", local_files_only=True)


def embed(texts: Sequence[str], *, model: Any | None = None, batch_size: int = 64):
    model = model or load_embedder()
    return model.encode(
        list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
        show_progress_bar=False,
    )


def near_duplicate_pairs(
    texts: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD, model: Any | None = None
) -> list[tuple[int, int, float]]:
    """Index pairs (i < j) whose cosine similarity is at least ``threshold``."""
    if len(texts) < 2:
        return []
    vecs = embed(texts, model=model)
    sims = vecs @ vecs.T
    pairs = []
    n = len(texts)
    for i in range(n):
        for j in range(i + 1, n):
            s = float(sims[i, j])
            if s >= threshold:
                pairs.append((i, j, s))
    return pairs
