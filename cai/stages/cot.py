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

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence


from cai.answers import Extraction, normalize_answer
from cai.backends.base import Backend
from cai.data import FAILURES_FILE, PromptRecord, read_jsonl, read_rows, stable_hash
from cai.stages.runner import ChunkResult, DatasetJob, DatasetRunOptions, run_dataset, stage_fingerprint
from cai.templates import PromptTemplates

from cai.stages.cot_inputs import (  # noqa: F401 (re-exported)
    Format, FORMATS, ZERO_SHOT, FEW_SHOT, RATIONALIZE, PROVIDES, DEFAULT_FEW_SHOT, CotConfig, load_questions, as_question_records, load_few_shot, CotPrompts,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+


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
    return stage_fingerprint("cot", backend, templates, list(PROVIDES),
                             few_shot=stable_hash(load_few_shot(config.few_shot_path)), config=config.model_dump())


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
    limit: int | None = None,
    **run: Unpack[DatasetRunOptions],
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
        title="cai self-generated chain-of-thought (sft)", chunk_size=32,
    )
    result = run_dataset(records, out_dir, job, **run)
    return {"out": str(out_dir), **result}


__all__ = ["CotConfig", "load_questions", "generate_cot", "run_cot", "majority_vote", "summarize"]
