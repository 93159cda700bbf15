"""Self-generated chain-of-thought data: self-consistency (LMSI) and STaR rationalisation.

For each question: sample K chains of thought in one batched call, read each
final answer, and take a majority vote. When the winning answer's vote share
(votes / K — failed extractions count against it) reaches ``vote_threshold``,
the rationales that agree with it become SFT rows, in several prompt formats
(few-shot CoT, zero-shot CoT, direct answer), as in "Large Language Models Can
Self-Improve". With gold answers the stage also decodes greedily (for the
greedy-vs-self-consistency comparison) and, STaR-style, re-prompts the
questions self-consistency got wrong with the gold answer as a hint; a hinted
rationale that reaches the gold answer is stored under the plain prompt, so
the hint never reaches the training data.

Output, in one dataset directory (kind "sft"):

* ``data.jsonl`` — one row per kept rationale per format (``messages`` plus
  ``format``, ``origin``, ``source_id``, ``vote_share``, ``answers``, ``votes``
  and the question-level ``question_stats``);
* ``failures.jsonl`` — ``kind: "dropped"`` records (id = the question id, the
  reason, and every sampled text) and ``kind: "extraction_failed"`` records
  (one per unreadable sample, with the raw text and why).

A question counts as done once it has a data row or a ``dropped`` record, so a
rerun resumes exactly where it stopped.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cai.answers import AnswerExtractor, Extraction, normalize_answer
from cai.backends.base import Backend, SamplingParams
from cai.data import FAILURES_FILE, PromptRecord, iter_jsonl_objects, read_jsonl, read_rows, stable_hash
from cai.errors import DataError, UserInputError
from cai.stages.runner import ChunkResult, DatasetJob, run_dataset
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
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(160, ge=1)
    seed: int | None = 0
    greedy_eval: bool = Field(True, description="With gold answers, also decode greedily and report its accuracy.")
    rationalize: bool = Field(True, description="With gold answers, STaR-rationalise questions voted wrong.")
    rationalize_samples: int = Field(4, ge=1, description="Hinted samples per wrong question.")
    filter_by_gold: bool = Field(False, description="With gold answers, keep only rationales that reach it.")
    keep_truncated: bool = Field(False, description="Keep rationales cut off by max_new_tokens (they still vote).")
    extractor: Literal["answer_is", "last_number", "regex"] = "answer_is"
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


def load_cot_config(path: str | Path | None = None, **overrides: Any) -> CotConfig:
    """A CotConfig from a YAML/JSON file (optional), then ``overrides`` (None values ignored)."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise UserInputError(f"{p}: cannot read config ({e.strerror}); check the path") from None
        except yaml.YAMLError as e:
            raise UserInputError(f"{p}: not valid YAML ({e}); fix the syntax") from None
        if not isinstance(loaded, dict):
            raise UserInputError(f"{p}: expected a mapping of cot settings")
        data = dict(loaded.get("cot", loaded))  # a whole run config may nest it under `cot:`
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CotConfig(**data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        src = f"{path}: " if path else ""
        raise UserInputError(f"{src}cot setting '{where}': {err['msg']}; see `cai generate cot --help`") from None


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


# --- voting -------------------------------------------------------------------------------


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, float, dict[str, int]]:
    """(winner, votes/len(answers), counts). Failed extractions (None) count against the share.

    Ties go to the answer seen first, so the result does not depend on dict order.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0.0, {}
    first = {a: i for i, a in reversed(list(enumerate(answers))) if a is not None}
    winner = max(counts, key=lambda a: (counts[a], -first[a]))
    return winner, counts[winner] / len(answers), dict(counts.most_common())


def _gold(record: PromptRecord, numeric: bool) -> str | None:
    g = record.extra.get("answer")
    return normalize_answer(g, numeric=numeric) if g is not None else None


def _failure(qid: str, stage: str, index: int, text: str, ex: Extraction) -> dict[str, Any]:
    return {"id": stable_hash(qid, stage, index), "kind": "extraction_failed", "source_id": qid,
            "stage": stage, "sample_index": index, "reason": ex.reason or "no answer", "raw": text}


def generate_cot(
    records: Sequence[PromptRecord],
    backend: Backend,
    *,
    templates: PromptTemplates | None = None,
    config: CotConfig,
) -> ChunkResult:
    """CoT SFT rows for a chunk of questions.

    Backend calls, each over the whole chunk: K samples per question (one call);
    greedy answers for questions with gold (one call, if ``greedy_eval``); hinted
    samples for questions self-consistency got wrong (one call, if ``rationalize``).
    """
    records = as_question_records(records)
    prompts = CotPrompts(templates or PromptTemplates(), load_few_shot(config.few_shot_path))
    extractor = config.make_extractor()
    out = ChunkResult(tallies={})
    tally = Counter[str]()
    K = config.k_samples

    questions = [r.text for r in records]
    golds = [_gold(r, config.numeric) for r in records]
    sample_convs = [prompts.sampling(q, config.prompt_style) for q in questions]

    # 1) K samples for every question, in one call.
    gens = backend.generate([c for c in sample_convs for _ in range(K)], config.sampling())
    texts = [[g.text for g in gens[i * K:(i + 1) * K]] for i in range(len(records))]
    finish = [[g.finish_reason for g in gens[i * K:(i + 1) * K]] for i in range(len(records))]
    for g in gens:
        out.prompt_tokens += g.prompt_tokens
        out.completion_tokens += g.completion_tokens

    # 2) Greedy answers, only where there is a gold answer to score them against.
    greedy: dict[int, tuple[str, Extraction]] = {}
    graded = [i for i, g in enumerate(golds) if g is not None]
    if config.greedy_eval and graded:
        ggens = backend.generate([sample_convs[i] for i in graded], config.greedy())
        for i, g in zip(graded, ggens):
            out.prompt_tokens += g.prompt_tokens
            out.completion_tokens += g.completion_tokens
            greedy[i] = (g.text, extractor.extract(g.text))

    # 3) Extract and vote.
    extracted = [[extractor.extract(t) for t in ts] for ts in texts]
    votes = [majority_vote([e.answer for e in ex]) for ex in extracted]

    # 4) STaR: hinted samples for questions whose vote missed the gold answer.
    wrong = [i for i in graded if votes[i][0] != golds[i]] if config.rationalize else []
    hinted: dict[int, list[tuple[str, Extraction, str]]] = {}
    if wrong:
        R = config.rationalize_samples
        rconvs = [prompts.rationalize(questions[i], str(records[i].extra["answer"])) for i in wrong]
        rgens = backend.generate([c for c in rconvs for _ in range(R)], config.sampling())
        for n, i in enumerate(wrong):
            chunk = rgens[n * R:(n + 1) * R]
            hinted[i] = [(g.text, extractor.extract(g.text), g.finish_reason) for g in chunk]
            for g in chunk:
                out.prompt_tokens += g.prompt_tokens
                out.completion_tokens += g.completion_tokens

    # 5) Rows, drops and failures.
    for i, rec in enumerate(records):
        qid, question, gold = rec.id, questions[i], golds[i]
        winner, share, counts = votes[i]
        answers = [e.answer for e in extracted[i]]
        for k, (t, e) in enumerate(zip(texts[i], extracted[i])):
            if not e.ok:
                out.failures.append(_failure(qid, "sample", k, t, e))
                tally["extraction_failed"] += 1
            elif e.method == "last_number":
                tally["fallback_last_number"] += 1
        if i in greedy and not greedy[i][1].ok:
            out.failures.append(_failure(qid, "greedy", 0, greedy[i][0], greedy[i][1]))
            tally["extraction_failed_greedy"] += 1

        confident = winner is not None and share >= config.vote_threshold
        agreeing = [k for k, a in enumerate(answers) if confident and a == winner
                    and (config.keep_truncated or finish[i][k] != "length")]
        if config.filter_by_gold and gold is not None:
            agreeing = [k for k in agreeing if answers[k] == gold]
        kept = _dedupe([(k, texts[i][k]) for k in agreeing])
        if config.max_rationales:
            kept = kept[: config.max_rationales]

        tally["truncated_samples"] += sum(f == "length" for f in finish[i])
        rationalized: tuple[int, str] | None = None
        hint_leaks = 0
        for k, (t, e, fin) in enumerate(hinted.get(i, [])):
            if not e.ok:
                out.failures.append(_failure(qid, "rationalize", k, t, e))
                tally["extraction_failed_rationalize"] += 1
            elif e.answer == gold and (config.keep_truncated or fin != "length"):
                if "hint" in t.lower():  # it talks about the hint: useless without the hint, so not kept
                    hint_leaks += 1
                    continue
                rationalized = (k, t)
                break

        stats = {
            "gold": gold,
            "majority_answer": winner,
            "vote_share": round(share, 4),
            "majority_correct": (winner == gold) if gold is not None else None,
            "greedy_answer": greedy[i][1].answer if i in greedy else None,
            "greedy_correct": (greedy[i][1].answer == gold) if i in greedy else None,
            "kept_rationales": len(kept),
            "kept_correct": sum(answers[k] == gold for k, _ in kept) if gold is not None else None,
            "rationalization_attempted": i in hinted,
            "rationalized": rationalized is not None,
            "hint_leaks": hint_leaks,
        }
        common = {"source_id": qid, "question": question, "answers": answers, "votes": counts,
                  "vote_share": stats["vote_share"], "gold": gold, "question_stats": stats,
                  **({"extra": {k: v for k, v in rec.extra.items() if k != "answer"}}
                     if len(rec.extra) > 1 else {})}

        rows = []
        for k, text in kept:
            rows += _rows(prompts, config.formats, question, text, winner, k, "self_consistency",
                          answers[k] == gold if gold is not None else None, finish[i][k], common)
        if rationalized is not None:
            k, text = rationalized
            rows += _rows(prompts, config.formats, question, text, gold, k, "rationalization", True, "stop", common)
        # One direct-answer row per question, not one per rationale; a rationalised (gold) answer
        # replaces a majority answer the gold showed wrong, so the rows never teach two answers.
        directs = [r for r in rows if r["format"] == "direct"]
        rows = [r for r in rows if r["format"] != "direct"] + directs[-1:]
        out.rows += rows
        if rows:
            tally["questions_kept"] += 1
            tally["rationalized"] += int(rationalized is not None)
        else:
            reason = _drop_reason(winner, share, config, gold, bool(agreeing), i in hinted, hint_leaks)
            tally[f"dropped_{reason.split(':')[0]}"] += 1
            out.failures.append({"id": qid, "kind": "dropped", "reason": reason, "raw": texts[i],
                                 "hinted_raw": [h[0] for h in hinted.get(i, [])], **common})
    out.tallies = dict(tally)
    return out


def _dedupe(items: list[tuple[int, str]]) -> list[tuple[int, str]]:
    seen: set[str] = set()
    out = []
    for k, text in items:
        key = " ".join(text.split())
        if key not in seen:
            seen.add(key)
            out.append((k, text))
    return out


def _drop_reason(winner, share, config, gold, any_agreeing, attempted, hint_leaks) -> str:
    if winner is None:
        reason = "no_answer: no sample had a readable final answer"
    elif share < config.vote_threshold:
        reason = f"low_agreement: majority share {share:.2f} < threshold {config.vote_threshold}"
    elif config.filter_by_gold and gold is not None:
        reason = f"wrong_majority: majority answer {winner} != gold {gold} (filter_by_gold)"
    else:
        reason = "no_rationale: every agreeing rationale was cut off by max_new_tokens (keep_truncated is off)"
    if attempted:
        reason += "; rationalisation found no hint-free rationale reaching the gold answer"
        if hint_leaks:
            reason += f" ({hint_leaks} mentioned the hint)"
    return reason


def _rows(prompts: CotPrompts, formats: Sequence[str], question: str, rationale: str, answer: str | None,
          k: int, origin: str, correct: bool | None, finish_reason: str, common: dict[str, Any]) -> list[dict]:
    rows = []
    for fmt in formats:
        content = rationale if fmt != "direct" else f"The answer is {answer}."
        rows.append({
            "id": stable_hash(common["source_id"], fmt, origin, k if fmt != "direct" else answer),
            "format": fmt,
            "origin": origin,
            "messages": prompts.for_format(fmt, question) + [{"role": "assistant", "content": content}],
            "answer": answer,
            "rationale": rationale if fmt != "direct" else None,
            "sample_index": k if fmt != "direct" else None,
            "correct": correct,
            "finish_reason": finish_reason,
            **common,
        })
    return rows


# --- running over a question set -----------------------------------------------------------


def fingerprint(backend: Backend, templates: PromptTemplates, config: CotConfig) -> dict[str, Any]:
    return {
        "stage": "cot",
        "policy": backend.model_id,
        "templates": {k: v["sha256"] for k, v in templates.provenance(list(PROVIDES)).items()},
        "few_shot": stable_hash(load_few_shot(config.few_shot_path)),
        "config": config.model_dump(),
    }


def summarize(out_dir: str | Path) -> dict[str, Any]:
    """Question-level figures from what is on disk (so a resumed run reports the whole set)."""
    d = Path(out_dir)
    per_q: dict[str, dict[str, Any]] = {}
    rows_by_format: Counter[str] = Counter()
    rows_by_origin: Counter[str] = Counter()
    for row in read_rows(d):
        per_q.setdefault(row["source_id"], row["question_stats"])
        rows_by_format[row["format"]] += 1
        rows_by_origin[row["origin"]] += 1
    drops: Counter[str] = Counter()
    extraction_failed: Counter[str] = Counter()
    for f in read_jsonl(d / FAILURES_FILE):
        if f.get("kind") == "dropped":
            per_q.setdefault(f["id"], f["question_stats"])
            drops[f["reason"].split(":")[0]] += 1
        elif f.get("kind") == "extraction_failed":
            extraction_failed[f.get("stage", "sample")] += 1
    stats = list(per_q.values())
    graded = [s for s in stats if s.get("gold") is not None]

    def rate(num: int, den: int) -> float | None:
        return round(num / den, 4) if den else None

    greedy = [s for s in graded if s.get("greedy_correct") is not None]
    kept_total = sum(s["kept_rationales"] for s in graded)
    attempted = [s for s in graded if s.get("rationalization_attempted")]
    return {
        "questions": len(stats),
        "questions_with_gold": len(graded),
        "questions_kept": len(stats) - sum(drops.values()),
        "questions_dropped": dict(drops),
        "rows": sum(rows_by_format.values()),
        "rows_by_format": dict(rows_by_format),
        "rows_by_origin": dict(rows_by_origin),
        "extraction_failures": dict(extraction_failed),
        "mean_vote_share": round(sum(s["vote_share"] for s in stats) / len(stats), 4) if stats else None,
        "greedy_accuracy": rate(sum(bool(s["greedy_correct"]) for s in greedy), len(greedy)),
        "self_consistency_accuracy": rate(sum(bool(s["majority_correct"]) for s in graded), len(graded)),
        "kept_rationale_accuracy": rate(sum(s["kept_correct"] or 0 for s in graded), kept_total),
        "kept_rationales_graded": kept_total,
        "rationalization": {"attempted": len(attempted),
                            "succeeded": sum(bool(s["rationalized"]) for s in attempted)},
    }


def run_cot(
    records_or_path: str | Path | Sequence[PromptRecord | dict[str, Any]],
    out_dir: str | Path,
    backend: Backend,
    *,
    config: CotConfig | None = None,
    templates: PromptTemplates | None = None,
    overwrite: bool = False,
    chunk_size: int = 32,
    progress: bool = True,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run the CoT stage over a question set into ``out_dir`` (resumable). Returns counts and summary."""
    config = config or CotConfig()
    templates = templates or PromptTemplates()
    used = {FEW_SHOT if config.prompt_style == "few_shot" else ZERO_SHOT: None}
    used.update({ZERO_SHOT: None} if "zero_shot_cot" in config.formats else {})
    used.update({FEW_SHOT: None} if "few_shot_cot" in config.formats else {})
    if config.rationalize:
        used[RATIONALIZE] = None
    templates.validate({name: PROVIDES[name] for name in used})  # before any model work
    load_few_shot(config.few_shot_path)
    if isinstance(records_or_path, (str, Path)):
        source = str(records_or_path)
        records = load_questions(records_or_path, limit=limit)
    else:
        source = "in-memory"
        records = as_question_records(list(records_or_path)[:limit] if limit else list(records_or_path))
    from cai.backends.base import provenance as backend_provenance

    with_rows: dict[int, set[str]] = {}

    def done(w: Any, r: Any) -> bool:
        if id(w) not in with_rows:
            with_rows[id(w)] = {x["source_id"] for x in read_rows(w.dir) if "source_id" in x}
        return r.id in with_rows[id(w)] or w.is_done(r.id)

    job = DatasetJob(
        kind="sft", fingerprint=fingerprint(backend, templates, config),
        provenance={"questions": source, "backend": backend_provenance(backend)},
        process=lambda chunk: generate_cot(chunk, backend, templates=templates, config=config),
        # A question is done once it has a data row (rows carry source_id) or a `dropped` record
        # (id = question id). Extraction-failure records alone do not count: a kill between
        # writing failures and rows re-runs the question.
        done=done,
        summarize=lambda w: summarize(w.dir), desc="cot",
        title="cai self-generated chain-of-thought (sft)",
    )
    result = run_dataset(records, out_dir, job, overwrite=overwrite, chunk_size=chunk_size, progress=progress)
    return {"out": str(out_dir), **result}


__all__ = ["CotConfig", "load_cot_config", "load_questions", "generate_cot", "run_cot", "majority_vote", "summarize"]
