"""oneDNN matrix products for the wide projections of an fp32 model on the CPU.

torch runs fp32 ``nn.Linear`` through MKL. On the 2-core AMD EPYC these
benchmarks ran on, oneDNN's kernels did the wide products of a decode step
(the MLP's 576x1536 and 1536x576, the 576x49152 vocabulary projection, at 128
rows) about 10-20% faster; the narrow attention projections were no faster, so
they stay. End to end, generation went from about 250 to 275 tok/s
(benchmarks/generation.py). Inference only: the swapped layers hold no
parameters that train.
"""

from __future__ import annotations

import functools
from typing import Any

#: Swap a linear layer when either side is at least this wide.
MIN_WIDTH = 1024


class OneDNNLinearBase:
    """Marker base of the swapped layers (the class itself is built when torch is imported)."""


@functools.lru_cache(maxsize=None)
def _onednn_linear_class():
    import torch

    class OneDNNLinear(torch.nn.Module, OneDNNLinearBase):
        """``y = x W^T + b`` with the weight held in oneDNN's layout (no gradients)."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = linear.weight.detach()
            bias = linear.bias.detach() if linear.bias is not None else weight.new_zeros(self.out_features)
            self._weight = weight.to_mkldnn()
            self._bias = bias.to_mkldnn()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lead = x.shape[:-1]
            flat = x.reshape(-1, self.in_features).contiguous().to_mkldnn()
            y = torch._C._nn.mkldnn_linear(flat, self._weight, self._bias).to_dense()
            return y.view(*lead, self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}"

    return OneDNNLinear


def use_onednn_linears(model: Any) -> int:
    """Swap the wide fp32 ``nn.Linear`` layers of a CPU model for oneDNN ones; returns how many.

    A no-op (0) where torch has no oneDNN, off x86-64 (where it was not measured),
    or for layers that are not fp32 on the CPU. The model is for inference
    afterwards: do not train or save it.
    """
    import platform

    import torch

    if not torch.backends.mkldnn.is_available() or platform.machine().lower() not in ("x86_64", "amd64"):
        return 0
    cls = _onednn_linear_class()
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if (
                type(child) is torch.nn.Linear
                and child.weight.device.type == "cpu"
                and child.weight.dtype == torch.float32
                and max(child.in_features, child.out_features) >= MIN_WIDTH
            ):
                swaps.append((parent, name, child))
    for parent, name, child in swaps:
        setattr(parent, name, cls(child))
    return len(swaps)
