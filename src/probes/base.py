"""Layer-wise probes trained with Lightning: one independent head per layer, one pass.

Inputs are batches of ``x: (B, L, D)`` (the same items at every probed layer) and
targets ``y`` ((B,) class ids or (B, K) values).  The heads of all layers are stacked
into batched weights ``(L, ...)``, so one forward and one backward step train every
layer's head; the loss is the sum over heads of each head's mean loss, whose gradients
do not interact.

Each head stands on its own, so that a layer's result does not depend on which other
layers are in the run (``probe.layer=K`` alone gives the all-layers run's numbers for K):

- its initial weights come from its own generator seeded by ``(seed, layer id)``
  (`head_seed`), never from the global RNG, and MLP dropout masks likewise;
- the optimiser must be elementwise (AdamW, Adam, SGD are; no gradient clipping by a
  global norm, which would couple the heads);
- standardisation is per layer;
- early stopping is per head (`head_parameters`, the pipeline's keep-best callback): each
  head keeps the parameters of its own best validation epoch, reported as ``best_epoch`` rows.
  ``select_by`` (config ``probe.select_by``) says which epoch is best: ``accuracy`` (the default of
  classification probes: the highest validation accuracy, `validation_accuracy_per_head`, ties to
  the lower validation loss) or ``loss`` (the lowest validation loss, `validation_loss_per_head`;
  the only choice for regression). On a 10-utterance corpus with random-init states the
  validation loss rises from the first epoch (over-confident logits on a 123-frame validation
  utterance) while validation accuracy and the training fit improve, so selection by loss kept the
  untrained epoch 0 and understated the control.

Training budget: ``min_steps`` optimiser steps at least, whatever the corpus size
(the trainer's ``max_epochs`` is raised to ``ceil(min_steps / batches per epoch)`` when that is
more), then, with ``patience > 0``, more epochs while a head's validation loss still improved in
its last ``patience`` epochs (counted from the last epoch of the budget), up to ``max_steps``; each
head stops on its own (later epochs of a stopped head are not kept), so heads stay independent.
The pipeline applies the budget (`src.probes.pipeline.fit_probe`) and checks each head's fit
afterwards (``fit_warnings``: train accuracy not above the majority class, train R2 <= 0, or the
head kept its first epoch while the training loss kept falling); the per-head training loss of
every epoch is `train_loss_per_head`. With ``select_by=accuracy`` a head counts as improving in an
epoch when its validation accuracy reached a new best *or* its validation loss a new low (the
plateau rule: accuracy moves in steps of one item, so an accuracy plateau on which the loss still
falls is not a stop; a rising loss with a rising accuracy is not one either).

Features are standardised per layer and dimension with training-set statistics
(``set_standardization``), which matters for Whisper and for the spectral baselines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

# streams of per-head random numbers (one generator per head and purpose)
INIT_STREAM, DROPOUT_STREAM = 0, 1


def head_seed(seed: int, layer_id: int, stream: int = INIT_STREAM) -> int:
    """Seed of the generator of one head: depends only on (seed, cache layer id, stream).

    >>> head_seed(0, 3) == head_seed(0, 3) != head_seed(0, 4)
    True
    """
    words = [int(v) & 0xFFFFFFFF for v in (seed, layer_id, stream)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def head_generators(seed: int, layer_ids: Sequence[int], stream: int = INIT_STREAM) -> list[torch.Generator]:
    """One CPU generator per head, seeded by `head_seed`."""
    return [torch.Generator().manual_seed(head_seed(seed, lid, stream)) for lid in layer_ids]


def feature_chunks(x, chunk: int = 65536):
    """``(start, stop, x[start:stop])`` of in-memory features (N, L, D) or a `CacheFeatures`, at most
    ``chunk`` items and about 16M values (128 MB in float64) per step."""
    chunk = max(1, min(chunk, (1 << 24) // max(1, x.shape[1] * x.shape[2])))
    if isinstance(x, Tensor):
        for i in range(0, len(x), chunk):
            yield i, min(len(x), i + chunk), x[i : i + chunk]
    else:
        yield from x.chunks(chunk)


def nonfinite_per_layer(x, chunk: int = 65536) -> Tensor:
    """Number of non-finite (inf, NaN) values in each layer of ``x (N, L, D)`` (a tensor or a
    `CacheFeatures`, read in chunks): (L,) int64."""
    counts = torch.zeros(x.shape[1], dtype=torch.int64)
    for _, _, c in feature_chunks(x, chunk):
        counts += (~torch.isfinite(c)).sum(dim=(0, 2))
    return counts


def check_finite(x, layer_ids: Sequence[int] | None = None, what: str = "features", chunk: int = 65536) -> None:
    """Raise ValueError naming every layer of ``x (N, L, D)`` that holds inf or NaN, with counts.

    A float16 cache overflows to inf above 65504; one inf makes a layer's standardisation
    (and so every prediction of that layer) NaN, whose argmax is class 0.
    """
    counts = nonfinite_per_layer(x, chunk)
    if bool((counts > 0).any()):
        raise ValueError(nonfinite_message(counts, x.shape[0] * x.shape[2], layer_ids, what))


def nonfinite_message(counts: Tensor, per_layer: int, layer_ids: Sequence[int] | None, what: str) -> str:
    ids = list(layer_ids) if layer_ids is not None else None
    bad = [j for j in range(len(counts)) if int(counts[j]) > 0]
    names = [f"layer {ids[j]}" if ids is not None else f"layer position {j}" for j in bad]
    parts = ", ".join(f"{n}: {int(counts[j])} of {per_layer} values" for n, j in zip(names, bad))
    return (f"non-finite values (inf/NaN) in the {what}: {parts}. A float16 activation cache overflows above "
            "65504: rebuild the cache with cache.dtype=float32, or leave these layers out")  # fmt: skip


class PerHeadMean(Metric):
    """Mean over items of a per-item, per-head value ``(B, H)`` -> ``(H,)`` (float64 sums, DDP-summed)."""

    full_state_update = False

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(num_heads, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, per_item: Tensor) -> None:  # (B, H)
        self.total += per_item.detach().double().sum(0)
        self.count += per_item.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count  # (H,) (torchmetrics returns () when H = 1)


class LayerwiseProbe(L.LightningModule):
    """Base class: subclasses define ``forward(x (B, L, D)) -> (B, H, C)`` (H heads: L, or 1).

    Args:
        num_layers, dim, num_outputs: shapes (given by the pipeline from the data).
        kind: ``classification`` or ``regression``.
        optimizer: a partial optimizer (``_partial_: true`` in config); must be elementwise
            for the heads to stay independent.
        layer_ids: the cache layers the L heads stand for (logging, result rows, and the
            seed of each head's initialisation).
        seed: with the layer id, seeds each head's own generator (`head_generators`).
        layer: read by the pipeline (``probe.layer=K``); accepted here so configs instantiate.
        min_steps, patience, max_steps: the training budget, applied by the pipeline (see the
            module docstring); 0, 0, None keep the trainer's ``max_epochs`` as it is.
        select_by: which validation epoch each head keeps: ``accuracy`` (highest validation
            accuracy, ties to the lower loss; classification only), ``loss`` (lowest validation
            loss), or ``auto``/None (accuracy for classification, loss for regression).

    Multi-head probes keep per-head state: `head_parameters` lists the parameters whose
    first dimension indexes the heads; the keep-best callback restores each head at its
    own best validation epoch and writes ``best_epochs``.
    """

    single_head = False  # True: one head over all layers (weighted sum)

    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_outputs: int,
        kind: str = "classification",
        optimizer: Callable | None = None,
        layer_ids: Sequence[int] | None = None,
        layer: int | None = None,
        seed: int = 0,
        min_steps: int = 0,
        patience: int = 0,
        max_steps: int | None = None,
        select_by: str | None = "auto",
    ) -> None:
        super().__init__()
        if kind not in {"classification", "regression"}:
            raise ValueError(f"probe kind must be classification or regression, got {kind!r}")
        for key, v in (("probe.min_steps", min_steps), ("probe.patience", patience), ("probe.max_steps", max_steps)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{key} must be a non-negative integer, got {v!r}")
        self.min_steps, self.patience, self.max_steps = int(min_steps), int(patience), max_steps
        self.select_by = resolve_select_by(select_by, kind)
        self.num_layers, self.dim, self.num_outputs, self.kind = num_layers, dim, num_outputs, kind
        self.optimizer_factory = optimizer or (lambda p: torch.optim.AdamW(p, lr=1e-3))
        self.layer_ids = [int(k) for k in layer_ids] if layer_ids is not None else list(range(num_layers))
        if len(self.layer_ids) != num_layers:
            raise ValueError(f"layer_ids has {len(self.layer_ids)} entries for {num_layers} layers: {self.layer_ids}")
        self.seed = int(seed)
        self.num_heads = 1 if self.single_head else num_layers
        self.best_epochs: list[int] | None = None  # set by the keep-best callback (0-based, -1: never validated)
        self.fit_warnings: dict[int, str] = {}  # head position -> why its fit looks failed (set by the pipeline)
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
        self.val_head_loss = PerHeadMean(self.num_heads)  # validation stage only
        self.val_head_correct = PerHeadMean(self.num_heads)  # validation accuracy per head (classification)
        self.train_head_loss = PerHeadMean(self.num_heads)  # training stage: each head's mean loss of the epoch

    def head_generators(self, stream: int = INIT_STREAM) -> list[torch.Generator]:
        """One generator per head, seeded by (seed, layer id, stream)."""
        return head_generators(self.seed, self.layer_ids, stream)

    def head_parameters(self) -> dict[str, nn.Parameter] | None:
        """Parameters whose first dimension indexes the heads (None: the heads share parameters).

        Multi-head probes stack every parameter as ``(L, ...)``; single-head probes return None
        (early stopping then keeps the whole state at the best epoch of the one loss).
        """
        if self.single_head:
            return None
        params = dict(self.named_parameters())
        for name, p in params.items():
            if p.ndim == 0 or p.shape[0] != self.num_heads:
                raise TypeError(f"{type(self).__name__}.{name} {tuple(p.shape)} is not stacked per head "
                                f"(first dim {self.num_heads}); override head_parameters()")  # fmt: skip
        return params

    def set_standardization(self, mu: Tensor, sigma: Tensor) -> None:
        self.mu.copy_(mu)
        self.sigma.copy_(torch.clamp(sigma, min=1e-6))  # a zero-variance feature gives 0, not NaN

    def standardize(self, x: Tensor) -> Tensor:
        return (x.float() - self.mu) / self.sigma  # (B, L, D)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, H, C)
        raise NotImplementedError

    def per_item_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Loss of every item at every head: (B, H)."""
        B, H, C = out.shape
        if self.kind == "classification":
            per = F.cross_entropy(out.reshape(B * H, C), y.repeat_interleave(H), reduction="none")  # (B*H,)
            return per.reshape(B, H)
        target = y.reshape(B, 1, -1).expand_as(out)  # (B, H, C)
        return F.mse_loss(out, target, reduction="none").mean(-1)  # (B, H)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Sum over heads of each head's mean loss (each head's gradient is that of its own mean loss)."""
        return self.per_item_loss(out, y).mean(0).sum()

    def training_step(self, batch, batch_idx):
        x, y, *w = batch  # w: per-item weights of a DDP share (src/probes/data.py RankShare)
        out = self(x)
        per = self.per_item_loss(out, y)  # (B, H)
        if w:  # sum of weighted per-item losses; DDP's average over ranks is then the global batch mean
            wt = w[0].to(out.dtype)
            loss = (per * wt[:, None]).sum(0).sum()
            self.train_head_loss.update(per[wt > 0])  # an item repeated with weight 0 (padding) does not count
        else:
            loss = per.mean(0).sum()  # = self.loss(out, y)
            self.train_head_loss.update(per)
        self.log("train/loss", loss / self.num_heads, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def on_train_epoch_start(self) -> None:
        self.train_head_loss.reset()

    def train_loss_per_head(self) -> Tensor | None:
        """Mean training loss of each head over the current training epoch (the weights moving during
        the epoch): (H,) float64, or None before any training step."""
        if float(self.train_head_loss.count) == 0 and not (torch.distributed.is_available()
                                                           and torch.distributed.is_initialized()):  # fmt: skip
            return None
        return self.train_head_loss.compute().detach().cpu().reshape(-1)

    def on_validation_epoch_start(self) -> None:
        self.val_head_loss.reset()  # reset at the start: callbacks read it in on_validation_epoch_end
        self.val_head_correct.reset()

    def validation_step(self, batch, batch_idx):
        x, y, *_ = batch  # a DDP share also carries loss weights (unused: validation sums items)
        out = self(x)
        per = self.per_item_loss(out, y)  # (B, H)
        self.val_head_loss.update(per)
        if self.kind == "classification":
            self.val_head_correct.update(out.argmax(-1) == y[:, None])  # (B, H)
        # sync_dist: under DDP every rank sees the same epoch loss (single-head keep-best may read it)
        self.log("val/loss", per.mean(0).mean(), prog_bar=True, on_epoch=True, batch_size=len(y), sync_dist=True)
        for k, metric in enumerate(self.val_metrics):
            o = out[:, k]
            metric.update(o.argmax(-1) if self.kind == "classification" else o.squeeze(-1), y)

    def validation_loss_per_head(self) -> Tensor:
        """Mean validation loss of each head over the current validation epoch: (H,) float64."""
        return self.val_head_loss.compute().detach().cpu().reshape(-1)  # torchmetrics squeezes (1,) to ()

    def validation_accuracy_per_head(self) -> Tensor | None:
        """Validation accuracy of each head over the current validation epoch: (H,) float64 (None for
        regression). DDP ranks' counts are summed, like the loss."""
        if self.kind != "classification":
            return None
        return self.val_head_correct.compute().detach().cpu().reshape(-1)

    def on_validation_epoch_end(self) -> None:
        name = "accuracy" if self.kind == "classification" else "pearson_r"
        for k, metric in enumerate(self.val_metrics):
            v = metric.compute()
            key = "weighted" if self.single_head else f"layer_{self.layer_ids[k]:02d}"
            self.log(f"val/{name}/{key}", v.float().mean())
            metric.reset()

    @torch.no_grad()
    def predict_all(self, x, batch_size: int = 4096) -> Tensor:
        """Outputs for every item and head: (H, N, C) (logits or values).

        ``x``: in-memory (N, L, D) or a `CacheFeatures` (read in chunks; the output is still
        whole: streamed evaluation uses `predict_chunks` instead). Runs on the module's device.
        """
        self.eval()
        if isinstance(x, Tensor):
            outs = [self(x[i : i + batch_size].to(self.device)).cpu() for i in range(0, len(x), batch_size)]
            return torch.cat(outs).transpose(0, 1)  # (H, N, C)
        return torch.cat([o for _, _, o in self.predict_chunks(x, batch_size)], dim=1)  # (H, N, C)

    @torch.no_grad()
    def predict_chunks(self, x, batch_size: int = 4096):
        """``(start, stop, out (H, n, C))`` over consecutive items of ``x`` (tensor or `CacheFeatures`)."""
        self.eval()
        for a, b, c in feature_chunks(x, max(batch_size, 16384)):
            outs = [self(c[i : i + batch_size].to(self.device)).cpu() for i in range(0, len(c), batch_size)]
            yield a, b, torch.cat(outs).transpose(0, 1)  # (H, n, C)

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def extra_results(self) -> list[dict]:
        """Extra rows for results.csv: the epoch each head kept (``best_epoch``, 0-based)."""
        if self.best_epochs is None or self.single_head:
            return []
        return [{"layer_index": k, "metric": "best_epoch", "value": int(e), "split": "val"}
                for k, e in enumerate(self.best_epochs)]  # fmt: skip


SELECT_BY = ("accuracy", "loss")


def resolve_select_by(select_by: str | None, kind: str) -> str:
    """``probe.select_by`` -> ``accuracy`` or ``loss``: ``auto``/None is accuracy for classification and
    loss for regression; accuracy on a regression probe is an error.

    >>> resolve_select_by("auto", "classification"), resolve_select_by(None, "regression")
    ('accuracy', 'loss')
    """
    v = "auto" if select_by is None else str(select_by).strip().lower()
    if v == "auto":
        return "accuracy" if kind == "classification" else "loss"
    if v not in SELECT_BY:
        raise ValueError(f"probe.select_by must be accuracy, loss or auto, got {select_by!r}")
    if v == "accuracy" and kind != "classification":
        raise ValueError(f"probe.select_by=accuracy needs a classification task, but this task is {kind}: "
                         "use probe.select_by=loss (or auto)")  # fmt: skip
    return v


def batched_linear_init(
    num_layers: int, fan_in: int, fan_out: int, generators: Sequence[torch.Generator] | None = None
) -> tuple[nn.Parameter, nn.Parameter]:
    """Weights (L, fan_in, fan_out) and biases (L, fan_out) initialised like nn.Linear.

    Head l draws its weight, then its bias, from ``generators[l]`` (the global RNG if None).
    """
    gens = list(generators) if generators is not None else [None] * num_layers
    if len(gens) != num_layers:
        raise ValueError(f"{len(gens)} generators for {num_layers} heads")
    bound = 1 / math.sqrt(fan_in)
    ws, bs = [], []
    for g in gens:
        ws.append(torch.empty(fan_in, fan_out).uniform_(-bound, bound, generator=g))  # (fan_in, fan_out)
        bs.append(torch.empty(fan_out).uniform_(-bound, bound, generator=g))  # (fan_out,)
    return nn.Parameter(torch.stack(ws)), nn.Parameter(torch.stack(bs))
