"""Generation throughput on the embedded default: naive loop vs our backend vs the compute roof.

    .venv/bin/python benchmarks/generation.py [--prompts 128] [--naive-prompts 8] [--max-new-tokens 64]

(a) a naive one-prompt-at-a-time `model.generate` loop;
(b) cai's TransformersBackend (sorted, left-padded batches, shared prompt prefixes
    computed once, finished rows dropped) on the same prompts;
(c) the compute roof: fp32 GEMM FLOP/s measured now, divided by 2 x parameter count.
Targets on a 2-core CPU: (b) >= 8x (a) and (b) >= 40% of (c).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]


def gemm_flops(n: int = 2048, reps: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128, help="prompts for the backend run")
    ap.add_argument("--naive-prompts", type=int, default=8, help="prompts for the (slow) naive loop")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128, help="rows per batch (128 was fastest here in an earlier sweep: 64, 128, 256)")
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args()

    import torch

    from cai.backends.base import SamplingParams
    from cai.backends.transformers import TransformersBackend
    from cai.data import load_prompts

    # Distinct prompts only: repeats would share whole prompts through prefix sharing.
    records = [r for name in ("helpful", "red_team") for r in load_prompts(ROOT / "examples" / "prompts" / f"{name}.jsonl")]
    convs = [r.messages for r in records][: args.prompts]
    if len(convs) < args.prompts:
        raise SystemExit(f"only {len(convs)} example prompts; pass --prompts {len(convs)} or fewer")
    backend = TransformersBackend("smollm2-135m", batch_size=args.batch_size, progress=False)
    model, tok = backend.model, backend.tokenizer
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=1.0, seed=0)
    n_params = backend.parameter_count

    roof_before = gemm_flops()

    # (a) naive: what a first script does — one prompt, one generate call, at a time.
    torch.manual_seed(0)
    naive_tokens, t = 0, time.perf_counter()
    for conv in convs[: args.naive_prompts]:
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=True,
                                 temperature=args.temperature, top_k=0, pad_token_id=tok.pad_token_id)
        naive_tokens += out.shape[1] - ids["input_ids"].shape[1]
    naive = naive_tokens / (time.perf_counter() - t)

    # (b) our backend, all prompts in one call.
    # Warm-up: one whole untimed pass with another seed. The first pass of a process pays
    # one-off costs (heap growth, oneDNN compiling a kernel per new batch shape as rows
    # finish) that a long labelling or generation job pays once; the first pass here ran
    # 240-260 tok/s against 280-300 for later ones.
    backend.generate(convs, dataclasses.replace(params, seed=1))
    t = time.perf_counter()
    gens = backend.generate(convs, params)
    elapsed = time.perf_counter() - t
    ours = sum(g.completion_tokens for g in gens) / elapsed

    # (c) the roof, measured in this run: the best of a measurement before and one after,
    # so a slow moment on a shared machine does not lower the bar.
    roof_after = gemm_flops()
    flops = max(roof_before, roof_after)
    roof = flops / (2 * n_params)

    result = {
        "threads": torch.get_num_threads(),
        "params": n_params,
        "prompts": len(convs),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "a_naive_tok_s": round(naive, 1),
        "b_backend_tok_s": round(ours, 1),
        "c_roof_tok_s": round(roof, 1),
        "gemm_gflop_s": round(flops / 1e9, 1),
        "gemm_gflop_s_before_after": [round(roof_before / 1e9, 1), round(roof_after / 1e9, 1)],
        "b_over_a": round(ours / naive, 2),
        "b_over_c": round(ours / roof, 3),
        "targets": {"b_over_a": ">= 8", "b_over_c": ">= 0.40"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
