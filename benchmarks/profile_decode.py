"""Where a generate call's time goes: torch.profiler over cai's decode loop, grouped by what the op is.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_decode.py [--prompts 128] [--max-new-tokens 64]
                                                                     [--dtype bfloat16] [--top 25] [--top-p 1.0]

Runs the workload of benchmarks/generation.py (distinct example prompts, one batch,
temperature 0.7) once untimed, then once under torch.profiler, and prints:
(a) the top ops by self CPU time;
(b) the same time grouped into matrix products (linear / matmul), attention (SDPA and
    its pieces), norms, rotary/elementwise, sampling, KV-cache bookkeeping (cat, index,
    copy) and the rest, with the share of the profiled wall time not inside any torch op
    (Python, the decode loop's own bookkeeping).
Groups go by op name, so an op shared by several parts lands in one group: the
sampling weights' vocabulary-wide passes (sub, mul, exp, ...) count as elementwise and
``amax`` as other ops; read those from (a), where each has 1 call per decode step.
Run it on an otherwise idle machine: with a second job on the cores every share moves.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: op-name fragments -> group; first match wins, so the specific names come first.
GROUPS = (
    ("attention", ("scaled_dot_product", "_flash_attention", "attention", "softmax", "baddbmm", "bmm")),
    ("matmul", ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "mkldnn", "onednn")),
    ("norm", ("rms_norm", "layer_norm", "aten::rsqrt", "aten::pow", "aten::mean")),
    ("sampling", ("multinomial", "topk", "sort", "cumsum", "aten::argmax", "exponential", "aten::div_", "isin")),
    ("kv-cache", ("aten::cat", "index_select", "aten::index", "aten::copy_", "aten::slice", "narrow",
                  "aten::empty", "aten::select", "aten::clone", "contiguous", "aten::to", "_to_copy")),
    ("elementwise", ("aten::mul", "aten::add", "aten::silu", "aten::neg", "aten::cos", "aten::sin", "aten::sub",
                     "aten::where", "aten::eq", "aten::ne", "aten::lt", "aten::gt", "aten::masked_fill",
                     "aten::bitwise", "aten::logical", "aten::exp", "aten::fill_")),
)


def group_of(name: str) -> str:
    for group, parts in GROUPS:
        if any(p in name for p in parts):
            return group
    return "other ops"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (the stages default to 0.95)")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from cai.backends.base import SamplingParams
    from cai.backends.transformers import TransformersBackend
    from generation import load_convs

    convs = load_convs(args.prompts)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=args.top_p, seed=0)
    backend = TransformersBackend("smollm2-135m", batch_size=args.batch_size, device="cpu", dtype=args.dtype,
                                  progress=False)
    backend.generate(convs, params)  # one-off costs (heap growth, kernel selection) outside the profile
    t = time.perf_counter()
    gens = backend.generate(convs, params)
    plain_s = time.perf_counter() - t
    tokens = sum(g.completion_tokens for g in gens)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        backend.generate(convs, params)
        wall = time.perf_counter() - t
    print(f"{args.dtype}, {args.prompts} prompts x {args.max_new_tokens} tokens, torch threads {torch.get_num_threads()}: "
          f"{tokens / plain_s:.1f} tok/s unprofiled; profiled wall {wall:.2f} s")
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "mkldnn" in e.key or "onednn" in e.key]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = wall * 1e6
    print(f"\n{'op':<48} {'calls':>8} {'self ms':>10} {'share':>7}")
    for e in events[: args.top]:
        print(f"{e.key[:48]:<48} {e.count:>8} {e.self_cpu_time_total / 1e3:>10.1f} {e.self_cpu_time_total / total_us:>7.1%}")
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    in_ops = sum(groups.values())
    print(f"\n{'group':<20} {'ms':>10} {'share of wall':>14}")
    for g, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"{g:<20} {us / 1e3:>10.1f} {us / total_us:>14.1%}")
    print(f"{'outside torch ops':<20} {(total_us - in_ops) / 1e3:>10.1f} {(total_us - in_ops) / total_us:>14.1%}")


if __name__ == "__main__":
    main()
