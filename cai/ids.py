"""Deterministic ids: a hash of a row's inputs, so that rerunning a command skips what is done."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(*parts: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``parts`` as canonical JSON (keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
