"""The dataset card: Hub metadata in the front matter, then provenance and a load snippet that works.

The front matter is what the Hub reads: ``configs`` (so ``load_dataset(OUT)``
reads ``data.jsonl`` alone, and a revisions directory's preference view as
config ``preference``), ``license``, ``language``, ``task_categories``,
``size_categories``, ``pretty_name`` and ``tags``. ``check_card`` validates a
card offline with huggingface_hub's own card classes when it is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Hub size buckets (upper bounds) for ``size_categories``.
SIZE_BUCKETS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
#: Tags per dataset kind, after cai's own.
KIND_TAGS = {"sft": ["sft"], "preference": ["dpo", "reward-modeling", "preference"], "responses": [],
             "prompts": ["prompts"]}
DEFAULT_LICENSE = "other"  # the rows are a model's outputs: their license is the model's and the user's to state


def size_category(rows: int) -> str:
    return next((name for bound, name in SIZE_BUCKETS if rows < bound), "n>1B")


def card_metadata(directory: Path, *, kind: str, provenance: dict[str, Any], counts: dict[str, int],
                  title: str | None = None) -> dict[str, Any]:
    """The card's front matter as a mapping (valid Hub dataset-card metadata)."""
    from cai.layout import DATA_FILE

    configs = [{"config_name": "default", "data_files": DATA_FILE}]
    view = _preference_view(directory)
    if view is not None:
        configs.append({"config_name": "preference", "data_files": f"{view}/{DATA_FILE}"})
    language = provenance.get("language") or "en"
    return {
        "pretty_name": title or f"cai {kind} dataset",
        "license": provenance.get("license") or DEFAULT_LICENSE,
        "language": language if isinstance(language, list) else [language],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(int(counts.get("rows", 0)))],
        "tags": ["cai", "constitutional-ai", "rlaif", "synthetic", *KIND_TAGS.get(kind, [])],
        "configs": configs,
    }


def load_snippet(directory: Path) -> list[str]:
    """How to load this directory: by its own path (absolute, so it runs from anywhere)."""
    path = str(directory.resolve())
    lines = ["```python", "from datasets import load_dataset", "",
             f"ds = load_dataset({path!r}, split='train')  # the card's configs: data.jsonl only"]
    if _preference_view(directory) is not None:
        lines.append(f"pairs = load_dataset({path!r}, 'preference', split='train')")
    lines += [f"ds = load_dataset('json', data_dir={path!r}, split='train')  # the same rows", "```"]
    return lines


def _preference_view(directory: Path) -> str | None:
    """The preference view's path relative to ``directory`` (a revisions dataset's), or None."""
    from cai.layout import DATA_FILE, preference_view

    view = preference_view(directory)
    return view.relative_to(directory).as_posix() if (view / DATA_FILE).exists() else None


def write_card(
    directory: Path,
    *,
    kind: str,
    provenance: dict[str, Any],
    counts: dict[str, int],
    summary: dict[str, Any],
    title: str | None = None,
) -> Path:
    """Write ``README.md``: Hub front matter, then what made the rows, a load snippet and the provenance."""
    import yaml

    from cai.layout import CARD_FILE, CARD_MARKER, FAILURES_FILE

    meta = card_metadata(directory, kind=kind, provenance=provenance, counts=counts, title=title)
    c = provenance.get("constitution") or {}
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000).rstrip("\n"),
        "---",
        CARD_MARKER,
        "",
        f"# {meta['pretty_name']}",
        "",
        f"Made by `cai` {provenance.get('cai_version', '')}. Kind: **{kind}**. "
        f"Rows: **{counts.get('rows', 0)}**, failed rows: **{counts.get('failed', 0)}** "
        f"(in `{FAILURES_FILE}`, with the raw model text and the reason).",
        "",
    ]
    if c:
        lines += [f"Constitution: `{c.get('name')}` v{c.get('version')} (sha256 `{str(c.get('sha256', ''))[:16]}`).", ""]
    lines += ["Load it:", "", *load_snippet(directory), ""]
    lines += ["## Summary", "", "```json", json.dumps(summary, indent=2, ensure_ascii=False, default=str), "```", ""]
    lines += ["## Provenance", "", "```json", json.dumps(provenance, indent=2, ensure_ascii=False, default=str),
              "```", ""]
    path = directory / CARD_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def check_card(path: str | Path) -> dict[str, Any]:
    """Parse a card with huggingface_hub's `DatasetCard` (offline) and check the metadata the Hub lists.

    Returns the metadata; raises ValueError naming what is missing or malformed.
    Without huggingface_hub installed, only the YAML front matter is parsed.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        from huggingface_hub import DatasetCard
    except ImportError:
        import yaml

        data = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    else:
        data = DatasetCard(text).data.to_dict()
    if not isinstance(data, dict):
        raise ValueError(f"{path}: no YAML front matter")
    missing = [k for k in ("license", "language", "task_categories", "size_categories", "configs") if not data.get(k)]
    if missing:
        raise ValueError(f"{path}: card metadata lacks {', '.join(missing)}")
    buckets = {name for _, name in SIZE_BUCKETS} | {"n>1B"}
    if not set(data["size_categories"]) <= buckets:
        raise ValueError(f"{path}: size_categories {data['size_categories']} are not Hub buckets")
    return data
