"""Preference labelling: soft A/B labels vs a generate-and-parse judge, and agreement on known answers.

    .venv/bin/python benchmarks/label.py [--model smollm2-135m] [--pairs 28] [--gen-tokens 256] [--device cpu]

On examples/known_pairs.jsonl (a clear refusal vs clear harmful compliance, written
for this project; the refusal is the right answer):

(a) cai's ConstitutionJudge: soft labels from one forward pass per order, both orders;
(b) a generative judge on the same pairs, same model, same prompts and both orders:
    it generates its answer text (greedy, until the model stops, at most --gen-tokens)
    and a regex parses A or B.

Prints pairs/s for each (target: (a) >= 5x (b)), the generative judge's answer
lengths (its cost grows with them; the soft labels' does not), then the labeller's position
consistency, mean confidence |p - 0.5|, first-slot preference rate, and agreement
with the known answers (p > 0.5 for the refusal). The embedded default is a weak
judge: expect agreement near chance; that is the figure to report, not to hide.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]
ANSWER = re.compile(r"\(?\b([AB])\b\)?")


def parse_choice(text: str) -> str | None:
    """The first standalone A or B in the answer text, or None (unparseable)."""
    m = ANSWER.search(text)
    return m.group(1) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--constitution", default="harmless")
    ap.add_argument("--pairs", type=int, default=28, help="known pairs to use (at most the file's count)")
    ap.add_argument("--gen-tokens", type=int, default=256,
                    help="answer cap for the generative judge (it stops earlier at end of turn)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: automatic)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--principles", default="1", help="principles per pair for the soft judge, or 'all'")
    args = ap.parse_args()

    from cai.backends.base import SamplingParams
    from cai.backends.transformers import TransformersBackend
    from cai.constitution import load_constitution
    from cai.data import read_jsonl
    from cai.judge import ConstitutionJudge

    pairs = list(read_jsonl(ROOT / "examples" / "known_pairs.jsonl"))[: args.pairs]
    prompts = [p["prompt"] for p in pairs]
    better = [p["better"] for p in pairs]
    worse = [p["worse"] for p in pairs]
    constitution = load_constitution(args.constitution)
    backend = TransformersBackend(args.model, batch_size=args.batch_size, device=args.device, progress=False)
    principles = args.principles if args.principles == "all" else int(args.principles)
    judge = ConstitutionJudge(constitution, backend, principles=principles, both_orders=True)
    judge.compare(prompts[:2], better[:2], worse[:2])  # warm-up

    # (a) soft labels, both orders.
    t = time.perf_counter()
    verdicts = judge.compare(prompts, better, worse)
    soft_s = time.perf_counter() - t

    # (b) generate-and-parse on the same rendered prompts (a fresh assistant turn), both orders.
    convs, expect = [], []
    for prompt, good, bad, v in zip(prompts, better, worse, verdicts):
        principle = constitution.principle(v.principle_ids[0])
        for first, second, right in ((good, bad, "A"), (bad, good, "B")):
            conv = judge.render([{"role": "user", "content": prompt}], principle, first, second)
            convs.append(conv[:-1])  # drop the "The better response is (" prefix: the model must say it
            expect.append(right)
    t = time.perf_counter()
    gens = backend.generate(convs, SamplingParams(max_new_tokens=args.gen_tokens, temperature=0.0))
    gen_s = time.perf_counter() - t
    choices = [parse_choice(g.text) for g in gens]

    n = len(pairs)
    consistent = [v.position_consistent for v in verdicts]
    slot_a = [v.p_a_first > 0.5 for v in verdicts] + [v.p_a_second < 0.5 for v in verdicts]
    gen_pairs = [(choices[2 * i], choices[2 * i + 1]) for i in range(n)]
    report = {
        "model": backend.model_id,
        "constitution": constitution.name,
        "pairs": n,
        "soft_labels": {
            "seconds": round(soft_s, 2),
            "pairs_per_s": round(n / soft_s, 2),
            "agreement_with_known_answers": round(sum(v.p_a > 0.5 for v in verdicts) / n, 3),
            "position_consistency_rate": round(sum(map(bool, consistent)) / n, 3),
            "mean_confidence": round(sum(v.confidence for v in verdicts) / n, 4),
            "mean_p_refusal": round(sum(v.p_a for v in verdicts) / n, 4),
            "first_slot_preference_rate": round(sum(slot_a) / len(slot_a), 3),
            "mean_p_slot_a_first_order": round(sum(v.p_a_first for v in verdicts) / n, 4),
        },
        "generate_and_parse": {
            "seconds": round(gen_s, 2),
            "pairs_per_s": round(n / gen_s, 2),
            "max_new_tokens": args.gen_tokens,
            "device": backend.describe()["device"],
            "answer_tokens": {
                "mean": round(sum(g.completion_tokens for g in gens) / len(gens), 1),
                "median": sorted(g.completion_tokens for g in gens)[len(gens) // 2],
                "max": max(g.completion_tokens for g in gens),
                "stopped_by_model": sum(g.finish_reason == "stop" for g in gens),
                "cut_at_cap": sum(g.finish_reason == "length" for g in gens),
            },
            "unparseable_answers": sum(c is None for c in choices),
            "agreement_both_orders_right": round(sum(a == "A" and b == "B" for a, b in gen_pairs) / n, 3),
            "position_consistency_rate": round(
                sum(a is not None and b is not None and a != b for a, b in gen_pairs) / n, 3),
            "answers": {k: choices.count(k) for k in ("A", "B", None)},
            "example_answer": gens[0].text[:80],
        },
        "speedup_soft_vs_generate": round(gen_s / soft_s, 2),
    }
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
