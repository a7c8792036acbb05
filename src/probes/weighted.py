"""SUPERB's weighted-sum probe: a learned softmax weighting over all layers, then one head.

Each layer is standardised first (so the weights compare layers on one scale), the
weighted sum goes through a linear (``hidden: 0``) or MLP head.  The learned weights are
reported per layer (``metric = layer_weight``).

There is one head and one loss, so early stopping keeps the whole state at the epoch
with the lowest validation loss (reported as one ``best_epoch`` row with ``layer = -1``);
the per-layer early stopping of the multi-head probes does not apply.  The head is
initialised from a generator seeded by the seed alone, not from the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.probes.base import LayerwiseProbe, head_seed


class WeightedSumProbe(LayerwiseProbe):
    single_head = True

    def __init__(self, num_layers: int, dim: int, num_outputs: int, hidden: int = 0, **kw) -> None:
        super().__init__(num_layers, dim, num_outputs, **kw)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        with torch.random.fork_rng(devices=[]):  # nn.Linear draws from the global RNG: fork and seed it
            torch.manual_seed(head_seed(self.seed, -1))  # "layer" -1: the one weighted head
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
        rows = [{"layer_index": k, "metric": "layer_weight", "value": float(v), "split": "train"} for k, v in enumerate(w)]
        if self.best_epochs is not None:
            rows.append({"layer": -1, "metric": "best_epoch", "value": int(self.best_epochs[0]), "split": "val"})
        return rows
