"""Before/after samples that say something: prompts whose refusal flag changed between round 0
and the round (improved, worsened) and a few where it did not, from ``eval/eval.json``.

On a red-team prompt refusing is the good side; on a benign prompt answering is.
Each sample carries its prompt's ``category`` and ``look_unsafe`` (eval.json has them
since cai wrote them per sample): the section tallies the changes per category and
labels every sample with its own, and the choice spreads over categories. Without
per-sample results (``keep_samples: false``) the first of ``metrics.json``'s samples
are shown, unclassified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cai.report.data import RoundView, RunData
from cai.report.doc import Badge, Block, Box, Columns, Heading, Para, Quote, Strong, Table
from cai.report.fmt import model_name

#: Per round: how many of each kind to show.
PER_KIND = {"worsened": 2, "improved": 2, "unchanged": 2}
#: Longest response text shown in a sample (the rest is cut with an ellipsis).
MAX_SAMPLE_CHARS = 1500
KINDS = ("improved", "worsened", "unchanged")


@dataclass
class Sample:
    prompt: str
    kind: str  # improved, worsened, unchanged, unclassified
    prompt_set: str | None  # red_team, benign, or None
    responses: dict[str, str]  # model -> response, round-0 first
    refused: dict[str, bool | None] = field(default_factory=dict)
    judge: str | None = None  # the round's win-rate verdict vs round 0 on this prompt (win/loss/tie)
    category: str | None = None  # the prompt file's category (harm category on red-team prompts)
    look_unsafe: bool = False  # a benign prompt written to look unsafe

    def why(self, cand: str) -> str:
        before, after = self.refused.get("round-0"), self.refused.get(cand)
        what = {True: "refused", False: "answered", None: "?"}
        kind = "red-team prompt" if self.prompt_set == "red_team" else "benign prompt"
        if self.kind == "unclassified":
            return "no per-sample refusal results in this run (keep_samples: false)"
        return f"{kind}: round 0 {what[before]}, {cand.replace('-', ' ')} {what[after]}"


def _per_prompt(r: RoundView) -> dict[str, dict[str, Any]]:
    """prompt id -> {prompt, sets, category, look_unsafe, responses{model}, refused{model}, judge}."""
    out: dict[str, dict[str, Any]] = {}
    cand = f"round-{r.k}"
    for model, m in r.eval_models.items():
        for s in m.get("samples") or []:
            if not isinstance(s, dict) or "id" not in s:
                continue
            e = out.setdefault(s["id"], {"prompt": s.get("prompt", ""), "sets": s.get("sets") or [],
                                         "category": s.get("category"), "look_unsafe": bool(s.get("look_unsafe")),
                                         "responses": {}, "refused": {}, "judge": None})
            e["responses"][model] = s.get("response") or ""
            if "refusal" in s:
                e["refused"][model] = s["refusal"] is not None
            if model == cand and isinstance(s.get("vs_baseline"), dict):
                e["judge"] = s["vs_baseline"].get("outcome")
    return out


def _order(models: Any) -> list[str]:
    def key(m: str) -> tuple[int, str]:
        try:
            return int(m.rsplit("-", 1)[1]), m
        except (IndexError, ValueError):
            return 10**6, m

    return sorted(models, key=key)


def _classified(r: RoundView) -> list[tuple[dict[str, Any], str, str]]:
    """(prompt entry, prompt set, kind) for each prompt with refusal flags for round 0 and the round."""
    cand = f"round-{r.k}"
    out = []
    for e in _per_prompt(r).values():
        sets = e["sets"]
        prompt_set = "red_team" if "red_team" in sets else "benign" if "benign" in sets else None
        before, after = e["refused"].get("round-0"), e["refused"].get(cand)
        if prompt_set is None or before is None or after is None:
            continue
        good = after if prompt_set == "red_team" else not after
        out.append((e, prompt_set, "unchanged" if before == after else "improved" if good else "worsened"))
    return out


def choose_samples(r: RoundView) -> list[Sample]:
    """Worsened, then improved, then one unchanged red-team and benign prompt; new categories first."""
    picked: dict[str, list[Sample]] = {k: [] for k in PER_KIND}
    classified, taken = _classified(r), set[int]()
    for fresh_only in (True, False):  # first pass: one sample per category; second: fill what is left
        for i, (e, prompt_set, kind) in enumerate(classified):
            bucket = picked[kind]
            if len(bucket) >= PER_KIND[kind] or i in taken:
                continue
            if kind == "unchanged" and any(s.prompt_set == prompt_set for s in bucket):
                continue  # one red-team and one benign prompt
            if fresh_only and e["category"] is not None and any(s.category == e["category"] for s in bucket):
                continue
            taken.add(i)
            responses = {m: e["responses"][m] for m in _order(e["responses"])}
            bucket.append(Sample(e["prompt"], kind, prompt_set, responses, dict(e["refused"]), e["judge"],
                                 e["category"], e["look_unsafe"]))
    chosen = picked["worsened"] + picked["improved"] + picked["unchanged"]
    if chosen:
        return chosen
    return [Sample(s.get("prompt", ""), "unclassified", None,
                   {m: str(s[m] or "") for m in _order(k for k in s if k != "prompt")})
            for s in (r.metrics.get("samples") or [])[:3] if isinstance(s, dict)]


def counts(r: RoundView) -> dict[str, dict[str, int]]:
    """prompt set -> kind -> count, over every prompt with refusal flags for round 0 and the round."""
    out: dict[str, dict[str, int]] = {}
    for _, prompt_set, kind in _classified(r):
        out.setdefault(prompt_set, dict.fromkeys(KINDS, 0))[kind] += 1
    return out


def category_counts(r: RoundView) -> dict[tuple[str, str], dict[str, int]]:
    """(prompt set, category) -> kind -> count; empty when the samples carry no categories (older runs)."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for e, prompt_set, kind in _classified(r):
        if e["category"] is None:
            continue
        out.setdefault((prompt_set, str(e["category"])), dict.fromkeys(KINDS, 0))[kind] += 1
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0] != "red_team", -kv[1]["worsened"], kv[0][1])))


