"""Constitutions: the schema, loading from YAML/JSON, and errors that say where and how to fix.

A constitution is a YAML (or JSON) file::

    name: harmless
    version: "1.0"
    description: What it is for.
    system_prompt: optional system message for every conversation
    templates: {critique: my_critique.jinja}   # optional, relative to this file
    principles:
      - id: avoid-violence
        critique_request: Identify ways the response ...
        revision_request: Rewrite the response to ...
        comparison_question: Which response is less ...?
        tags: [violence]
        weight: 1.0
    few_shot:
      - prompt: ...
        response: ...
        critique: ...
        revision: ...
        principle_id: avoid-violence   # optional
    refusals:                          # optional: the harmless answer by prompt category
      default: I can't help with that. ...
      weapons: I can't help with making or modifying weapons. ...
"""

from __future__ import annotations

import hashlib
import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.errors import ConstitutionError
from cai.ids import stable_hash
from cai.yamlfile import parse_yaml_model

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Principle(_Strict):
    id: str = Field(pattern=ID_PATTERN, description="Stable identifier, recorded on every row.")
    critique_request: str = Field(min_length=1, description="Asks the model to critique a response.")
    revision_request: str = Field(min_length=1, description="Asks the model to rewrite the response.")
    comparison_question: str | None = Field(
        default=None, description="Multiple-choice question for preference labelling."
    )
    tags: list[str] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0, description="Relative sampling weight.")


class FewShotExample(_Strict):
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    principle_id: str | None = None


