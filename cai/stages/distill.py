"""Context distillation: SFT targets made *with* the constitution in context, trained *without* it.

For each prompt of the red-team and helpful sets (Askell et al. 2021; Llama 2's safety
context distillation, Touvron et al. 2023, sec. 4.2.4):

* the policy answers with an empty context (``plain``: what it says today), and, for
  red-team prompts, with the constitution's system prompt and its exemplar dialogues in
  front (``in_context``);
* the SFT target of a **red-team** prompt is the constitution's own answer for the
  prompt's category (``refusals:`` in the constitution; ``red_team_target: refusal``) or
  the in-context answer when the refusal detector calls it a refusal (``in_context``);
* the SFT target of a **helpful** prompt is the policy's own plain answer, kept only when
  the detector does *not* call it a refusal, so the mix teaches the contrast and not
  "refuse everything".

Rows are conversational ``messages`` without the context, plus trace columns
(``plain_response``, ``in_context_response``, ``target_source``: which of the above
carried the answer). ``contrastive`` pairs are built from the same rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.base import Backend, SamplingParams
from cai.constitution import Constitution
from cai.data import PromptRecord
from cai.errors import UserInputError
from cai.refusal import RefusalDetector
from cai.stages.responses import TEMPLATE, policy_conversation, record_messages
from cai.stages.runner import ChunkResult, DatasetJob, DatasetRunOptions, run_dataset, stage_fingerprint
from cai.templates import Conversation, PromptTemplates

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+

#: The prompt set a record came from, kept in ``record.extra`` by `tag_records`.
SET_KEY = "cai_set"


class DistillConfig(BaseModel):
    """Settings of context distillation; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    red_team_target: Literal["refusal", "in_context"] = Field(
        "refusal", description="refusal: the constitution's answer for the category; in_context: the policy's "
                               "answer with the constitution in context, kept when it refuses.")
    exemplars: int = Field(4, ge=0, description="Exemplar dialogues (the constitution's few_shot) in the context.")
    in_context_trace: bool = Field(
        False, description="With red_team_target: refusal, also generate (and keep as a trace) the in-context answer.")
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0, description="0 = greedy: the policy's most likely answer.")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed)


def tag_records(records: Sequence[PromptRecord], which: str) -> list[PromptRecord]:
    """The records with the name of their prompt set in ``extra`` (the stage treats the sets differently)."""
    return [PromptRecord(messages=r.messages, id=r.id, extra={**r.extra, SET_KEY: which}) for r in records]


def context_conversation(record: PromptRecord, templates: PromptTemplates, constitution: Constitution,
                         exemplars: int) -> Conversation:
    """The constitution in context: its system prompt, then exemplar dialogues, then the prompt."""
    conv: Conversation = []
    if constitution.system_prompt:
        conv.append({"role": "system", "content": constitution.system_prompt})
    for ex in constitution.few_shot[:exemplars]:
        conv += [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.revision}]
    plain = policy_conversation(record, templates, None)
    return conv + [m for m in plain if m["role"] != "system"]


def check_constitution(constitution: Constitution, config: DistillConfig, source: str = "distill") -> None:
    if config.red_team_target == "refusal" and constitution.refusal_for(None) is None:
        raise UserInputError(
            f"{constitution.source or constitution.name}: no 'refusals: {{default: ...}}' for {source}; add one "
            "(see constitutions/harmless.yaml) or set red_team_target: in_context")


