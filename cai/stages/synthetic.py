"""Grow a red-team or helpful prompt set from seed prompts, self-instruct style.

Each request shows the model k random seeds as a numbered list (as the start of
its own answer) and lets it continue the list; the numbered lines it writes are
the candidates. Candidates are filtered by length, then near-duplicates are
removed within the new prompts and against the seeds (cai.dedup). Rounds repeat,
one batched generate call each, until there are ``n`` new prompts.
Output with no numbered item (e.g. a blank line, then prose) is a recorded
failure with the raw text; items that are refusals or too short/long are dropped
and counted.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.base import Backend, SamplingParams, provenance
from cai.data import DatasetWriter, read_jsonl, stable_hash
from cai.dedup import dedup_texts, normalise
from cai.embeddings import DEFAULT_THRESHOLD
from cai.errors import UserInputError
from cai.progress import progress_bar
from cai.stages.runner import ChunkResult, stage_fingerprint
from cai.templates import TEMPLATE_VARIABLES, PromptTemplates

TEMPLATE = "synthetic_prompts"
# The model declining to write more is not a prompt.
_REFUSAL = re.compile(r"^(i cannot|i can't|i can not|i'm sorry|i am sorry|as an ai|sorry)\b", re.IGNORECASE)
_ITEM = re.compile(r"^\s*(\d{1,3})\s*[.)]\s*(.*\S)\s*$")
#: Give up after this many rounds in a row that add nothing new.
STALL_ROUNDS = 3


class SyntheticConfig(BaseModel):
    """Settings of synthetic prompt generation. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["red_team", "helpful"] = "red_team"
    n: int = Field(100, ge=1, description="New prompts wanted.")
    seeds_per_request: int = Field(6, ge=1, description="Seed prompts shown in each request.")
    per_request: int = Field(8, ge=1, description="New prompts asked for in each request.")
    requests_per_round: int = Field(16, ge=1, description="Requests in one batched generate call.")
    max_rounds: int = Field(50, ge=1)
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="Cosine similarity that counts as a duplicate.")
    min_words: int = Field(3, ge=1)
    max_chars: int = Field(500, ge=10)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = 0


def parse_numbered(text: str, first_number: int) -> list[str]:
    """The items of a numbered list; ``text`` continues a prefix that ended with '{first_number}.'."""
    items = []
    for line in (f"{first_number}. " + text.lstrip(" \t")).splitlines():
        m = _ITEM.match(line)
        if m and m.group(2):
            items.append(" ".join(m.group(2).split()))
    return items


def _one_line(text: str) -> str:
    return " ".join(text.split())


def propose(
    seeds: Sequence[str],
    backend: Backend,
    round_index: int,
    *,
    config: SyntheticConfig,
    templates: PromptTemplates,
) -> tuple[list[str], ChunkResult]:
    """One round: ``requests_per_round`` requests in one generate call -> candidate prompts."""
    rng = random.Random(stable_hash(config.seed, round_index))
    k = min(config.seeds_per_request, len(seeds))
    shown = [[_one_line(s) for s in rng.sample(list(seeds), k)] for _ in range(config.requests_per_round)]
    convs = [templates.render_messages(TEMPLATE, seeds=s, kind=config.kind, n=config.per_request) for s in shown]
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            top_p=config.top_p, seed=config.seed + round_index)
    gens = backend.generate(convs, params)
    result = ChunkResult()
    candidates: list[str] = []
    for j, (gen, s) in enumerate(zip(gens, shown)):
        result.prompt_tokens += gen.prompt_tokens
        result.completion_tokens += gen.completion_tokens
        items = parse_numbered(gen.text, len(s) + 1)
        if gen.finish_reason == "length" and len(items) > 1:
            items = items[:-1]  # the last item was cut off mid-sentence
        if not items:
            result.failures.append({"id": stable_hash("unparseable", config.seed, round_index, j),
                                    "reason": "unparseable", "raw": gen.text, "round": round_index})
            _tally(result, "unparseable")
            continue
        for item in items:
            if len(item.split()) < config.min_words or len(item) > config.max_chars:
                _tally(result, "filtered_length")
            elif _REFUSAL.match(item):
                _tally(result, "filtered_refusal")
            else:
                candidates.append(item)
    _tally(result, "candidates", len(candidates))
    return candidates, result


