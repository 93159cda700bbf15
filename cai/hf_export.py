"""A dataset directory's rows as a `datasets.Dataset`, exported, and with TRL's ``margin`` column.

TRL's RewardTrainer reads a ``margin`` column (the reward gap a pair should
reach); ``margin=True`` makes one from cai's soft labels, so they keep their
strength outside cai. The label stage can write it per row with `with_margin`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.errors import DataError

#: A soft label's reward gap is capped at logit(0.99) ~ 4.6: a label of 1.0 is confident, not infinite.
MARGIN_CAP = 0.99


def preference_margin(p_chosen: float, *, cap: float = MARGIN_CAP) -> float:
    """The reward gap for which the Bradley-Terry model gives ``p_chosen``: logit(p), p kept in [1-cap, cap].

    TRL's RewardTrainer reads a ``margin`` column and trains ``r_c - r_r`` past it,
    so a soft label keeps its strength outside cai: p=0.5 asks for no gap, p=0.9 for 2.2.
    """
    import math

    p = min(max(float(p_chosen), 1 - cap), cap)
    return round(math.log(p / (1 - p)), 6)


def with_margin(row: dict[str, Any]) -> dict[str, Any]:
    """A preference row with TRL's ``margin`` column from its ``p_chosen``; a row without one is left as it is."""
    if row.get("p_chosen") is None:
        return row
    return {**row, "margin": preference_margin(row["p_chosen"])}


def to_hf_dataset(directory: str | Path, *, config: str = "default", margin: bool = False):
    """The dataset directory as a `datasets.Dataset` (what TRL trainers take).

    ``margin=True`` adds TRL's ``margin`` column to preference rows, from their soft labels.
    """
    import datasets

    from cai.layout import DATA_FILE, preference_view

    d = Path(directory)
    if config == "default":
        path = d / DATA_FILE
    elif config == "preference":
        path = preference_view(d) / DATA_FILE
    else:
        path = d / config / DATA_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; is {d} a finished cai dataset directory?")
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    if margin:
        if "p_chosen" not in ds.column_names:
            raise DataError(f"{path}: no p_chosen column to make a margin from; margin needs preference rows")
        ds = ds.map(lambda row: {"margin": preference_margin(row["p_chosen"] if row["p_chosen"] is not None else 0.5)})
    return ds


def export_dataset(directory: str | Path, out: str | Path, *, fmt: str = "parquet", margin: bool = False) -> Path:
    """Write the rows as parquet, jsonl, or a `save_to_disk` directory (``margin``: see `to_hf_dataset`)."""
    ds = to_hf_dataset(directory, margin=margin)
    out = Path(out)
    if fmt == "parquet":
        ds.to_parquet(str(out))
    elif fmt == "jsonl":
        ds.to_json(str(out), lines=True, force_ascii=False)
    elif fmt == "hf":
        ds.save_to_disk(str(out))
    else:
        raise DataError(f"export format '{fmt}' unknown; use parquet, jsonl or hf")
    return out
