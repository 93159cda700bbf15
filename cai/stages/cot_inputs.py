"""What the chain-of-thought stage reads and renders: its config, question sets, few-shot exemplars, prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.answers import AnswerExtractor
from cai.backends.base import SamplingParams
from cai.data import PromptRecord, iter_jsonl_objects, stable_hash
from cai.errors import DataError
from cai.templates import Conversation, PromptTemplates

Format = Literal["few_shot_cot", "zero_shot_cot", "direct"]
FORMATS: tuple[str, ...] = ("few_shot_cot", "zero_shot_cot", "direct")

ZERO_SHOT = "cot_answer"
FEW_SHOT = "cot_few_shot"
RATIONALIZE = "cot_rationalize"
#: Variables each template is given (mirrors cai.templates.TEMPLATE_VARIABLES).
PROVIDES = {ZERO_SHOT: {"question"}, FEW_SHOT: {"question", "examples"}, RATIONALIZE: {"question", "hint"}}

#: Worked examples for the few-shot template, written for this project (also in
#: examples/questions/few_shot.jsonl). Each rationale ends with "The answer is X."
DEFAULT_FEW_SHOT: list[dict[str, Any]] = [
    {"question": "A baker makes 24 muffins and packs them in boxes of 6. How many boxes does she fill?",
     "rationale": "The baker has 24 muffins and each box holds 6. 24 / 6 = 4. The answer is 4.", "answer": 4},
    {"question": "Leo has 7 toy cars. His aunt gives him 3 boxes with 5 toy cars in each box. "
                 "How many toy cars does Leo have now?",
     "rationale": "The boxes hold 3 * 5 = 15 cars. Leo had 7 cars, so now he has 7 + 15 = 22. The answer is 22.",
     "answer": 22},
    {"question": "A bus has 40 seats and 26 people are sitting on it. How many seats are empty?",
     "rationale": "There are 40 seats and 26 are taken. 40 - 26 = 14. The answer is 14.", "answer": 14},
    {"question": "Nora earns $8 an hour and works for 5 hours. Then she spends $12 on lunch. "
                 "How many dollars does she have left?",
     "rationale": "Nora earns 8 * 5 = 40 dollars. After lunch she has 40 - 12 = 28 dollars. The answer is 28.",
     "answer": 28},
]


class CotConfig(BaseModel):
    """Settings of `cai generate cot`. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    k_samples: int = Field(8, ge=1, description="Chains of thought sampled per question.")
    formats: list[Format] = Field(default_factory=lambda: list(FORMATS), min_length=1,
                                  description="SFT row formats to emit for each kept rationale.")
    prompt_style: Literal["few_shot", "zero_shot"] = Field(
        "few_shot", description="Template the K samples (and the greedy answer) are drawn with.")
    few_shot_path: str | None = Field(None, description="jsonl of {question, rationale} exemplars; default: built in.")
    vote_threshold: float = Field(0.5, ge=0.0, le=1.0,
                                  description="Keep a question when majority votes / K reaches this.")
    max_rationales: int | None = Field(None, ge=1, description="Keep at most this many agreeing rationales.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature of the K chains (0: greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling of the K chains.")
    max_new_tokens: int = Field(160, ge=1, description="Tokens per chain of thought.")
    seed: int | None = Field(0, description="Sampling seed; the same seed and settings give the same samples.")
    greedy_eval: bool = Field(True, description="With gold answers, also decode greedily and report its accuracy.")
    rationalize: bool = Field(True, description="With gold answers, STaR-rationalise questions voted wrong.")
    rationalize_samples: int = Field(4, ge=1, description="Hinted samples per wrong question.")
    filter_by_gold: bool = Field(False, description="With gold answers, keep only rationales that reach it.")
    keep_truncated: bool = Field(False, description="Keep rationales cut off by max_new_tokens (they still vote).")
    extractor: Literal["answer_is", "last_number", "regex"] = Field(
        "answer_is", description="How the final answer is read from a chain.")
    answer_pattern: str | None = Field(None, description="Regex for extractor 'regex' (first group = answer).")
    fallback_last_number: bool = Field(True, description="If the pattern finds nothing, use the last number.")
    numeric: bool = Field(True, description="Normalise answers as numbers (5.0 == 5, $1,200 == 1200).")

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _regex_needs_pattern(self) -> "CotConfig":
        if self.extractor == "regex" and not self.answer_pattern:
            raise ValueError("extractor 'regex' needs answer_pattern")
        return self

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, seed=self.seed)

    def greedy(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0, top_p=1.0, seed=self.seed)

    def make_extractor(self) -> AnswerExtractor:
        return AnswerExtractor(self.extractor, pattern=self.answer_pattern,
                               fallback_last_number=self.fallback_last_number, numeric=self.numeric)


