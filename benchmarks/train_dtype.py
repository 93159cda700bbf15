"""Training in bf16 against fp32 on this CPU: steps/s and the loss curve, for SFT and the reward model.

    .venv/bin/python benchmarks/train_dtype.py DISTILL_DIR [--steps 30] [--out runs/train-dtype]

DISTILL_DIR is a finished ``distill`` stage (its rows are the SFT data; the reward model trains
on the contrastive pairs built from them, as the ``contrastive`` stage does). Each trainer runs
twice from the embedded default with the same seed and data order, once with
``CAI_TRAIN_BF16=0`` (fp32) and once with ``=1`` (autocast bf16), each in its own process so
neither inherits the other's warm-up. Printed per trainer: seconds, steps/s, the mean loss over
the last quarter of the steps, the largest per-step loss gap, and (reward model) held-out pair
accuracy. The question it answers: does bf16 hold the loss curve, and how much faster is it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(trainer: str, distill_dir: str, out: Path, steps: int) -> None:
    """Train one model in this process (called with CAI_TRAIN_BF16 set by the parent)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CAI_NO_PROGRESS", "1")
    from cai.data import DatasetWriter, read_rows
    from cai.training import train_reward, train_sft

    cfg = {"max_steps": steps, "per_device_train_batch_size": 8, "max_length": 192, "seed": 0,
           "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 3}
    if trainer == "sft":
        res = train_sft(distill_dir, "smollm2-135m", out, config={**cfg, "learning_rate": 5e-5})
    else:
        from cai.constitution import load_constitution
        from cai.stages.contrastive import contrastive_pairs

        pairs, _, _ = contrastive_pairs(read_rows(distill_dir), load_constitution("harmless"))
        data = out.parent / "pairs"
        if not (data / "data.jsonl").exists():
            w = DatasetWriter(data, kind="preference", overwrite=True, fingerprint={"bench": "train_dtype"})
            w.write(pairs)
            w.finalize({"rows": len(pairs)}, title="contrastive pairs")
        res = train_reward(data, "smollm2-135m", out, config={**cfg, "learning_rate": 1e-5})
    s = res.summary
    print(json.dumps({"seconds": s["seconds"], "steps": s["steps"], "losses": [e["loss"] for e in s["losses"]],
                      "eval": s.get("eval")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("distill_dir")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "runs" / "train-dtype"))
    ap.add_argument("--trainers", default="sft,reward")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.distill_dir, Path(args.child[1]), args.steps)
        return
    from cai.hardware import bf16_verdict

    print("CPU:", bf16_verdict()["why"])
    out = Path(args.out)
    results: dict[tuple[str, str], dict] = {}
    for trainer in args.trainers.split(","):
        for dtype, flag in (("fp32", "0"), ("bf16", "1")):
            path = out / f"{trainer}-{dtype}"
            proc = subprocess.run([sys.executable, __file__, args.distill_dir, "--steps", str(args.steps),
                                   "--child", trainer, str(path)], env={**os.environ, "CAI_TRAIN_BF16": flag},
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{trainer} {dtype} failed:\n{proc.stderr[-3000:]}")
            results[trainer, dtype] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{'trainer':<8} {'dtype':<5} {'seconds':>8} {'steps/s':>8} {'last-quarter loss':>18} "
          f"{'max |dloss|':>12} {'held-out acc':>12}")
    for trainer in args.trainers.split(","):
        ref = results[trainer, "fp32"]["losses"]
        for dtype in ("fp32", "bf16"):
            r = results[trainer, dtype]
            losses = r["losses"]
            tail = losses[-max(1, len(losses) // 4):]
            gap = max(abs(a - b) for a, b in zip(losses, ref))
            acc = (r.get("eval") or {}).get("accuracy")
            print(f"{trainer:<8} {dtype:<5} {r['seconds']:>8.1f} {r['steps'] / r['seconds']:>8.3f} "
                  f"{sum(tail) / len(tail):>18.4f} {gap:>12.4f} {acc if acc is not None else '':>12}")
        f32, b16 = results[trainer, "fp32"], results[trainer, "bf16"]
        print(f"{trainer}: bf16 is {f32['seconds'] / b16['seconds']:.2f}x fp32's speed")


if __name__ == "__main__":
    main()
