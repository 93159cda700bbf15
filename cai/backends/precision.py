"""bf16 inference on a CPU where it pays off, with fp32 logits where labels are read.

A bf16 model rounds its logits to bf16: at |logit| ~20 the step is 0.125, so the
difference of two option logits moves by up to ~0.1 and a soft label by up to ~0.03.
benchmarks/bf16_quality.py measured, against fp32 on the embedded 135M model, the
judge's pair |Δp| at mean 0.013 / max 0.050 with bf16 logits and 0.004 / 0.015 with the
vocabulary projection in fp32 (an fp32 residual stream as well bought little more:
0.003 / 0.012, at a quarter of the speed-up). The fp32 projection costs ~4x the bf16 one
(65 vs 15 ms at 64 rows on one core), which a decode step pays every token but scoring
pays once per row. So the head keeps both weights: bf16 while generating, fp32 inside
``precise_logits`` (choice scoring).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any


class PreciseHeadBase:
    """Marker base of the two-precision head (the class itself is built when torch is imported)."""


@functools.cache
def _head_class():
    import torch

    class TwoPrecisionHead(torch.nn.Module, PreciseHeadBase):
        """The vocabulary projection in the model's dtype, or in fp32 while ``precise`` is set."""

        def __init__(self, linear: torch.nn.Linear, weight32: torch.Tensor) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.linear = linear  # the model's own (tied) head, cast with the model
            # kept apart from the submodule, which use_onednn_linears may swap for a packed one
            self.__dict__["_weight"] = linear.weight
            # a plain attribute, not a buffer: Module.to() must not cast it to bf16
            self.weight32 = weight32.detach().float()
            self.bias32 = None if linear.bias is None else linear.bias.detach().float().clone()
            self.precise = False

        @property
        def weight(self) -> torch.Tensor:  # what transformers' tied-weight helpers look for
            return self.__dict__["_weight"]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.precise:
                return torch.nn.functional.linear(x.float(), self.weight32, self.bias32)
            return self.linear(x)

    return TwoPrecisionHead


def use_bf16_with_fp32_logits(model: Any) -> None:
    """Cast an fp32 CPU model to bf16 in place, keeping an fp32 copy of its vocabulary projection.

    Inference only (the copy does not train). Call on fp32 weights: the copy must
    be taken before the cast rounds them.
    """
    import torch

    head = model.get_output_embeddings()
    weight32 = head.weight.detach().clone()
    model.to(torch.bfloat16)
    model.set_output_embeddings(_head_class()(head, weight32))


def _heads(model: Any) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, PreciseHeadBase)]


@contextlib.contextmanager
def precise_logits(model: Any) -> Iterator[None]:
    """Within the block, a model set up by ``use_bf16_with_fp32_logits`` computes fp32 logits."""
    heads = _heads(model)
    for h in heads:
        h.precise = True
    try:
        yield
    finally:
        for h in heads:
            h.precise = False


__all__ = ["PreciseHeadBase", "choose_dtype", "precise_logits", "use_bf16_with_fp32_logits"]


def choose_dtype(device: str, dtype: str | None) -> tuple[str | None, str]:
    """The dtype a backend loads its model in, and why (``describe()["dtype_choice"]``).

    ``auto`` (or None) on a CPU is bfloat16 where its bf16 units are measurably faster, float32
    elsewhere (cai.hardware.auto_cpu_dtype; ``CAI_CPU_DTYPE`` overrides it); on other
    devices it is left to ``cai.models.pick_dtype`` (bf16 on a GPU that has it).
    """
    if dtype and dtype != "auto":
        return dtype, "given"
    if device == "cpu":
        from cai.hardware import auto_cpu_dtype

        return auto_cpu_dtype()
    return None, f"auto: the {device} default"
