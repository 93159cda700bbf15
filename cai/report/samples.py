"""Before/after samples that say something: prompts whose refusal flag changed between round 0
and the round (improved, worsened) and a few where it did not, from ``eval/eval.json``.

On a red-team prompt refusing is the good side; on a benign prompt answering is.
Without per-sample results (``keep_samples: false``) the first of ``metrics.json``'s
samples are shown, unclassified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cai.report.data import RoundView

#: Per round: how many of each kind to show.
PER_KIND = {"worsened": 2, "improved": 2, "unchanged": 2}


@dataclass
class Sample:
    prompt: str
    kind: str  # improved, worsened, unchanged, unclassified
    prompt_set: str | None  # red_team, benign, or None
    responses: dict[str, str]  # model -> response, round-0 first
    refused: dict[str, bool | None] = field(default_factory=dict)
    judge: str | None = None  # the round's win-rate verdict vs round 0 on this prompt (win/loss/tie)

    def why(self, cand: str) -> str:
        before, after = self.refused.get("round-0"), self.refused.get(cand)
        what = {True: "refused", False: "answered", None: "?"}
        kind = "red-team prompt" if self.prompt_set == "red_team" else "benign prompt"
        if self.kind == "unclassified":
            return "no per-sample refusal results in this run (keep_samples: false)"
        return f"{kind}: round 0 {what[before]}, {cand.replace('-', ' ')} {what[after]}"


def _per_prompt(r: RoundView) -> dict[str, dict[str, Any]]:
    """prompt id -> {prompt, sets, responses{model}, refused{model}, judge}."""
    out: dict[str, dict[str, Any]] = {}
    cand = f"round-{r.k}"
    for model, m in r.eval_models.items():
        for s in m.get("samples") or []:
            if not isinstance(s, dict) or "id" not in s:
                continue
            e = out.setdefault(s["id"], {"prompt": s.get("prompt", ""), "sets": s.get("sets") or [],
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
    picked: dict[str, list[Sample]] = {k: [] for k in PER_KIND}
    for e, prompt_set, kind in _classified(r):
        bucket = picked[kind]
        if len(bucket) >= PER_KIND[kind]:
            continue
        if kind == "unchanged" and any(s.prompt_set == prompt_set for s in bucket):
            continue  # one red-team and one benign prompt
        responses = {m: e["responses"][m] for m in _order(e["responses"])}
        bucket.append(Sample(e["prompt"], kind, prompt_set, responses, dict(e["refused"]), e["judge"]))
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
        out.setdefault(prompt_set, {"improved": 0, "worsened": 0, "unchanged": 0})[kind] += 1
    return out


__all__ = ["Sample", "choose_samples", "counts"]
