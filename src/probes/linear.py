"""Linear probe: one linear head per layer (softmax regression or least squares)."""

from __future__ import annotations

import torch
from torch import Tensor

from src.probes.base import LayerwiseProbe, batched_linear_init


class LinearProbe(LayerwiseProbe):
    def __init__(self, num_layers: int, dim: int, num_outputs: int, **kw) -> None:
        super().__init__(num_layers, dim, num_outputs, **kw)
        # head l's initial weights depend only on (seed, layer_ids[l])
        self.weight, self.bias = batched_linear_init(num_layers, dim, num_outputs, self.head_generators())

    def forward(self, x: Tensor) -> Tensor:
        z = self.standardize(x)  # (B, L, D)
        return torch.einsum("bld,ldc->blc", z, self.weight) + self.bias  # (B, L, C)
