"""Training speed and memory of the demo's trainers, against this machine's GEMM roof and TRL's defaults.

    .venv/bin/python benchmarks/train_speed.py [RUN] [--steps 12] [--trainers sft,dpo,reward,ppo] [--peer]
                                               [--device cpu|cuda]

RUN is a finished `make demo` run (default ``runs/quickstart``): SFT trains on its
``round-1/distill`` rows with the quickstart's settings (decision tokens 2 x 20,
batch 8, max_length 192), DPO and the reward model on its ``round-1/contrastive``
pairs (batch 8), PPO on the red-team prompts against the reward model this script
just trained. Each trainer runs in its own process (so the peak RSS is that trainer's
alone, model loading included) from the embedded default.

Printed per trainer: steps/s and real (non-padding) tokens/s over the steps after
the first two (warm-up), the share of batch slots that were padding, achieved model
GFLOP/s (6 x parameters per trained token; DPO adds 2 x parameters for the
reference model's forward; attention's own products are not counted), that as a
share of this machine's bf16 and fp32 GEMM roofs (timed in this run, on the
model's own matrix shapes), peak RSS, and the final loss. ``--peer`` runs TRL's
trainers with their own defaults on the same rows (same batch size, max_length,
learning rate and steps; everything else TRL's) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"

#: The quickstart's settings per trainer (examples/configs/quickstart.yaml).
SETTINGS: dict[str, dict[str, Any]] = {
    "sft": {"per_device_train_batch_size": 8, "learning_rate": 5e-5, "max_length": 192,
            "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 5},
    "dpo": {"per_device_train_batch_size": 8, "learning_rate": 5e-6, "beta": 0.1, "max_length": 192},
    "reward": {"per_device_train_batch_size": 8, "learning_rate": 1e-5, "max_length": 192},
    "ppo": {"per_device_train_batch_size": 8, "learning_rate": 1e-6, "response_length": 32},
}


def roofs(device: str) -> dict[str, float]:
    """GFLOP/s of the model's training-shaped products (1024 tokens through its 576x1536 and 1536x576
    layers, and the 576 x 49152 output head), fp32 and bf16, best of 5."""
    import torch

    out = {}
    shapes = ((1024, 576, 1536), (1024, 1536, 576), (1024, 576, 49152))
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        seconds = flops = 0.0
        for m, k, n in shapes:
            x, w = torch.randn(m, k, dtype=dtype, device=device), torch.randn(n, k, dtype=dtype, device=device)
            torch.nn.functional.linear(x, w)
            best = float("inf")
            for _ in range(5):
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                torch.nn.functional.linear(x, w)
                if device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
            seconds += best
            flops += 2 * m * k * n
        out[name] = flops / seconds / 1e9
    return out


def _count_tokens(trainer: Any, counts: dict[str, float]) -> None:
    """Wrap ``trainer.training_step`` to count real tokens and batch slots, and time each step."""
    step = trainer.training_step

    def counted(model: Any, inputs: dict[str, Any], *a: Any, **k: Any) -> Any:
        ids = [v for key, v in inputs.items() if key.endswith("input_ids") and hasattr(v, "numel")]
        masks = [v for key, v in inputs.items() if key.endswith("attention_mask") and hasattr(v, "sum")]
        slots = sum(int(v.numel()) for v in ids)
        real = sum(int(v.sum()) for v in masks) if masks else slots  # padding-free rows carry no mask
        if "position_ids" in inputs and not masks:
            pos = inputs["position_ids"]
            real = int((pos[:, 1:] != 0).sum()) + int(pos.shape[0])  # padding at the end restarts at 0
        t = time.perf_counter()
        out = step(model, inputs, *a, **k)
        counts["steps"].append((time.perf_counter() - t, real, slots))
        return out

    trainer.training_step = counted


def _prompt_ppo_rows(run: Path) -> Path:
    return ROOT / "examples" / "prompts" / "red_team.jsonl"


def child(trainer: str, run: Path, out: Path, steps: int, peer: bool) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CAI_NO_PROGRESS", "1")
    import torch

    data = run / "round-1" / ("distill" if trainer == "sft" else "contrastive")
    settings = {**SETTINGS[trainer], "max_steps": steps, "seed": 0}
    counts: dict[str, Any] = {"steps": []}
    if peer:
        t = peer_trainer(trainer, data, out, settings)
    else:
        from cai.training.runner import build_trainer

        kwargs: dict[str, Any] = {}
        if trainer == "sft":
            kwargs = {"decision_tokens": 2, "decision_weight": 20}
        if trainer == "ppo":
            kwargs = {"reward_model": str(out.parent / "reward")}
        source: Any = _prompt_ppo_rows(run) if trainer == "ppo" else data
        t, _ = build_trainer(trainer, source, MODEL, out, config=settings, **kwargs)
    _count_tokens(t, counts)
    t.train()
    if trainer == "reward" and not peer:
        t.save_model(str(out.parent / "reward"))
        t.processing_class.save_pretrained(str(out.parent / "reward"))
    timed = counts["steps"][2:] or counts["steps"]
    secs = sum(s for s, _, _ in timed)
    real = sum(r for _, r, _ in timed)
    slots = sum(s for _, _, s in timed)
    model = getattr(t, "model", None)
    params = sum(p.numel() for p in model.parameters()) if model is not None else 0
    per_token = 8 if trainer == "dpo" else 6
    losses = [e["loss"] for e in t.state.log_history if "loss" in e]
    return {
        "trainer": trainer + (" (TRL defaults)" if peer else ""),
        "steps": len(counts["steps"]), "timed_steps": len(timed),
        "steps_per_s": len(timed) / secs if secs else None,
        "tokens_per_s": real / secs if secs else None,
        "padding": 1 - real / slots if slots else None,
        "gflops": per_token * params * real / secs / 1e9 if secs and trainer != "ppo" else None,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "final_loss": losses[-1] if losses else None,
        "bf16": bool(getattr(t.args, "bf16", False)),
        "threads": torch.get_num_threads(),
    }


def peer_trainer(trainer: str, data: Path, out: Path, settings: dict[str, Any]) -> Any:
    """TRL's trainer with its own defaults on the same rows (cai's row conversion only)."""
    import torch
    from datasets import Dataset

    from cai.data import read_rows
    from cai.models import resolve_model_path

    path = resolve_model_path(MODEL)
    common = {"output_dir": str(out), "report_to": "none", "save_strategy": "no", "logging_steps": 1,
              "use_cpu": not torch.cuda.is_available(), "disable_tqdm": True}
    rows = read_rows(data)
    if trainer == "sft":
        from trl import SFTConfig, SFTTrainer

        from cai.training.sft import sft_rows

        return SFTTrainer(model=path, args=SFTConfig(**common, **settings),
                          train_dataset=Dataset.from_list(sft_rows(rows, str(data))))
    if trainer == "dpo":
        from trl import DPOConfig, DPOTrainer

        from cai.training.reward import preference_rows

        return DPOTrainer(model=path, args=DPOConfig(**common, **settings),
                          train_dataset=Dataset.from_list(preference_rows(rows, str(data), keep_soft=False)))
    if trainer == "reward":
        from trl import RewardConfig, RewardTrainer

        from cai.training.reward import preference_rows

        return RewardTrainer(model=path, args=RewardConfig(**common, **settings),
                             train_dataset=Dataset.from_list(preference_rows(rows, str(data), keep_soft=False)))
    raise SystemExit(f"--peer has no TRL-defaults run for {trainer}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "runs" / "quickstart"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--trainers", default="sft,dpo,reward,ppo")
    ap.add_argument("--peer", action="store_true", help="also run TRL's defaults on the same rows (not PPO)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="TRAINER.FIELD=VALUE",
                    help="change one of a trainer's settings, e.g. dpo.gradient_accumulation_steps=2 (JSON value)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "train-speed"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    for item in args.set:
        key, _, value = item.partition("=")
        trainer, _, field = key.partition(".")
        SETTINGS[trainer][field] = json.loads(value)
    if args.child:
        trainer, peer = args.child[0], args.child[1] == "peer"
        print("RESULT " + json.dumps(child(trainer, run, out / (trainer + ("-peer" if peer else "")), args.steps, peer)))
        return
    if not (run / "round-1" / "distill" / "data.jsonl").is_file():
        raise SystemExit(f"{run}: no round-1/distill rows; run `make demo` first (or give a finished run)")
    env = {**os.environ}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    roof = roofs(args.device)
    print(f"GEMM roof ({args.device}, training shapes): bf16 {roof['bf16']:.0f} GFLOP/s, fp32 {roof['fp32']:.0f} GFLOP/s")
    results = []
    for trainer in args.trainers.split(","):
        for peer in ([False, True] if args.peer and trainer != "ppo" else [False]):
            cmd = [sys.executable, __file__, str(run), "--steps", str(args.steps), "--out", str(out),
                   "--child", trainer, "peer" if peer else "cai", *(f"--set={x}" for x in args.set)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{trainer}: failed\n{p.stderr[-3000:]}")
                continue
            r = json.loads(line[7:])
            results.append(r)
            g = r["gflops"]
            share = (f"{g:6.1f} GFLOP/s = {g / roof['bf16']:.0%} of bf16 roof, {g / roof['fp32']:.0%} of fp32"
                     if g else "GFLOP/s n/a (generation-bound)")
            print(f"{r['trainer']:<24} {r['steps_per_s']:.3f} steps/s  {r['tokens_per_s']:7.0f} tok/s  "
                  f"padding {r['padding']:.0%}  {share}  peak RSS {r['peak_rss_gb']:.2f} GB  "
                  f"loss {r['final_loss']:.4g}  (bf16 {r['bf16']}, {r['threads']} threads)", flush=True)
    (out / "results.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"roof": roof, "results": results}, indent=2))


if __name__ == "__main__":
    main()