# --- inputs -----------------------------------------------------------------------------


def _question_record(obj: Any, where: str) -> PromptRecord:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with a 'question' field")
    q = obj.get("question", obj.get("prompt"))
    if not isinstance(q, str) or not q.strip():
        raise DataError(f"{where}: no 'question' (non-empty text); add one")
    answer = obj.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        raise DataError(f"{where}: 'answer' must be text or a number, got {type(answer).__name__}")
    if isinstance(answer, str) and not answer.strip():
        answer = None
    extra = {k: v for k, v in obj.items() if k not in ("question", "prompt", "id", "answer")}
    extra["answer"] = answer
    qid = str(obj["id"]) if obj.get("id") not in (None, "") else stable_hash("cot-question", q.strip())
    return PromptRecord(messages=[{"role": "user", "content": q.strip()}], id=qid, extra=extra)


def load_questions(path: str | Path, *, limit: int | None = None) -> list[PromptRecord]:
    """A question set: jsonl with ``question`` (or ``prompt``), optional ``answer`` and ``id``.

    The gold answer (or None) lands in ``record.extra["answer"]``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: question file not found; pass a .jsonl with a 'question' field per line")
    if p.suffix not in (".jsonl", ".json"):
        raise DataError(f"{p}: question sets are .jsonl (one {{\"question\", \"answer\"}} object per line)")
    records: list[PromptRecord] = []
    seen: set[str] = set()
    for where, obj in iter_jsonl_objects(p):
        rec = _question_record(obj, where)
        if rec.id in seen:  # a repeated question would share an id; keep the first so resume stays exact
            continue
        seen.add(rec.id)
        records.append(rec)
        if limit and len(records) >= limit:
            break
    if not records:
        raise DataError(f"{p}: no questions found; the file is empty")
    return records


def as_question_records(items: Sequence[PromptRecord | dict[str, Any]]) -> list[PromptRecord]:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, PromptRecord):
            item.extra.setdefault("answer", None)
            out.append(item)
        else:
            out.append(_question_record(item, f"questions[{i}]"))
    return out


def load_few_shot(path: str | Path | None) -> list[dict[str, Any]]:
    if path is None:
        return [dict(x) for x in DEFAULT_FEW_SHOT]
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: few-shot file not found; pass a .jsonl of {{question, rationale}} objects")
    out = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj[k].strip()
                                                for k in ("question", "rationale")):
            raise DataError(f"{p}:{lineno}: a few-shot example needs non-empty 'question' and 'rationale'")
        out.append(obj)
    return out


# --- prompts ------------------------------------------------------------------------------


class CotPrompts:
    """Renders the three CoT conversations for a question."""

    def __init__(self, templates: PromptTemplates, few_shot: list[dict[str, Any]]) -> None:
        self.templates = templates
        self.few_shot = few_shot

    def zero_shot(self, question: str) -> Conversation:
        return self.templates.render_messages(ZERO_SHOT, question=question)

    def few_shot_conv(self, question: str) -> Conversation:
        return self.templates.render_messages(FEW_SHOT, question=question, examples=self.few_shot)

    def sampling(self, question: str, style: str) -> Conversation:
        return self.few_shot_conv(question) if style == "few_shot" else self.zero_shot(question)

    def rationalize(self, question: str, hint: str) -> Conversation:
        return self.templates.render_messages(RATIONALIZE, question=question, hint=hint)

    def for_format(self, fmt: str, question: str) -> Conversation:
        """The prompt stored in a row of format ``fmt``: never a hint."""
        if fmt == "few_shot_cot":
            return self.few_shot_conv(question)
        if fmt == "zero_shot_cot":
            return self.zero_shot(question)
        return [{"role": "user", "content": question}]
