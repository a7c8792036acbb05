"""MLP probe: one hidden layer (ReLU, dropout) per probed layer, heads trained together.

Each head draws its initial weights and its dropout masks from its own generators seeded
by (seed, layer id), so a head trained among others equals the same head trained alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.probes.base import DROPOUT_STREAM, LayerwiseProbe, batched_linear_init


class MLPProbe(LayerwiseProbe):
    def __init__(self, num_layers: int, dim: int, num_outputs: int, hidden: int = 256, dropout: float = 0.1, **kw) -> None:
        super().__init__(num_layers, dim, num_outputs, **kw)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        gens = self.head_generators()  # head l draws w1[l], b1[l], then w2[l], b2[l]
        self.w1, self.b1 = batched_linear_init(num_layers, dim, hidden, gens)
        self.w2, self.b2 = batched_linear_init(num_layers, hidden, num_outputs, gens)
        self.dropout = dropout
        self._dropout_gens = self.head_generators(DROPOUT_STREAM)

    def _dropout(self, h: Tensor) -> Tensor:
        """Inverted dropout with one mask generator per head (F.dropout would draw all heads from one stream)."""
        if not self.training or self.dropout == 0.0:
            return h
        B, Lh, H = h.shape
        u = torch.stack([torch.rand(B, H, generator=g) for g in self._dropout_gens], dim=1)  # (B, L, H)
        keep = (u >= self.dropout).to(device=h.device, dtype=h.dtype)
        return h * keep / (1.0 - self.dropout)

    def forward(self, x: Tensor) -> Tensor:
        z = self.standardize(x)  # (B, L, D)
        h = torch.relu(torch.einsum("bld,ldh->blh", z, self.w1) + self.b1)  # (B, L, H)
        h = self._dropout(h)
        return torch.einsum("blh,lhc->blc", h, self.w2) + self.b2  # (B, L, C)