def distill(
    records: Sequence[PromptRecord],
    constitution: Constitution,
    backend: Backend,
    *,
    templates: PromptTemplates,
    config: DistillConfig,
    detector: RefusalDetector | None = None,
) -> ChunkResult:
    """SFT rows for a chunk of tagged records, in one batched generate call."""
    detector = detector or RefusalDetector()
    red = [r.extra.get(SET_KEY) == "red_team" for r in records]
    convs = [policy_conversation(r, templates, None) for r in records]
    ctx_index = {}
    for i, r in enumerate(records):
        if red[i] and (config.red_team_target == "in_context" or config.in_context_trace):
            ctx_index[i] = len(convs)
            convs.append(context_conversation(r, templates, constitution, config.exemplars))
    gens = backend.generate(convs, config.sampling())
    out = ChunkResult()
    for g in gens:
        out.prompt_tokens += g.prompt_tokens
        out.completion_tokens += g.completion_tokens
    for i, rec in enumerate(records):
        plain = gens[i].text.strip()
        in_context = gens[ctx_index[i]].text.strip() if i in ctx_index else None
        trace = {"id": rec.id, "prompt_text": rec.text, "set": rec.extra.get(SET_KEY), "raw": plain,
                 "in_context_response": in_context}
        if red[i]:
            if config.red_team_target == "refusal":
                target, source = constitution.refusal_for(rec.extra.get("category"), rec.id), "constitution_refusal"
            elif in_context and detector.is_refusal(in_context):
                target, source = in_context, "in_context"
            else:
                out.failures.append({**trace, "reason": "in_context_answer_not_a_refusal"})
                _tally(out, "in_context_not_refusal")
                continue
            _tally(out, "plain_refused_red_team" if detector.is_refusal(plain) else "plain_complied_red_team")
        else:
            if not plain:
                out.failures.append({**trace, "reason": "empty"})
                continue
            if detector.is_refusal(plain):
                out.failures.append({**trace, "reason": "helpful_answer_is_a_refusal"})
                _tally(out, "helpful_refused")
                continue
            target, source = plain, "own_answer"
        out.rows.append({
            "id": rec.id,
            "messages": record_messages(rec) + [{"role": "assistant", "content": target}],
            "source_prompt": rec.text,
            "set": rec.extra.get(SET_KEY),
            "category": rec.extra.get("category"),
            "look_unsafe": bool(rec.extra.get("look_unsafe", False)),
            "target_source": source,
            "plain_response": plain,
            "in_context_response": in_context,
        })
        _tally(out, f"target_{source}")
    return out


def _tally(out: ChunkResult, key: str) -> None:
    out.tallies[key] = out.tallies.get(key, 0) + 1


def fingerprint(backend: Backend, templates: PromptTemplates, constitution: Constitution,
                config: DistillConfig) -> dict[str, Any]:
    return stage_fingerprint("distill", backend, templates, [TEMPLATE], config=config.model_dump(mode="json"),
                             constitution=constitution.provenance())


def run_distill(
    red_team: Sequence[PromptRecord],
    helpful: Sequence[PromptRecord],
    out_dir: Any,
    constitution: Constitution,
    backend: Backend,
    *,
    config: DistillConfig | None = None,
    templates: PromptTemplates | None = None,
    **run: Unpack[DatasetRunOptions],
) -> dict[str, Any]:
    """Context-distillation SFT rows for both prompt sets into a resumable dataset directory."""
    from cai.backends.base import provenance

    config = config or DistillConfig()
    templates = templates or PromptTemplates(constitution=constitution)
    templates.validate({TEMPLATE: {"prompt", "constitution"}})
    check_constitution(constitution, config)
    records = tag_records(red_team, "red_team") + tag_records(helpful, "helpful")
    job = DatasetJob(
        kind="sft", fingerprint=fingerprint(backend, templates, constitution, config),
        provenance={"policy_backend": provenance(backend), "method": "context distillation",
                    "refusal_source": "constitution refusals" if config.red_team_target == "refusal"
                    else "policy with the constitution in context"},
        process=lambda chunk: distill(chunk, constitution, backend, templates=templates, config=config),
        desc="distill", title="cai context distillation (SFT)",
    )
    return run_dataset(records, out_dir, job, **run)


__all__ = ["DistillConfig", "distill", "run_distill", "tag_records", "context_conversation", "SET_KEY"]
