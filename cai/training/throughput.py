"""How fast a training run went: real tokens a second and model GFLOP/s, against this CPU's GEMM rate.

Counted around the trainer's ``training_step`` (every micro-batch): the real tokens are
the attention masks' ones (padding excluded), the slots every id position. Model FLOPs
are 6 x parameters per trained token (forward and backward; attention's own products
not counted), plus 2 x parameters for a reference model's forward (DPO). The share of
the roof compares them with the bf16 or fp32 matrix-product rate this CPU was timed at
(`cai.hardware.bf16_verdict`, once per machine); on a GPU there is no timed roof and only
the rates are kept.
"""

from __future__ import annotations

import time
from typing import Any

#: Model FLOPs per trained token, in parameters: policy forward + backward, plus a frozen reference's forward.
FLOPS_PER_TOKEN = {"dpo": 8}


def count_tokens(trainer: Any) -> dict[str, float]:
    """Wrap ``trainer.training_step`` to add up real tokens, slots and seconds; returns the live counts."""
    counts = {"tokens": 0.0, "slots": 0.0, "seconds": 0.0, "steps": 0.0}
    step = trainer.training_step

    def counted(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, dict):
            masks = [v for k, v in inputs.items() if k.endswith("attention_mask") and hasattr(v, "sum")]
            ids = [v for k, v in inputs.items() if k.endswith("input_ids") and hasattr(v, "numel")]
            slots = sum(int(v.numel()) for v in ids)
            counts["slots"] += slots
            counts["tokens"] += sum(int(v.sum()) for v in masks) if masks else slots
        started = time.perf_counter()
        out = step(model, inputs, *args, **kwargs)
        counts["seconds"] += time.perf_counter() - started
        counts["steps"] += 1
        return out

    trainer.training_step = counted
    return counts


def throughput(counts: dict[str, float], trainer_name: str, params: int, *, bf16: bool,
               device: str = "cpu") -> dict[str, Any] | None:
    """Tokens/s, padding share, model GFLOP/s and the share of the timed roof (None: nothing counted)."""
    if not counts["tokens"] or not counts["seconds"]:
        return None
    rate = counts["tokens"] / counts["seconds"]
    gflops = FLOPS_PER_TOKEN.get(trainer_name, 6) * params * rate / 1e9
    out: dict[str, Any] = {"tokens": int(counts["tokens"]), "tokens_per_s": round(rate, 1),
                           "padding": round(1 - counts["tokens"] / counts["slots"], 3) if counts["slots"] else None,
                           "gflops": round(gflops, 1)}
    if device == "cpu":
        from cai.hardware import bf16_verdict

        timed = bf16_verdict().get("gflops") or {}
        roof = timed.get("bfloat16" if bf16 else "float32")
        if roof:
            out.update(roof_gflops=roof, roof_share=round(gflops / roof, 3), roof_dtype="bf16" if bf16 else "fp32")
    return out


__all__ = ["FLOPS_PER_TOKEN", "count_tokens", "throughput"]
