"""Plan a batched prefill that computes each shared prompt prefix once.

Rows in one batch often start with the same tokens: the chat template's system
turn, a template's instructions, the few-shot exemplars in front of critiques,
and, in preference labelling, the whole conversation up to the first response
(both answer orders, every principle). Running those tokens once and copying
their KV cache to the rows that share them saves that compute.

A plan is a list of stages run in order into one KV cache:

* stage "shared": the prefix common to every row, as one row;
* stage "groups" (only where some rows share more): one row per group of rows
  with a longer common prefix, each continuing from the shared prefix;
* stage "rows": every row's remaining tokens (at least one per row, so each row
  ends with its own last-position logits).

Each stage says which row of the previous stage each of its rows continues
(``parents``), so the executor copies the cache rows before running the stage.
The planner is pure Python so its choices are easy to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cai.backends.base import common_prefix_len

#: Below this many shared tokens a separate stage costs more (one more forward
#: pass and a cache copy) than it saves.
MIN_SHARED = 8


@dataclass(frozen=True)
class Stage:
    name: str
    #: for each row of this stage, the row of the previous stage it continues (None: first stage)
    parents: list[int] | None
    #: for each row of this stage, the tokens it adds
    tokens: list[list[int]]


def plan_prefill(seqs: Sequence[Sequence[int]], min_shared: int = MIN_SHARED) -> list[Stage]:
    """Stages whose rows, run in order, feed exactly ``seqs`` (row i of the last stage is seqs[i])."""
    if not seqs or any(not s for s in seqs):
        raise ValueError("every row needs at least one token")
    rows = [list(s) for s in seqs]
    if len(rows) == 1:
        return [Stage("rows", None, rows)]
    # Keep at least one token per row for the last stage.
    shared = min(len(s) for s in rows) - 1
    for s in rows[1:]:
        shared = min(shared, common_prefix_len(rows[0], s))
    if shared < min_shared:
        shared = 0
    stages: list[Stage] = []
    if shared:
        stages.append(Stage("shared", None, [rows[0][:shared]]))

    groups = _group(rows, shared, min_shared)
    if shared and any(len(members) > 1 for members, _ in groups):
        group_of = [0] * len(rows)
        ends = [0] * len(rows)
        for g, (members, end) in enumerate(groups):
            for r in members:
                group_of[r], ends[r] = g, end
        stages.append(Stage("groups", [0] * len(groups), [rows[m[0]][shared:end] for m, end in groups]))
        stages.append(Stage("rows", group_of, [rows[r][ends[r]:] for r in range(len(rows))]))
    else:
        parents = [0] * len(rows) if shared else None
        stages.append(Stage("rows", parents, [r[shared:] for r in rows]))
    return stages


def _group(rows: list[list[int]], shared: int, min_shared: int) -> list[tuple[list[int], int]]:
    """Groups of rows (lexicographic neighbours) sharing >= min_shared tokens past ``shared``.

    Each group is (row indices, end of its common prefix); a lone row's end is
    ``shared``. A row joins the open group only if the group's total saving,
    (members - 1) x (end - shared), does not shrink.
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    groups: list[tuple[list[int], int]] = []
    members: list[int] = []
    end = shared
    for i in order:
        if members:
            cand = min(end, common_prefix_len(rows[members[0]], rows[i]), len(rows[i]) - 1)
            if cand - shared >= min_shared and len(members) * (cand - shared) >= (len(members) - 1) * (end - shared):
                members.append(i)
                end = cand
                continue
            groups.append((members, end if len(members) > 1 else shared))
        members, end = [i], len(rows[i]) - 1
    groups.append((members, end if len(members) > 1 else shared))
    return groups


def split_by_width(widths: Sequence[int], overhead: int = 64) -> list[list[int]]:
    """Split rows into chunks of similar width so padding wastes little compute.

    A left-padded forward pass over n rows costs about n x (widest row) tokens; each
    extra pass costs about ``overhead`` tokens more (one more pass through every layer,
    and a copy to merge its KV cache). Rows are sorted by width and cut where that
    total is least (dynamic programming, n <= a batch). Returns lists of row indices.
    """
    order = sorted(range(len(widths)), key=lambda i: -widths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j rows (widest first)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows i..j-1 form the last chunk; its widest is row i
            cost = best[i] + (j - i) * widths[order[i]] + (overhead if i else 0)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks = []
    j = n
    while j:
        chunks.append(order[cut[j] : j])
        j = cut[j]
    return chunks[::-1]
