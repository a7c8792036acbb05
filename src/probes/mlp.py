"""MLP probe: one hidden layer (ReLU, dropout) per probed layer, heads trained together."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from src.probes.base import LayerwiseProbe, batched_linear_init


class MLPProbe(LayerwiseProbe):
    def __init__(self, num_layers: int, dim: int, num_outputs: int, hidden: int = 256, dropout: float = 0.1, **kw) -> None:
        super().__init__(num_layers, dim, num_outputs, **kw)
        self.w1, self.b1 = batched_linear_init(num_layers, dim, hidden)
        self.w2, self.b2 = batched_linear_init(num_layers, hidden, num_outputs)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        z = self.standardize(x)  # (B, L, D)
        h = F.relu(torch.einsum("bld,ldh->blh", z, self.w1) + self.b1)  # (B, L, H)
        h = F.dropout(h, self.dropout, self.training)
        return torch.einsum("blh,lhc->blc", h, self.w2) + self.b2  # (B, L, C)
