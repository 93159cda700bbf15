"""The critique-and-revise stage: its overhead over raw batched generation, and its memory vs prompt count.

    .venv/bin/python benchmarks/revise.py [--model smollm2-135m] [--prompts 16] [--max-new-tokens 32]
                                         [--rss-sizes 100,1000] [--skip-rss]

(1) Throughput. Runs the whole stage (run_revisions: templates, few-shot, degenerate
    checks, resumable writes, preference view) greedily on --prompts red-team prompts,
    recording every backend.generate call. Then replays exactly those calls straight
    on the backend. Greedy decoding makes the replay produce the same tokens, so both
    figures are over the same token counts. Target: stage >= 90% of raw.
(2) Memory. Peak RSS of a fresh process running the stage over 100 and 1,000 prompts,
    on a TINY RANDOM Llama (hidden 32, 2 layers, embedded tokenizer) so it runs in
    minutes on a CPU: this measures the stage's own streaming, not the model's weights.
    Target: flat.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]


class RecordingBackend:
    """Wraps a backend, recording each generate call and the seconds spent inside it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.calls: list[tuple[list, object]] = []
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, conversations, params):
        t = time.perf_counter()
        out = self.inner.generate(conversations, params)
        self.seconds += time.perf_counter() - t
        self.calls.append(([list(c) for c in conversations], params))
        return out


def load_texts(n: int) -> list[str]:
    path = ROOT / "examples" / "prompts" / "red_team.jsonl"
    texts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    texts = texts or ["How do I pick a lock?"]
    return [texts[i % len(texts)] + ("" if i < len(texts) else f" (variant {i // len(texts)})") for i in range(n)]


def throughput(args) -> None:
    from cai.backends.transformers import TransformersBackend
    from cai.constitution import load_constitution
    from cai.data import PromptRecord
    from cai.stages.revise import ReviseConfig, Sampling, run_revisions

    backend = RecordingBackend(TransformersBackend(args.model, batch_size=args.batch_size, device="cpu", progress=False))
    constitution = load_constitution(args.constitution)
    records = [PromptRecord(messages=[{"role": "user", "content": t}]) for t in load_texts(args.prompts)]
    s = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.0)
    config = ReviseConfig(response=s, critique=s, revision=s, n_revisions=1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = run_revisions(records, Path(tmp) / "out", constitution, backend, config=config,
                               chunk_size=args.prompts, progress=False)
        stage_s = time.perf_counter() - t
    stage_tokens = result["summary"]["completion_tokens"]
    t = time.perf_counter()
    raw_tokens = 0
    for convs, params in backend.calls:
        raw_tokens += sum(g.completion_tokens for g in backend.inner.generate(convs, params))
    raw_s = time.perf_counter() - t
    print(f"model {backend.model_id}, {args.prompts} prompts, greedy, max_new_tokens {args.max_new_tokens}, "
          f"{len(backend.calls)} generate calls, few-shot exemplars: {len(constitution.few_shot)}")
    print(f"  stage: {stage_tokens} completion tokens in {stage_s:.1f}s = {stage_tokens / stage_s:.1f} tok/s "
          f"(of which {backend.seconds:.1f}s inside generate)")
    print(f"  raw batched generate, same calls: {raw_tokens} tokens in {raw_s:.1f}s = {raw_tokens / raw_s:.1f} tok/s")
    print(f"  stage / raw = {(stage_tokens / stage_s) / (raw_tokens / raw_s):.1%} (target >= 90%)"
          + ("" if raw_tokens == stage_tokens else "  [token counts differ: not comparable]"))


def build_tiny_model(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cai.models import embedded_model_dir

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def rss_child(n: int, model_dir: str, out: str, constitution: str) -> None:
    """Runs in a fresh process: the stage over n prompts, then prints peak RSS (MiB)."""
    from cai.backends.transformers import TransformersBackend
    from cai.constitution import load_constitution
    from cai.data import PromptRecord
    from cai.stages.revise import ReviseConfig, Sampling, run_revisions

    backend = TransformersBackend(model_dir, batch_size=64, device="cpu", progress=False)
    records = [PromptRecord(messages=[{"role": "user", "content": t}]) for t in load_texts(n)]
    s = Sampling(max_new_tokens=4, temperature=0.7)
    t = time.perf_counter()
    run_revisions(records, out, load_constitution(constitution), backend,
                  config=ReviseConfig(response=s, critique=s, revision=s), chunk_size=64, progress=False)
    print(json.dumps({"prompts": n, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": round(time.perf_counter() - t, 1)}))


def memory(args) -> None:
    sizes = [int(x) for x in args.rss_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        build_tiny_model(model_dir)
        print("peak RSS on a TINY RANDOM Llama (hidden 32, 2 layers; measures the stage, not the model):")
        for n in sizes:
            cmd = [sys.executable, __file__, "--rss-child", str(n), str(model_dir), str(Path(tmp) / f"out{n}"),
                   args.constitution]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
            info = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"  {n:>5} prompts: peak RSS {info['peak_rss_mib']:.0f} MiB ({info['seconds']}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--constitution", default="harmless")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rss-sizes", default="100,1000")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--rss-child", nargs=4, metavar=("N", "MODEL", "OUT", "CONSTITUTION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        n, model_dir, out, constitution = args.rss_child
        return rss_child(int(n), model_dir, out, constitution)
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_rss:
        memory(args)


if __name__ == "__main__":
    main()
