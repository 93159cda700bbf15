"""Our responses stage on the vLLM backend vs raw vLLM `LLM.generate` on the same prompts.

    python benchmarks/vllm_vs_stage.py --model DIR [--prompts 512] [--max-new-tokens 128] [--tensor-parallel-size 1]

Both runs share one `vllm.LLM` and get identical token ids (the stage's rendered
`initial_response` conversations). (a) raw: one `llm.generate` over all prompts.
(b) stage: `run_stage` + `generate_responses` through `VLLMBackend`, writing a
resumable dataset, at the CLI's default --chunk-size 64 and at one chunk.
Target: (b) >= 90% of (a) in completion tokens/s. Needs vLLM and a GPU; without
them it says so and exits 0.
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
ROOT = Path(__file__).resolve().parents[1]


def needs() -> str | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed (pip install 'cai[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


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
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    args = ap.parse_args()

    missing = needs()
    if missing:
        print(f"vllm_vs_stage: needs vLLM and a GPU; {missing}. Nothing to measure here.")
        return 0

    import vllm

    from cai.backends.base import SamplingParams
    from cai.backends.vllm import VLLMBackend
    from cai.data import DatasetWriter
    from cai.stages import responses as stage
    from cai.stages.runner import run_stage
    from cai.templates import PromptTemplates

    backend = VLLMBackend(args.model, tensor_parallel_size=args.tensor_parallel_size, progress=False)
    templates = PromptTemplates()
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95, seed=0)
    records = load_records(args.prompts)
    convs = [stage.policy_conversation(r, templates) for r in records]
    token_ids = [{"prompt_token_ids": backend._encode(backend.render(c))} for c in convs]
    raw_params = [vllm.SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                      top_p=params.top_p, seed=params.seed + i) for i in range(len(convs))]

    backend.llm.generate(token_ids[:8], raw_params[:8], use_tqdm=False)  # warm-up (graphs, caches)

    t = time.perf_counter()
    outs = backend.llm.generate(token_ids, raw_params, use_tqdm=False)
    raw_s = time.perf_counter() - t
    raw_tokens = sum(len(o.outputs[0].token_ids) for o in outs)

    results = {"model": args.model, "prompts": len(records), "max_new_tokens": args.max_new_tokens,
               "vllm_version": vllm.__version__,
               "raw": {"seconds": round(raw_s, 2), "completion_tokens_per_s": round(raw_tokens / raw_s, 1)}}
    for chunk in (64, len(records)):
        with tempfile.TemporaryDirectory() as tmp:
            writer = DatasetWriter(Path(tmp) / "ds", kind="responses",
                                   fingerprint=stage.fingerprint(backend, templates, params, None))
            stats = run_stage(records, writer, lambda c: stage.generate_responses(c, backend, templates, params=params),
                              chunk_size=chunk, progress=False)
        tps = stats.completion_tokens / stats.seconds
        results[f"stage_chunk_{chunk}"] = {"seconds": round(stats.seconds, 2), "completion_tokens_per_s": round(tps, 1),
                                           "ratio_to_raw": round(tps / (raw_tokens / raw_s), 3)}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
