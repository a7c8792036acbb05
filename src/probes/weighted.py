"""SUPERB's weighted-sum probe: a learned softmax weighting over all layers, then one head.

Each layer is standardised first (so the weights compare layers on one scale), the
weighted sum goes through a linear (``hidden: 0``) or MLP head.  The learned weights are
reported per layer (``metric = layer_weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.probes.base import LayerwiseProbe


class WeightedSumProbe(LayerwiseProbe):
    single_head = True
    def __init__(self, num_layers: int, dim: int, num_outputs: int, hidden: int = 0, **kw) -> None:
        super().__init__(num_layers, dim, num_outputs, **kw)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.head = (
            nn.Linear(dim, num_outputs)
            if hidden == 0
            else nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))
        )

    def weights(self) -> Tensor:
        return F.softmax(self.layer_logits, dim=0)  # (L,)

    def forward(self, x: Tensor) -> Tensor:
        z = self.standardize(x)  # (B, L, D)
        mixed = torch.einsum("bld,l->bd", z, self.weights())  # (B, D)
        return self.head(mixed)[:, None, :]  # (B, 1, C)

    def extra_results(self) -> list[dict]:
        w = self.weights().detach().cpu().tolist()
        return [{"layer": lid, "metric": "layer_weight", "value": float(v), "split": "train"} for lid, v in zip(self.layer_ids, w)]
