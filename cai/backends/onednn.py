"""oneDNN matrix products, on weights packed once, for the projections of an fp32 or bf16 model on the CPU.

torch runs fp32 ``nn.Linear`` through MKL, and oneDNN's ``mkldnn_linear`` on
tensors converted to its layout on every call. Packing each weight once for
oneDNN (``_reorder_linear_weight``) and calling ``_linear_pointwise`` on plain
tensors skips both the per-call reorder of MKL and the to/from-oneDNN
conversions. One thread, decode-shaped products (128 rows) on a 2-core Intel
Xeon: 155-160 GFLOP/s packed against 140-153 for ``F.linear`` and 120-133 for
``mkldnn_linear`` (the layer this module used before, which on the AMD EPYC of
FACTS.md had beaten MKL by 10-20%); the 576x49152 vocabulary projection 133
against 120 and 92 (figures and script in the note on issue 20). The
packing is for a row count (``rows``, the batch size); other counts still run,
at the speeds above for 32-1024 rows. Inference only: the swapped layers hold
no parameters that train.

bf16 models too: ``F.linear`` in bf16 also goes to oneDNN (AMX where the CPU has it) and
reorders the weight into the AMX layout on every call. Packed once, the same products
ran 1.3-1.5x faster on a 2-core Xeon with AMX (one thread, 128 rows: 831 vs 609 GFLOP/s
for 576x576, 626 vs 413 for the 576x49152 vocabulary projection; outputs bit-identical).
"""

from __future__ import annotations

import functools
from typing import Any


class OneDNNLinearBase:
    """Marker base of the swapped layers (the class itself is built when torch is imported)."""


@functools.lru_cache(maxsize=None)
def _onednn_linear_class():
    import torch

    class PackedLinear(torch.nn.Module, OneDNNLinearBase):
        """``y = x W^T + b`` with the weight packed once in oneDNN's blocked layout (no gradients)."""

        def __init__(self, linear: torch.nn.Linear, rows: int) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self._weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
            self._bias = None if linear.bias is None else linear.bias.detach().clone()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._weight, self._bias, "none", [], "")

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"

    return PackedLinear


def use_onednn_linears(model: Any, rows: int = 128) -> int:
    """Swap the fp32 and bf16 ``nn.Linear`` layers of a CPU model for oneDNN ones packed for ``rows``; returns how many.

    A no-op (0) where torch has no oneDNN, off x86-64 (where it was not measured),
    or for layers that are neither fp32 nor (where oneDNN computes it natively) bf16 on the CPU. The model is for inference
    afterwards: do not train or save it.
    """
    import platform

    import torch

    if not torch.backends.mkldnn.is_available() or platform.machine().lower() not in ("x86_64", "amd64"):
        return 0
    cls = _onednn_linear_class()
    dtypes = {torch.float32}
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dtypes.add(torch.bfloat16)
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear and child.weight.device.type == "cpu" and child.weight.dtype in dtypes:
                swaps.append((parent, name, child))
    # packing is for a row count; below 32 it packed worse (102 vs 130 GFLOP/s at 32 rows)
    rows = max(32, rows)
    for parent, name, child in swaps:
        setattr(parent, name, cls(child, rows))
    return len(swaps)
