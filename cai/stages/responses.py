"""Plain responses from a policy: the first stage of everything, and `cai generate responses`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.base import Backend, SamplingParams
from cai.constitution import Constitution
from cai.data import PromptRecord
from cai.stages.runner import ChunkResult, DatasetJob, DatasetRunOptions, run_dataset, stage_fingerprint
from cai.templates import Conversation, PromptTemplates

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+

TEMPLATE = "initial_response"
#: Variables the initial_response template is given.
PROVIDES = {"prompt", "constitution"}


class ResponsesConfig(BaseModel):
    """Settings of `cai generate responses` (its flags and its --config FILE.yaml). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1, description="Tokens per response.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, ge=0.0, le=1.0, description="Nucleus sampling.")
    seed: int | None = Field(0, description="Sampling seed; the same seed and settings give the same responses.")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed)


def policy_conversation(
    record: PromptRecord,
    templates: PromptTemplates,
    constitution: Constitution | None = None,
) -> Conversation:
    """The record's conversation, its last user turn rendered through the initial_response template."""
    rendered = templates.render_messages(
        TEMPLATE,
        prompt=record.text,
        constitution=constitution,
        system_prompt=constitution.system_prompt if constitution else None,
    )
    history = record.messages[:-1]
    if history and history[0]["role"] == "system":
        rendered = [m for m in rendered if m["role"] != "system"]
    return history + rendered


def generate_responses(
    records: Sequence[PromptRecord],
    backend: Backend,
    templates: PromptTemplates,
    *,
    params: SamplingParams,
    constitution: Constitution | None = None,
) -> ChunkResult:
    """One response per record, in one batched backend call. Empty outputs are failures."""
    convs = [policy_conversation(r, templates, constitution) for r in records]
    gens = backend.generate(convs, params)
    out = ChunkResult()
    for rec, conv, gen in zip(records, convs, gens):
        out.prompt_tokens += gen.prompt_tokens
        out.completion_tokens += gen.completion_tokens
        if not gen.text.strip():
            out.failures.append({"id": rec.id, "prompt": rec.text, "raw": gen.text, "reason": "empty"})
            continue
        row: dict[str, Any] = {
            "id": rec.id,
            "source_prompt": rec.text,
            "messages": record_messages(rec) + [{"role": "assistant", "content": gen.text}],
            "response": gen.text,
            "finish_reason": gen.finish_reason,
            "completion_tokens": gen.completion_tokens,
            **({"extra": rec.extra} if rec.extra else {}),
        }
        out.rows.append(row)
    return out


def sample_k(records: Sequence[PromptRecord], backend: Backend, templates: PromptTemplates,
             constitution: Constitution | None, k: int, params: SamplingParams, out: ChunkResult) -> list[list[str]]:
    """K sampled responses per record in one generate call (token counts added to ``out``)."""
    convs = [policy_conversation(r, templates, constitution) for r in records]
    gens = backend.generate([c for c in convs for _ in range(k)], params)
    for g in gens:
        out.prompt_tokens += g.prompt_tokens
        out.completion_tokens += g.completion_tokens
    return [[g.text for g in gens[n * k : (n + 1) * k]] for n in range(len(records))]


def record_messages(record: PromptRecord) -> Conversation:
    """The conversation as stored in datasets: the user's own words, not the rendered template."""
    return [dict(m) for m in record.messages]


def fingerprint(
    backend: Backend, templates: PromptTemplates, params: SamplingParams, constitution: Constitution | None
) -> dict[str, Any]:
    return stage_fingerprint("responses", backend, templates, [TEMPLATE], sampling=params.to_dict(),
                             constitution=constitution.provenance() if constitution else None)


def run_responses(
    records: Sequence[PromptRecord],
    out_dir: str | Path,
    backend: Backend,
    *,
    params: SamplingParams,
    templates: PromptTemplates | None = None,
    constitution: Constitution | None = None,
    **run: Unpack[DatasetRunOptions],
) -> dict[str, Any]:
    """Sample one response per record into a resumable dataset directory (kind "responses")."""
    from cai.backends.base import provenance

    templates = templates or PromptTemplates(constitution=constitution)
    templates.validate({TEMPLATE: PROVIDES})
    job = DatasetJob(
        kind="responses", fingerprint=fingerprint(backend, templates, params, constitution),
        provenance={"policy_backend": provenance(backend)},
        process=lambda chunk: generate_responses(chunk, backend, templates, params=params, constitution=constitution),
        desc="responses", title="cai responses",
    )
    return run_dataset(records, out_dir, job, **run)


__all__ = ["ResponsesConfig", "generate_responses", "policy_conversation", "sample_k", "fingerprint", "run_responses"]