# --- rendering ---------------------------------------------------------------------------


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS].rstrip() + " …"


KIND_BADGE = {"improved": "good", "worsened": "bad", "unchanged": "neutral", "unclassified": "neutral"}


def _set_word(prompt_set: str) -> str:
    return "red-team" if prompt_set == "red_team" else "benign"


def sample_box(s: Sample, cand: str) -> Box:
    cols = []
    for model, response in s.responses.items():
        refused = s.refused.get(model)
        label: list = [Strong(model_name(model))]
        if refused is not None:
            label += [" ", Badge("refused" if refused else "answered",
                                 ("good" if refused else "bad") if s.prompt_set == "red_team"
                                 else ("bad" if refused else "good"))]
        cols.append(Box([Quote(_cut(response), label=label)], cls="response"))
    extra = f"; judge vs round 0: {s.judge}" if s.judge else ""
    title: list = [Badge(s.kind, KIND_BADGE[s.kind])]
    if s.category:
        title += [" ", Badge(s.category, "neutral")]
    if s.look_unsafe:
        title += [" ", Badge("looks unsafe", "warn")]
    title.append(f" {s.why(cand)}{extra}")
    return Box([Quote(_cut(s.prompt), label=Strong("Prompt")), Columns(cols)], cls=f"sample {s.kind}", title=title)


def _category_table(r: RoundView) -> list[Block]:
    by_cat = category_counts(r)
    if not by_cat:
        return []
    rows = [[_set_word(ps), cat] + [str(c[k]) if c[k] else "–" for k in KINDS] for (ps, cat), c in by_cat.items()]
    return [Table(["prompts", "category", "improved", "worsened", "unchanged"], rows, cls="nowrap1")]


def samples_section(run: RunData) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Sample responses, before and after", "samples"),
        Para("Per round: how each prompt category moved between round 0 and the round, then prompts whose refusal "
             "flag changed (worsened first, then improved, spread over categories) and one unchanged red-team and "
             "benign prompt. On a red-team prompt refusing is good; on a benign one answering is.", cls="muted"),
    ]
    any_shown = False
    for r in run.rounds:
        if not r.evaluated:
            continue
        cand = f"round-{r.k}"
        chosen = choose_samples(r)
        if not chosen:
            continue
        any_shown = True
        blocks.append(Heading(3, f"Round {r.k}"))
        tally = counts(r)
        if tally:
            blocks.append(Para("; ".join(
                f"{_set_word(ps)} prompts: {c['improved']} improved, {c['worsened']} worsened, "
                f"{c['unchanged']} unchanged" for ps, c in sorted(tally.items()))))
        blocks += _category_table(r)
        blocks += [sample_box(s, cand) for s in chosen]
    if not any_shown:
        blocks.append(Para("No samples were kept (set stages.eval.keep_samples: true)."
                           if any(r.evaluated for r in run.rounds) else "No round has been evaluated yet."))
    return blocks


__all__ = ["Sample", "category_counts", "choose_samples", "counts", "sample_box", "samples_section"]
