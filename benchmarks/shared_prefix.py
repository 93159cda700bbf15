"""Decode speed on the critique stage's real prompts, with the shared prompt prefix held once in the KV cache vs copied per row.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/shared_prefix.py [--prompts 64] [--max-new-tokens 64]
                                                                   [--constitution harmless] [--reps 2]

Runs the revise stage's response step on --prompts red-team prompts (16 new tokens
each: only the critique prompts are timed), records the critique call's conversations
(template, principle and few-shot exemplars in front of each response), and then times
the backend's decode loop on them, --max-new-tokens per row with no end token so both
settings make the same number of tokens, sampling at temperature 0.7: alternately with
the prefix every row shares held once (kv_cache.share_prefix, the default) and copied
into every row (CAI_SHARED_PREFIX_KV=0). Prints the prefill plan, prefill seconds,
decode ms per step and tok/s of each run, and the KV cache each way holds at the end
(bytes computed from the shapes). Alternating runs in one process keeps the two
settings under the same machine state; figures still move ~10% between sittings.

Where .venv-vllm exists (`make install-vllm`), vLLM CPU then runs the same token ids
with the same settings (ignore_eos, its prefix caching on, which is its way of
computing a shared prefix once; the cache is emptied between its untimed and timed
pass, so the timed pass computes the prefix too), on cai's thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def critique_conversations(backend, prompts: int, constitution: str) -> list:
    """The conversations of the stage's first critique call, after a short response step."""
    from revise import RecordingBackend, load_texts

    from cai.constitution import load_constitution
    from cai.data import PromptRecord
    from cai.stages.revise import ReviseConfig, Sampling, run_revisions

    recorder = RecordingBackend(backend)
    records = [PromptRecord(messages=[{"role": "user", "content": t}]) for t in load_texts(prompts)]
    short, none = Sampling(max_new_tokens=16, temperature=0.0), Sampling(max_new_tokens=1, temperature=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        run_revisions(records, Path(tmp) / "out", load_constitution(constitution), recorder,
                      config=ReviseConfig(response=short, critique=none, revision=none, n_revisions=1),
                      chunk_size=prompts, progress=False)
    return recorder.calls[1][0]  # calls: responses, critiques, revisions


def vllm_peer(seqs: list[list[int]], args, threads: int) -> str:
    """vLLM CPU's tok/s on the same token ids, in .venv-vllm; or why it was not run."""
    if args.no_vllm:
        return "skipped (--no-vllm)"
    if not VLLM_PYTHON.is_file():
        return f"skipped ({VLLM_PYTHON.relative_to(ROOT)} not found; make install-vllm builds it)"
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4"),
           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND",
                                                       "0" if threads == 1 else f"0-{threads - 1}")}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(seqs, f)
    cmd = [str(VLLM_PYTHON), __file__, "--vllm-child", f.name, "--max-new-tokens", str(args.max_new_tokens)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)  # a group: vLLM's workers die with it on timeout
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "skipped (timed out after 600 s)"
    finally:
        os.unlink(f.name)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return f"failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}"
    got = json.loads(lines[-1])
    return f"{got['tok_s']:.1f} tok/s (vLLM {got['vllm']}, prefix caching on)"


def vllm_child(path: str, max_new_tokens: int) -> None:
    """Runs under .venv-vllm/bin/python: one untimed pass, the prefix cache emptied, one timed; one JSON line."""
    import vllm

    from cai.models import resolve_model_path

    seqs = json.loads(Path(path).read_text())
    llm = vllm.LLM(resolve_model_path("smollm2-135m"), dtype="bfloat16", seed=0, max_model_len=2048,
                   enforce_eager=True, enable_prefix_caching=True)
    params = vllm.SamplingParams(max_tokens=max_new_tokens, temperature=0.7, top_p=1.0, ignore_eos=True)
    prompts = [{"prompt_token_ids": s} for s in seqs]
    llm.generate(prompts, params, use_tqdm=False)
    llm.reset_prefix_cache()
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    print(json.dumps({"tok_s": round(n / elapsed, 1), "vllm": vllm.__version__}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--constitution", default="harmless")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-vllm", action="store_true", help="skip the vLLM CPU peer")
    ap.add_argument("--vllm-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vllm_child:
        return vllm_child(args.vllm_child, args.max_new_tokens)

    import torch

    from cai.backends.base import SamplingParams
    from cai.backends.prefix import plan_prefill
    from cai.backends.transformers import TransformersBackend

    backend = TransformersBackend(args.model, batch_size=args.prompts, device="cpu", dtype=args.dtype, progress=False)
    if not backend._share_prefixes:
        raise SystemExit("this backend does not hold shared prefixes (decode attention is off or CAI_SHARED_PREFIX_KV=0)")
    convs = critique_conversations(backend, args.prompts, args.constitution)
    seqs = [backend.encode(c) for c in convs]
    stages = plan_prefill(seqs)
    print(f"{backend.model_id} {backend.describe()['dtype']}, {len(seqs)} critique prompts, mean "
          f"{sum(map(len, seqs)) / len(seqs):.0f} tokens; prefill stages (rows, widest): "
          f"{[(len(s.tokens), max(map(len, s.tokens))) for s in stages]}")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=1.0, seed=0)
    prefill_s, caches = [0.0], {}
    real_prefill = backend._prefill

    def timed_prefill(*a, **k):
        t = time.perf_counter()
        out = real_prefill(*a, **k)
        prefill_s[0] += time.perf_counter() - t
        caches["last"] = out[0]
        return out

    backend._prefill = timed_prefill
    results: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.reps):
        for share in (True, False):
            backend._share_prefixes = share
            prefill_s[0] = 0.0
            t = time.perf_counter()
            out = backend._decode(seqs, params, set(), torch.Generator().manual_seed(0))
            wall = time.perf_counter() - t
            tokens = sum(map(len, out))
            kv = sum(t.numel() * t.element_size() for layer in caches["last"].layers
                     for t in (layer._k, layer._v, layer._pk, layer._pv) if t is not None)
            results[share].append(tokens / wall)
            print(f"  prefix {'held once ' if share else 'per row  '}: {wall:5.1f} s, prefill {prefill_s[0]:4.1f} s, "
                  f"decode {(wall - prefill_s[0]) / max(1, args.max_new_tokens - 1) * 1e3:6.1f} ms/step, "
                  f"{tokens / wall:6.1f} tok/s, KV cache {kv / 2**20:7.1f} MiB")
    once, per_row = max(results[True]), max(results[False])
    print(f"best of {args.reps}: held once {once:.1f} tok/s, per row {per_row:.1f} tok/s: {once / per_row:.2f}x")
    print(f"vLLM CPU on the same token ids: {vllm_peer(seqs, args, torch.get_num_threads())}")


if __name__ == "__main__":
    main()