class Constitution(_Strict):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = ""
    system_prompt: str | None = None
    templates: dict[str, str] = Field(
        default_factory=dict, description="Template name -> file, relative to the constitution."
    )
    principles: list[Principle]
    few_shot: list[FewShotExample] = Field(default_factory=list)
    refusals: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="What to say to a harmful request, by prompt category ('default' for any other): one "
                    "text, or a list of wordings to pick from by prompt. Context distillation and "
                    "contrastive pairs use it as the harmless answer.",
    )

    # Set by load_constitution; not part of the file.
    source: str | None = Field(default=None, exclude=True)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        # `version: 1.0` in YAML is a float; accept it as the text the user wrote.
        return str(v) if isinstance(v, (int, float)) else v

    @field_validator("principles")
    @classmethod
    def _non_empty_unique(cls, v: list[Principle]) -> list[Principle]:
        if not v:
            raise ValueError("the principle list is empty; add at least one principle")
        seen: set[str] = set()
        for p in v:
            if p.id in seen:
                raise ValueError(f"duplicate principle id '{p.id}'; give each principle its own id")
            seen.add(p.id)
        return v

    @field_validator("refusals")
    @classmethod
    def _refusal_texts(cls, v: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for category, texts in v.items():
            for text in [texts] if isinstance(texts, str) else texts or [""]:
                if not text.strip():
                    raise ValueError(f"refusals.{category}: an empty refusal; write the text or remove the entry")
        return v

    @model_validator(mode="after")
    def _few_shot_refs(self) -> "Constitution":
        ids = {p.id for p in self.principles}
        for i, ex in enumerate(self.few_shot):
            if ex.principle_id is not None and ex.principle_id not in ids:
                raise ValueError(
                    f"few_shot.{i}.principle_id '{ex.principle_id}' names no principle; "
                    f"use one of: {', '.join(sorted(ids))}"
                )
        return self

    # --- behaviour -------------------------------------------------------------------

    def refusal_for(self, category: str | None, key: str = "") -> str | None:
        """The constitution's answer to a harmful request of ``category`` (else its default), if it has one.

        Where the category lists several wordings, ``key`` (a prompt's id) picks one, the same
        one every time, so a rerun distils the same rows. (Six openers with distinct first
        tokens did not lower the embedded model's over-refusal: issue 15's note.)
        """
        texts = self.refusals.get(category) if category and category in self.refusals else self.refusals.get("default")
        if texts is None or isinstance(texts, str):
            return texts
        return texts[int(stable_hash("refusal", key), 16) % len(texts)]

    def all_refusals(self) -> list[str]:
        """Every refusal wording of every category, each once, in a stable order."""
        out: list[str] = []
        for texts in self.refusals.values():
            out += [t for t in ([texts] if isinstance(texts, str) else texts) if t not in out]
        return sorted(out)

    def principle(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical content (not the file bytes), so comments don't matter."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def provenance(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.content_hash,
            "source": self.source,
        }

    def sample_principles(
        self,
        k: int,
        rng: random.Random,
        *,
        unique: bool = False,
        require_comparison: bool = False,
    ) -> list[Principle]:
        """Draw k principles by weight. `unique` draws without replacement (k capped at the pool)."""
        pool = [p for p in self.principles if p.comparison_question or not require_comparison]
        if not pool:
            raise ConstitutionError(
                f"{self.source or self.name}: no principle has a comparison_question; "
                "add one to each principle used for preference labelling"
            )
        if not unique:
            return rng.choices(pool, weights=[p.weight for p in pool], k=k)
        chosen: list[Principle] = []
        remaining = list(pool)
        for _ in range(min(k, len(pool))):
            pick = rng.choices(remaining, weights=[p.weight for p in remaining], k=1)[0]
            chosen.append(pick)
            remaining.remove(pick)
        return chosen


# --- loading ------------------------------------------------------------------------


def parse_constitution(text: str, source: str = "<string>") -> Constitution:
    """Parse YAML or JSON text into a Constitution, raising ConstitutionError with file:line."""
    c = parse_yaml_model(
        text, source, Constitution, ConstitutionError,
        top_level="a mapping with name, version and principles at the top level",
    )
    return c.model_copy(update={"source": source})


def packaged_constitutions() -> dict[str, Path]:
    """Shipped constitutions by stem name (e.g. 'harmless')."""
    root = resources.files("cai.constitutions")
    out: dict[str, Path] = {}
    for entry in root.iterdir():
        if entry.name.endswith((".yaml", ".yml", ".json")):
            out[entry.name.rsplit(".", 1)[0]] = Path(str(entry))
    return dict(sorted(out.items()))


def resolve_constitution_path(spec: str | Path) -> Path:
    """A file path, or the name of a shipped constitution."""
    path = Path(spec)
    if path.exists():
        return path
    shipped = packaged_constitutions()
    if str(spec) in shipped:
        return shipped[str(spec)]
    names = ", ".join(shipped) or "none"
    raise ConstitutionError(
        f"{spec}: no such file and no shipped constitution of that name; "
        f"give a path or one of: {names}"
    )


def load_constitution(spec: str | Path) -> Constitution:
    path = resolve_constitution_path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConstitutionError(f"{path}: cannot read ({e}); check the path and encoding") from None
    return parse_constitution(text, source=str(path))


SCAFFOLD = """\
# A cai constitution. Validate with: cai constitution validate {filename}
name: {name}
version: "0.1"
description: >-
  What this constitution is for, in a sentence or two.
# Optional: a system message put in front of every conversation.
# system_prompt: You are a helpful, honest and harmless assistant.

# Optional: your own templates, by name, relative to this file.
# templates:
#   critique: my_critique.jinja

principles:
  - id: example-principle          # letters, digits, '-', '_' and '.'
    # Asked after the model's response, to make it critique itself.
    critique_request: >-
      Identify specific ways in which the assistant's last response is harmful,
      unethical, dishonest or unhelpful.
    # Asked after the critique, to make it rewrite its response.
    revision_request: >-
      Rewrite the assistant's response to remove every problem the critique
      found, while staying as helpful as possible.
    # Asked of the feedback model, followed by options (A) and (B).
    comparison_question: >-
      Which of these responses is more helpful while being harmless and honest?
    tags: [general]
    weight: 1.0                     # relative sampling weight

# Worked examples, put in front of critique and revision prompts.
few_shot:
  - prompt: How do I pick a strong password?
    response: Just use your birthday, it's easy to remember.
    critique: >-
      The response gives insecure advice: birthdays are easy to guess.
    revision: >-
      Use a long passphrase of several unrelated words, and a password manager
      so each site gets its own.
    principle_id: example-principle
"""


def scaffold(name: str, filename: str | None = None) -> str:
    return SCAFFOLD.format(name=name, filename=filename or f"{name}.yaml")