def _tally(result: ChunkResult, key: str, n: int = 1) -> None:
    result.tallies[key] = result.tallies.get(key, 0) + n


def fingerprint(backend: Backend, templates: PromptTemplates, config: SyntheticConfig,
                seeds: Sequence[str]) -> dict[str, Any]:
    # n is left out: asking for more later extends the same set.
    return stage_fingerprint("synthetic_prompts", backend, templates, [TEMPLATE],
                             config=config.model_dump(mode="json", exclude={"n"}),
                             seeds_sha256=stable_hash(list(seeds), length=64))


def run_synthetic_prompts(
    seeds: Sequence[str],
    out_dir: str | Path,
    backend: Backend,
    *,
    config: SyntheticConfig,
    templates: PromptTemplates | None = None,
    overwrite: bool = False,
    progress: bool = True,
    embedder: Any | None = None,
) -> dict[str, Any]:
    """Generate ``config.n`` new deduplicated prompts into a resumable 'prompts' dataset directory."""
    import time

    seeds = [s for s in (_one_line(s) for s in seeds) if s]
    if not seeds:
        raise UserInputError("no seed prompts; give a --seeds file with at least one prompt")
    templates = templates or PromptTemplates()
    templates.validate({TEMPLATE: TEMPLATE_VARIABLES[TEMPLATE]})
    writer = DatasetWriter(out_dir, kind="prompts", fingerprint=fingerprint(backend, templates, config, seeds),
                           provenance={"policy_backend": provenance(backend)}, overwrite=overwrite)
    out = Path(out_dir)
    accepted = [r["prompt"] for r in read_jsonl(out / "data.jsonl")]
    done_rounds = [r.get("round", -1) for r in read_jsonl(out / "data.jsonl")]
    done_rounds += [r.get("round", -1) for r in read_jsonl(writer.fail_path)]
    round_index = max(done_rounds, default=-1) + 1
    total = ChunkResult()
    started, stalled, rounds = time.perf_counter(), 0, 0
    with progress_bar(total=config.n, desc=f"prompts ({config.kind})", unit="prompt", enabled=progress,
                      initial=min(len(accepted), config.n)) as bar:
        while len(accepted) < config.n and rounds < config.max_rounds and stalled < STALL_ROUNDS:
            candidates, result = propose(seeds, backend, round_index, config=config, templates=templates)
            dd = dedup_texts(candidates, against=seeds + accepted, threshold=config.threshold, model=embedder)
            _tally(result, "dropped_exact", sum(1 for d in dd.dropped if d[1] == "exact"))
            _tally(result, "dropped_near", sum(1 for d in dd.dropped if d[1] == "near"))
            new = [candidates[i] for i in dd.keep][: config.n - len(accepted)]
            rows = [{"id": stable_hash(normalise(t)), "prompt": t, "kind": config.kind, "round": round_index,
                     "source": "synthetic"} for t in new]
            writer.write_failures(result.failures)
            writer.write(rows)
            accepted += new
            total.add(result)
            bar.update(len(new))
            stalled = 0 if new else stalled + 1
            rounds += 1
            round_index += 1
    seconds = time.perf_counter() - started
    summary = {
        "wanted": config.n,
        "have": len(accepted),
        "rounds_this_run": rounds,
        "stopped": "enough" if len(accepted) >= config.n else
                   ("stalled (no new prompts in a row)" if stalled >= STALL_ROUNDS else "max_rounds"),
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "seconds": round(seconds, 2),
        "completion_tokens_per_s": round(total.completion_tokens / seconds, 2) if seconds > 0 else 0.0,
        "tallies": total.tallies,
    }
    return writer.finalize(summary, title=f"cai synthetic {config.kind} prompts")


__all__ = ["SyntheticConfig", "parse_numbered", "propose", "run_synthetic_prompts"]
