"""Checks that run before long work: a constitution's principles and the templates it uses."""

from __future__ import annotations

from pathlib import Path

from cai.constitution import Constitution, load_constitution
from cai.templates import SUFFIX, TEMPLATE_VARIABLES, PromptTemplates, lint_all


def lint_constitution(
    spec: str | Path | Constitution,
    *,
    threshold: float = 0.85,
    template_dir: str | Path | None = None,
    embeddings: bool = True,
) -> list[str]:
    """Problems a constitution validates with but a user would want fixed."""
    c = spec if isinstance(spec, Constitution) else load_constitution(spec)
    where = c.source or c.name
    problems: list[str] = []
    for p in c.principles:
        if not p.comparison_question:
            problems.append(
                f"{where}: principle '{p.id}' has no comparison_question; "
                "preference labelling cannot use it (add one)"
            )
    for name in c.templates:
        if name.removesuffix(SUFFIX) not in TEMPLATE_VARIABLES:
            problems.append(
                f"{where}: templates.{name} is not a template cai uses; "
                f"use one of: {', '.join(sorted(TEMPLATE_VARIABLES))}"
            )
    templates = PromptTemplates(template_dir, constitution=c)
    problems += lint_all(templates)
    if embeddings and len(c.principles) > 1:
        from cai.embeddings import near_duplicate_pairs

        texts = [f"{p.critique_request} {p.revision_request}" for p in c.principles]
        for i, j, s in near_duplicate_pairs(texts, threshold=threshold):
            a, b = c.principles[i].id, c.principles[j].id
            problems.append(
                f"{where}: principles '{a}' and '{b}' are near-duplicates (cosine {s:.2f} >= {threshold}); "
                "merge them or make them distinct"
            )
    return problems
