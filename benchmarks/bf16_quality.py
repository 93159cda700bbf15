"""bf16 vs fp32 on the CPU: do greedy text and the judge's soft labels change?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bf16_quality.py [--model smollm2-135m] [--prompts 64]

The check behind ``dtype=auto`` picking bfloat16 on CPUs where it is measurably faster
(cai.hardware). Two backends on the same model, one loaded in float32 and one in
bfloat16, on two sets:

(1) examples/known_pairs.jsonl (a clear refusal vs clear harmful compliance): greedy
    answers to the prompts, and the ConstitutionJudge's soft labels on (better, worse),
    both orders, one principle per pair (the same seeded principle for both dtypes);
(2) a seeded sample of --prompts prompts from examples/prompts (half helpful, half
    red-team): greedy answers, and soft labels on (fp32's greedy answer, a fixed
    refusal), so both judges see the same texts.

Prints, per set: rows whose greedy text is identical, where differing rows first
part (in tokens), and mean / max |Δp| of the soft labels (the pair's p, and each
order's p on its own), plus how often p > 0.5 flips. The bar: |Δp| <= 0.02.
Greedy text is a harsh measure: one near-tie token flips and the rest of the
answer follows it; the divergence position says how late that happens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]
REFUSAL = "I can't help with that."


def compare_text(backend: Any, a: list[str], b: list[str]) -> dict[str, Any]:
    """Identical rows, and for the rest the first differing token (median, min)."""
    from cai.backends.base import common_prefix_len

    same = sum(x == y for x, y in zip(a, b))
    splits = sorted(common_prefix_len(backend._encode(x), backend._encode(y)) for x, y in zip(a, b) if x != y)
    return {
        "rows": len(a),
        "identical_greedy_text": same,
        "identical_rate": round(same / len(a), 3),
        "differing_rows_first_split_token_median": splits[len(splits) // 2] if splits else None,
        "differing_rows_first_split_token_min": splits[0] if splits else None,
    }


def compare_labels(fp32: list[Any], bf16: list[Any]) -> dict[str, Any]:
    """|Δp| of the pair's p and of each order's p, and how often the side of 0.5 flips."""

    def stats(xs: list[float]) -> dict[str, float]:
        return {"mean": round(sum(xs) / len(xs), 4), "max": round(max(xs), 4)}

    d_pair = [abs(a.p_a - b.p_a) for a, b in zip(fp32, bf16)]
    d_orders = [abs(a.p_a_first - b.p_a_first) for a, b in zip(fp32, bf16)]
    d_orders += [abs(a.p_a_second - b.p_a_second) for a, b in zip(fp32, bf16) if a.p_a_second is not None]
    return {
        "pairs": len(fp32),
        "abs_dp_pair": stats(d_pair),
        "abs_dp_each_order": stats(d_orders),
        "side_of_half_flips": sum((a.p_a > 0.5) != (b.p_a > 0.5) for a, b in zip(fp32, bf16)),
        "mean_p_fp32": round(sum(a.p_a for a in fp32) / len(fp32), 4),
        "mean_p_bf16": round(sum(b.p_a for b in bf16) / len(bf16), 4),
    }


def sample_prompts(n: int, seed: int = 0) -> list[Any]:
    """n distinct prompts, half helpful and half red-team, drawn with a fixed seed."""
    from cai.data import load_prompts

    rng = random.Random(seed)
    out = []
    for name, k in (("helpful", n - n // 2), ("red_team", n // 2)):
        records = load_prompts(ROOT / "examples" / "prompts" / f"{name}.jsonl")
        out += rng.sample(records, k)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--constitution", default="harmless")
    ap.add_argument("--prompts", type=int, default=64, help="sampled example prompts for set (2)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="greedy answer length")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    import torch

    from cai.backends.base import SamplingParams
    from cai.backends.transformers import TransformersBackend
    from cai.constitution import load_constitution
    from cai.data import read_jsonl
    from cai.hardware import cpu_bf16_features
    from cai.judge import ConstitutionJudge

    constitution = load_constitution(args.constitution)
    backends = {dt: TransformersBackend(args.model, batch_size=args.batch_size, device="cpu", dtype=dt, progress=False)
                for dt in ("float32", "bfloat16")}
    judges = {dt: ConstitutionJudge(constitution, b, principles=1, both_orders=True, seed=0)
              for dt, b in backends.items()}
    greedy = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)

    pairs = list(read_jsonl(ROOT / "examples" / "known_pairs.jsonl"))
    known_convs = [[{"role": "user", "content": p["prompt"]}] for p in pairs]
    records = sample_prompts(args.prompts)
    sample_convs = [r.messages for r in records]

    texts: dict[str, dict[str, list[str]]] = {}
    labels: dict[str, dict[str, list[Any]]] = {}
    seconds: dict[str, float] = {}
    for dt, backend in backends.items():
        t = time.perf_counter()
        texts[dt] = {"known": [g.text for g in backend.generate(known_convs, greedy)],
                     "sample": [g.text for g in backend.generate(sample_convs, greedy)]}
        seconds[dt] = round(time.perf_counter() - t, 1)
    # Set (2)'s pairs are fp32's answers against a fixed refusal, the same texts for both judges.
    sample_prompts_text = [r.messages[-1]["content"] for r in records]
    sample_answers = [t or "(no answer)" for t in texts["float32"]["sample"]]
    for dt, judge in judges.items():
        labels[dt] = {
            "known": judge.compare([p["prompt"] for p in pairs], [p["better"] for p in pairs],
                                   [p["worse"] for p in pairs]),
            "sample": judge.compare(sample_prompts_text, sample_answers, [REFUSAL] * len(records)),
        }

    ref = backends["float32"]
    report = {
        "model": ref.model_id,
        "threads": torch.get_num_threads(),
        "cpu_bf16_features": sorted(cpu_bf16_features()),
        "max_new_tokens": args.max_new_tokens,
        "generate_seconds": seconds,
        "known_pairs": {
            "greedy": compare_text(ref, texts["float32"]["known"], texts["bfloat16"]["known"]),
            "soft_labels": compare_labels(labels["float32"]["known"], labels["bfloat16"]["known"]),
            "agreement_with_known_answers": {
                dt: round(sum(v.p_a > 0.5 for v in labels[dt]["known"]) / len(pairs), 3) for dt in labels},
        },
        "example_prompts": {
            "greedy": compare_text(ref, texts["float32"]["sample"], texts["bfloat16"]["sample"]),
            "soft_labels": compare_labels(labels["float32"]["sample"], labels["bfloat16"]["sample"]),
        },
        "bar": "abs_dp <= 0.02",
    }
    worst = max(report[s]["soft_labels"]["abs_dp_pair"]["max"] for s in ("known_pairs", "example_prompts"))
    report["verdict"] = "within the bar" if worst <= 0.02 else f"max |dp| {worst} over the bar"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
