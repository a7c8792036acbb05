"""Layer-wise probes trained with Lightning: one independent head per layer, one pass.

Inputs are batches of ``x: (B, L, D)`` (the same items at every probed layer) and
targets ``y`` ((B,) class ids or (B, K) values).  The heads of all layers are stacked
into batched weights, so one forward and one backward step train every layer's head;
the loss is the sum of the per-layer losses, whose gradients do not interact.

Features are standardised per layer and dimension with training-set statistics
(``set_standardization``), which matters for Whisper and for the spectral baselines.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerwiseProbe(L.LightningModule):
    single_head = False  # True: one head over all layers (weighted sum)

    """Base class: subclasses define ``forward(x (B, L, D)) -> (B, H, C)`` (H heads: L, or 1).

    Args:
        num_layers, dim, num_outputs: shapes (given by the pipeline from the data).
        kind: ``classification`` or ``regression``.
        optimizer: a partial optimizer (``_partial_: true`` in config).
        layer_ids: the cache layers the L heads stand for (for logging).
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_outputs: int,
        kind: str = "classification",
        optimizer: Callable | None = None,
        layer_ids: list[int] | None = None,
        layer: int | None = None,
    ) -> None:  # ``layer`` is read by the pipeline (probe.layer=K); kept here so configs instantiate
        super().__init__()
        if kind not in {"classification", "regression"}:
            raise ValueError(f"probe kind must be classification or regression, got {kind!r}")
        self.num_layers, self.dim, self.num_outputs, self.kind = num_layers, dim, num_outputs, kind
        self.optimizer_factory = optimizer or (lambda p: torch.optim.AdamW(p, lr=1e-3))
        self.layer_ids = list(layer_ids) if layer_ids is not None else list(range(num_layers))
        self.num_heads = 1 if self.single_head else num_layers
        self.register_buffer("mu", torch.zeros(num_layers, dim))
        self.register_buffer("sigma", torch.ones(num_layers, dim))
        self._build_metrics()

    # metrics: one torchmetrics object per layer and stage (sharing across stages gives wrong values)
    def _build_metrics(self) -> None:
        import torchmetrics as tm

        def make():
            if self.kind == "classification":
                return tm.classification.MulticlassAccuracy(num_classes=self.num_outputs, average="micro")
            return tm.regression.PearsonCorrCoef(num_outputs=self.num_outputs) if self.num_outputs > 1 else tm.regression.PearsonCorrCoef()

        self.val_metrics = nn.ModuleList(make() for _ in range(self.num_heads))

    def set_standardization(self, mu: Tensor, sigma: Tensor) -> None:
        self.mu.copy_(mu)
        self.sigma.copy_(torch.clamp(sigma, min=1e-6))

    def standardize(self, x: Tensor) -> Tensor:
        return (x.float() - self.mu) / self.sigma  # (B, L, D)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, C)
        raise NotImplementedError

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        B, Lh, C = out.shape
        if self.kind == "classification":
            per = F.cross_entropy(out.reshape(B * Lh, C), y.repeat_interleave(Lh), reduction="none")  # (B*L,)
        else:
            per = F.mse_loss(out, y[:, None, :].expand_as(out), reduction="none").mean(-1).reshape(-1)  # (B*L,)
        return per.mean() * Lh  # sum over layers of each layer's mean loss

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train/loss", loss / self.num_heads, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val/loss", self.loss(out, y) / self.num_heads, prog_bar=True, on_epoch=True, batch_size=len(y))
        for k, metric in enumerate(self.val_metrics):
            o = out[:, k]
            metric.update(o.argmax(-1) if self.kind == "classification" else o.squeeze(-1), y)

    def on_validation_epoch_end(self) -> None:
        name = "accuracy" if self.kind == "classification" else "pearson_r"
        for k, metric in enumerate(self.val_metrics):
            v = metric.compute()
            key = "weighted" if self.single_head else f"layer_{self.layer_ids[k]:02d}"
            self.log(f"val/{name}/{key}", v.float().mean())
            metric.reset()

    @torch.no_grad()
    def predict_all(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """Outputs for every item and head: (H, N, C) (logits or values)."""
        self.eval()
        outs = [self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat(outs).transpose(0, 1)  # (H, N, C)

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def extra_results(self) -> list[dict]:
        """Extra rows for results.csv (e.g. learned layer weights)."""
        return []


def batched_linear_init(num_layers: int, fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weights (L, fan_in, fan_out) and biases (L, fan_out) initialised like nn.Linear."""
    bound = 1 / math.sqrt(fan_in)
    w = nn.Parameter(torch.empty(num_layers, fan_in, fan_out).uniform_(-bound, bound))
    b = nn.Parameter(torch.empty(num_layers, fan_out).uniform_(-bound, bound))
    return w, b
