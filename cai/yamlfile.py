"""YAML/JSON files validated by pydantic models, with errors that give file:line, field and fix.

Used for constitutions and run configs, so every config file a user writes fails
the same way: one line naming the file, the line, the field path and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cai.errors import UserInputError

M = TypeVar("M", bound=BaseModel)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key, for error messages."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_unique_keys(loader: _LineLoader, node: yaml.MappingNode) -> None:
    """Refuse a key written twice in one mapping (PyYAML would silently keep the last)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue  # '<<' merges may be overridden on purpose
        key = loader.construct_object(key_node)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: PyYAML reports it itself
            continue
        line = key_node.start_mark.line + 1
        if first is not None:
            raise _DuplicateKey(key, first, line)
        seen[key] = line


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    _check_unique_keys(loader, node)
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    keys = {key_node.value: key_node.start_mark.line + 1 for key_node, _ in node.value}
    lines = getattr(loader, "_cai_lines", {})
    lines[id(mapping)] = (node.start_mark.line + 1, keys)
    loader._cai_lines = lines  # type: ignore[attr-defined]
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_of(data: Any, loc: Sequence[Any], lines: dict[int, tuple[int, dict]]) -> int | None:
    """Best line number for a pydantic error location, walking the parsed data."""
    node = data
    best: int | None = None
    for part in loc:
        info = lines.get(id(node)) if isinstance(node, dict) else None
        if info is not None:
            best = info[1].get(part, info[0])
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            inner = lines.get(id(node)) if isinstance(node, dict) else None
            if inner is not None:
                best = inner[0]
        else:
            break
    return best


def describe_error(err: dict) -> str:
    """One pydantic error as 'field X: what is wrong; the fix'."""
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"field '{loc}': unknown key; remove it or check its spelling"
    if kind == "missing":
        return f"field '{loc}': required field is missing; add it"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"field '{loc}': {msg}" if loc else msg


def load_yaml_text(text: str, source: str, error: type[UserInputError] = UserInputError) -> tuple[Any, dict]:
    """Parse YAML (JSON is YAML) keeping key line numbers; malformed YAML raises ``error``."""
    try:
        loader = _LineLoader(text)
        try:
            data = loader.get_single_data()
            lines = getattr(loader, "_cai_lines", {})
        finally:
            loader.dispose()
    except _DuplicateKey as e:
        raise error(
            f"{source}:{e.again}: duplicate key '{e.key}' (first at line {e.first}); "
            "YAML would keep only the last one, so keep one and delete the other"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{where}: malformed YAML ({problem}); check indentation and quoting on that line") from None
    return data, lines


def parse_yaml_model(
    text: str,
    source: str,
    model: type[M],
    error: type[UserInputError] = UserInputError,
    *,
    top_level: str = "a mapping at the top level",
) -> M:
    data, lines = load_yaml_text(text, source, error)
    if not isinstance(data, dict):
        raise error(f"{source}: expected {top_level}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        line = _line_of(data, err["loc"], lines)
        where = f"{source}:{line}" if line else source
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise error(f"{where}: {describe_error(err)}{more}") from None


def load_yaml_model(path: str | Path, model: type[M], error: type[UserInputError] = UserInputError) -> M:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{p}: cannot read ({e}); check the path") from None
    return parse_yaml_model(text, str(p), model, error)
