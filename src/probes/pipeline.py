"""The probing run behind ``train.py``: cache -> task items -> split -> probes -> result rows.

Everything is built from the composed config by ``train.py``; this module holds the
steps so that they are testable without Hydra.  Metrics come from torchmetrics
(functional forms on the collected predictions) with 95% bootstrap intervals over test
utterances (``src.functional.intervals.bootstrap_ci``).

Scale: a split's features ``SplitArrays.x (N, L, D)`` are in memory or, when they would not
fit ``memory_budget_gb`` (``stream: auto``), a `src.probes.data.CacheFeatures` that reads the
cache in chunks. Every step below takes both: standardisation and ridge moments in one pass
over chunks, Lightning probes from a batched Dataset (block-shuffled when streaming),
evaluation chunk by chunk keeping per-item classes or per-group sums. Small runs keep the
in-memory path and its exact numbers.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from src.datamodules.tasks import ProbeData
from src.functional.intervals import bootstrap_ci
from src.functional.probing import control_task_labels, selectivity
from src.probes.data import CacheFeatures, GlobalBatchSampler, ProbeDataset, collate_batch, features_nbytes

log = logging.getLogger(__name__)


@dataclass
class SplitArrays:
    """One split's items. ``x`` is the ``(N, L, D)`` features: an in-memory tensor (cache dtype) or a
    `CacheFeatures` that reads them from the cache in chunks (streaming; float32)."""

    x: torch.Tensor | CacheFeatures  # (N, L, D)
    y: torch.Tensor  # (N,) or (N, K)
    utt: np.ndarray  # (N,)
    data: ProbeData
    groups: np.ndarray | None = None  # (N,) the bootstrap unit of each item (text, speaker or utterance key, or its code)

    @property
    def streaming(self) -> bool:
        return isinstance(self.x, CacheFeatures)

    def subset(self, keep: np.ndarray) -> SplitArrays:
        keep = np.asarray(keep)
        x = self.x.subset(keep) if self.streaming else self.x[torch.from_numpy(keep)]
        g = None if self.groups is None else self.groups[keep]
        return SplitArrays(x, self.y[torch.from_numpy(keep)], self.utt[keep], self.data.subset(keep), g)


@dataclass
class ProbingOutput:
    rows: list[dict]
    counts: dict = field(default_factory=dict)
    probe: object | None = None


class ControlTaskError(ValueError):
    """A control task that cannot be informative (its control label is a function of the task label)."""


STREAM_MODES = ("auto", True, False)


def _stream_mode(stream) -> bool | str:
    """``stream`` from config: auto | true | false (YAML gives bools; strings are accepted too)."""
    if isinstance(stream, str):
        low = stream.strip().lower()
        stream = {"auto": "auto", "true": True, "false": False}.get(low, stream)
    if stream not in STREAM_MODES:
        raise ValueError(f"stream must be auto, true or false, got {stream!r}")
    return stream


def load_split_arrays(acts, data: ProbeData, splits: dict[str, np.ndarray], layers: list[int],
                      unit_of_utterance: np.ndarray | None = None, stream="auto", memory_budget_gb: float = 2.0,
                      chunk_bytes: int | None = None) -> dict[str, SplitArrays]:  # fmt: skip
    """Features of every probed layer for each split: ``x (N, L, D)``.

    stream: ``false``: x in memory in the cache dtype (read layer by layer); ``true``: x is a
    `CacheFeatures` (read in chunks when used; memory independent of N); ``auto``: stream when
    the float32 features of all splits together (``N_total * L * D * 4`` bytes) exceed
    ``memory_budget_gb``, so small runs keep the in-memory path (and its exact numbers).
    Both give the same features (float16 values exactly; pooled segments rounded to the cache
    dtype either way).
    """
    from src.progress import progress

    out = {}
    masks = {k: np.isin(data.utt, v) for k, v in splits.items()}
    per_split = {k: data.subset(m) for k, m in masks.items()}
    mode = _stream_mode(stream)
    need = features_nbytes(sum(len(d) for d in per_split.values()), len(layers), acts.hidden_size)
    streaming = mode is True or (mode == "auto" and need > float(memory_budget_gb) * 1e9)
    if streaming:
        log.info("features of %d layers: %.2f GB in float32 %s memory_budget_gb=%s: read from the cache in chunks",
                 len(layers), need / 1e9, ">" if mode == "auto" else "(stream=true;", memory_budget_gb)  # fmt: skip
        kw = {} if chunk_bytes is None else {"chunk_bytes": int(chunk_bytes)}
        feats = {k: CacheFeatures.from_data(acts, d, layers, **kw) for k, d in per_split.items()}
    else:
        dtype = np.float16 if acts.meta["dtype"] == "float16" else np.float32
        arrs = {k: np.empty((len(d), len(layers), acts.hidden_size), dtype=dtype) for k, d in per_split.items()}
        if data.rows is not None:  # frames: sorted gathers from the memmap, layer by layer
            for j, layer in enumerate(progress(layers, desc="loading probe features", unit="layer")):
                arr = acts.layer(layer)
                for k, d in per_split.items():
                    arrs[k][:, j] = d.features(arr, dtype)
        else:  # segments: pooled chunk by chunk (never all frames in float64), the same values as alignment.pool
            for k, d in per_split.items():
                for a, b, x in CacheFeatures.from_data(acts, d, layers).chunks():
                    arrs[k][a:b] = x.numpy()  # float32 of cache-dtype values: exact in the cache dtype
        feats = {k: torch.from_numpy(a) for k, a in arrs.items()}
    codes = None if unit_of_utterance is None else unit_codes(unit_of_utterance)
    for k, d in per_split.items():
        y = torch.as_tensor(d.y)
        g = None if codes is None else codes[d.utt]
        out[k] = SplitArrays(feats[k], y.long() if data.kind == "classification" else y.float(), d.utt, d, g)
    return out


def unit_codes(keys: np.ndarray) -> np.ndarray:
    """Per-utterance unit keys (str) -> int64 codes in ``np.unique`` order, so every item stores 8 bytes,
    not a string, and groups sort (bootstrap, MDL unit order) exactly as the keys would."""
    return np.unique(np.asarray(keys), return_inverse=True)[1].reshape(-1).astype(np.int64)


def drop_unseen_labels(arrays: dict[str, SplitArrays], counts: dict) -> None:
    """Test/val items whose class never occurs in training cannot be predicted: drop and count them."""
    seen = arrays["train"].y.unique().numpy()
    for split in ("val", "test"):
        a = arrays[split]
        keep = np.isin(a.y.numpy(), seen)
        if (~keep).any():
            counts[f"{split}_items_unseen_label"] = int((~keep).sum())
            log.warning("%s: %d items with labels unseen in training were left out", split, int((~keep).sum()))
            arrays[split] = a.subset(keep)


def check_targets(arrays: dict[str, SplitArrays], data: ProbeData) -> None:
    """Fail before training when a split cannot give a defined metric (constant target, one class)."""
    for s, a in arrays.items():
        if len(a.y) == 0:
            continue  # an empty validation split (split.by=order, split.val_count=0)
        if data.kind == "regression":
            y = a.y.reshape(len(a.y), -1).double()
            const = (y.max(0).values - y.min(0).values) <= 0  # (K,)
            if bool(const.any()):
                names = [data.target_names[k] for k in np.flatnonzero(const.numpy())]
                raise ValueError(f"task {data.task!r}: target(s) {names} are constant in split {s!r} "
                                 f"({len(y)} items): Pearson r and R2 are undefined; drop them with task.channels "
                                 "or change the split")  # fmt: skip
    if data.kind == "classification" and len(arrays["train"].y.unique()) < 2:
        raise ValueError(f"task {data.task!r}: the training split has a single class; nothing to probe")


def standardization(x, chunk: int = 65536, layer_ids: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and dimension mean and std of (N, L, D) (a tensor or a `CacheFeatures`, read in
    chunks), accumulated in float64.

    Raises ValueError naming the layers (``layer_ids``, else positions) that hold inf or
    NaN, with their counts: one inf would make the layer's mean inf and std NaN, and every
    prediction of that layer NaN. A zero-variance feature gets std 0 here (the probe
    clamps it, so it standardises to 0, not NaN).
    """
    from src.probes.base import feature_chunks, nonfinite_message, nonfinite_per_layer

    s = torch.zeros(x.shape[1:], dtype=torch.float64)  # (L, D)
    ss = torch.zeros_like(s)
    for _, _, c in feature_chunks(x, chunk):  # <= 16M values (128 MB in float64) per step
        c = c.double()  # (n, L, D)
        s += c.sum(0)
        ss += (c * c).sum(0)
    # float64 sums of float16/32 values cannot overflow, so a non-finite sum means a non-finite input
    if not bool(torch.isfinite(s).all() and torch.isfinite(ss).all()):
        raise ValueError(nonfinite_message(nonfinite_per_layer(x, chunk), x.shape[0] * x.shape[2], layer_ids,
                                           "training features"))  # fmt: skip
    mu = s / len(x)
    var = (ss / len(x) - mu**2).clamp_min(0)
    return mu.float(), var.sqrt().float()


def keep_best_callback(budget_epochs: int | None = None, patience: int = 0, select_by: str | None = None):
    """A Lightning callback that keeps, per head, the parameters of its best validation epoch.

    Best epoch (``select_by``; None: the module's ``select_by`` attribute, else ``loss``): ``loss``,
    the lowest validation loss; ``accuracy``, the highest validation accuracy
    (``validation_accuracy_per_head()``), ties to the lower validation loss (then the earlier
    epoch). Lightning probes of classification tasks select by accuracy by default
    (`src.probes.base.resolve_select_by`); the CTC heads (src/lenses/ctc.py) have no accuracy
    and keep selecting by loss, exactly as before.

    Multi-head probes (``head_parameters()`` gives the parameters stacked per head and
    ``validation_loss_per_head()`` each head's mean validation loss) keep each head at its
    own best epoch, so a layer's result does not depend on the other layers in the run.
    Other probes (one head, e.g. the weighted sum) keep the whole state at the best epoch of
    their loss (``validation_loss_per_head()`` or ``val/loss``). Sanity-check validation is
    ignored; ties keep the earlier epoch; a NaN loss (or accuracy) never counts as best. At the end the
    kept parameters are restored and ``pl_module.best_epochs`` (0-based ``current_epoch``
    per head, -1 if never validated) is set.

    Budget extension (``patience > 0``, with ``budget_epochs``): the trainer's ``max_epochs`` is
    the cap. From the last epoch of the budget (``budget_epochs - 1``) on, a head *stops* once its
    validation loss did not improve in its last ``patience`` epochs, counting only epochs from the
    budget's last one (with ``select_by=accuracy`` a head improves in an epoch when its accuracy
    reached a new best *or* its loss a new low: accuracy is step-like, so a plateau of accuracy
    with a falling loss goes on, and so does a rising accuracy with a rising loss; a head that
    stopped improving before the end of the budget stops there,
    with the numbers of the budget alone); a stopped head's later epochs are never kept, so each
    head's result is the one it would get trained alone. Training ends when every head stopped.
    ``train_losses`` records each epoch's per-head mean training loss
    (``pl_module.train_loss_per_head()``, when it has one).
    """
    import lightning as L

    class KeepBest(L.Callback):
        def __init__(self) -> None:
            self.best_loss: torch.Tensor | None = None  # (H,) validation loss of the kept epoch
            self.best_acc: torch.Tensor | None = None  # (H,) validation accuracy of the kept epoch (select_by=accuracy)
            self.min_loss: torch.Tensor | None = None  # (H,) lowest validation loss seen (patience under accuracy)
            self.best_epoch: torch.Tensor | None = None  # (H,)
            self.select_by = select_by
            self.heads: dict | None = None  # per-head copies of the stacked parameters
            self.state: dict | None = None  # whole state (single-head probes)
            self.budget_epochs, self.patience = budget_epochs, int(patience)
            self.last_improved: torch.Tensor | None = None  # (H,) the last epoch in which each head improved
            self.stopped: torch.Tensor | None = None  # (H,) heads past their own stopping epoch (patience > 0)
            self.train_losses: list[torch.Tensor] = []  # (H,) per epoch
            self.epochs_run = 0

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs_run = trainer.current_epoch + 1
            f = getattr(pl_module, "train_loss_per_head", None)
            v = f() if f is not None else None
            if v is not None:
                self.train_losses.append(v.double().reshape(-1).clone())

        def _extending(self) -> bool:
            return self.patience > 0 and self.budget_epochs is not None

        def _maybe_stop(self, trainer) -> None:
            e, last = trainer.current_epoch, self.budget_epochs - 1
            if e < last:
                return
            self.stopped |= self.last_improved <= e - min(self.patience, e - last + 1)
            if bool(self.stopped.all()):
                trainer.should_stop = True

        def _losses(self, trainer, pl_module) -> torch.Tensor | None:
            if hasattr(pl_module, "validation_loss_per_head"):
                return pl_module.validation_loss_per_head().double().reshape(-1)  # (H,)
            v = trainer.callback_metrics.get("val/loss")
            return None if v is None else torch.tensor([float(v)], dtype=torch.float64)

        def _accuracy(self, pl_module, per_head: bool) -> torch.Tensor:
            f = getattr(pl_module, "validation_accuracy_per_head", None)
            acc = f() if f is not None else None
            if acc is None:
                raise ValueError(f"select_by=accuracy, but {type(pl_module).__name__} reports no validation "
                                 "accuracy (a regression probe or a CTC head): use probe.select_by=loss")  # fmt: skip
            acc = acc.double().reshape(-1)
            return acc if per_head else acc.mean().reshape(1)

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            loss = self._losses(trainer, pl_module)
            if loss is None:
                return
            params = pl_module.head_parameters() if hasattr(pl_module, "head_parameters") else None
            per_head = params is not None  # one head per layer (a single-layer run too: same code path)
            if not per_head:
                loss = loss.mean().reshape(1)
            if self.select_by is None:
                self.select_by = getattr(pl_module, "select_by", None) or "loss"
            by_acc = self.select_by == "accuracy"
            acc = self._accuracy(pl_module, per_head) if by_acc else None
            if self.best_loss is None:
                self.best_loss = torch.full_like(loss, float("inf"))
                self.best_acc = torch.full_like(loss, -float("inf"))
                self.min_loss = torch.full_like(loss, float("inf"))
                self.best_epoch = torch.full(loss.shape, -1, dtype=torch.long)
                self.last_improved = torch.full(loss.shape, -1, dtype=torch.long)
                self.stopped = torch.zeros(loss.shape, dtype=torch.bool)
            if by_acc:  # higher accuracy, or the same accuracy at a lower loss; NaN is never better
                better = (acc > self.best_acc) | ((acc == self.best_acc) & (loss < self.best_loss))
                better &= ~torch.isnan(loss) & ~self.stopped
                improved = (better | (loss < self.min_loss)) & ~self.stopped  # the plateau rule (patience)
                self.best_acc = torch.where(better, acc, self.best_acc)
            else:
                better = (loss < self.best_loss) & ~self.stopped  # (H,); NaN is never better; a stopped head stays
                improved = better
            self.min_loss = torch.where(loss < self.min_loss, loss, self.min_loss)
            self.last_improved[improved] = trainer.current_epoch
            if self._extending():
                self._maybe_stop(trainer)
            if not bool(better.any()):
                return
            self.best_loss = torch.where(better, loss, self.best_loss)
            self.best_epoch[better] = trainer.current_epoch
            if per_head:
                idx = better.nonzero().squeeze(-1)  # heads that improved
                if self.heads is None:
                    self.heads = {n: p.detach().clone() for n, p in params.items()}
                for n, p in params.items():
                    self.heads[n][idx] = p.detach()[idx]
            else:
                self.state = copy.deepcopy(pl_module.state_dict())

        def on_fit_end(self, trainer, pl_module):
            if self.heads is not None:
                kept = (self.best_epoch >= 0).nonzero().squeeze(-1)
                with torch.no_grad():
                    for n, p in pl_module.head_parameters().items():
                        p[kept] = self.heads[n][kept].to(p.device)
            elif self.state is not None:
                pl_module.load_state_dict(self.state)
            if self.best_epoch is not None:
                pl_module.best_epochs = [int(e) for e in self.best_epoch]

    return KeepBest()


def probe_dataloaders(arrays: dict[str, SplitArrays], batch_size: int = 256, seed: int = 0, val_batch_size: int = 4096,
                      block: int | None = None, rank: int | None = None, world: int | None = None):  # fmt: skip
    """Training and validation DataLoaders of a Lightning probe: ``(train_dl, val_dl)``.

    Batches are built by `GlobalBatchSampler` over a `ProbeDataset` (batched reads):
    - in-memory features: the training order is exactly ``DataLoader(TensorDataset(x, y),
      shuffle=True, generator=torch.Generator().manual_seed(seed))`` (the order before
      streaming existed), validation in consecutive batches of ``val_batch_size``;
    - streamed features (`CacheFeatures`): a block shuffle (blocks of ``block`` consecutive
      items, default the largest of ``4 * batch_size`` and ~16 MB of features, in a seeded random
      order, shuffled within windows of 4 blocks; see `GlobalBatchSampler`), so reads stay
      sequential; the dataset keeps the last 8 blocks in memory;
    - DDP: every rank builds the same global batches; rank r of W takes ``batch[r::W]`` (train
      and validation). The trainer must not replace the sampler: ``use_distributed_sampler=False``.
    ``rank``/``world`` (default: the process group at iteration time) are for tests.
    """
    tr, va = arrays["train"], arrays["val"]
    g = torch.Generator().manual_seed(seed)
    blk = None
    if tr.streaming:
        per_item = int(np.prod(tr.x.shape[1:])) * 4
        blk = int(block) if block else max(4 * batch_size, (16 << 20) // max(1, per_item))
    train_ds = ProbeDataset(tr.x, tr.y, block=blk)
    train_s = GlobalBatchSampler(len(tr.y), batch_size, shuffle=True, generator=g, block=blk, rank=rank, world=world,
                                 pad=True)  # fmt: skip
    train_dl = DataLoader(train_ds, batch_sampler=train_s, generator=g, collate_fn=collate_batch)
    vblk = max(val_batch_size, blk or 0) if va.streaming else None
    val_ds = ProbeDataset(va.x, va.y, block=vblk, keep_blocks=2)
    val_s = GlobalBatchSampler(len(va.y), val_batch_size, shuffle=False, rank=rank, world=world)
    return train_dl, DataLoader(val_ds, batch_sampler=val_s, collate_fn=collate_batch)


def fit_probe(probe_factory, arrays: dict[str, SplitArrays], kind: str, num_outputs: int, trainer_factory,
              batch_size: int = 256, seed: int = 0, layer_ids: list[int] | None = None, what: str = "probe",
              loop: str = "auto"):  # fmt: skip
    """Instantiate and train a probe (Lightning, or closed form when the probe says so).

    loop: ``lightning`` (``trainer.fit``), ``plain`` (`src.probes.loop.plain_fit`: the same steps in the same
    order on one process, without Lightning's per-step overhead; the same parameters bit for bit) or ``auto``
    (plain when `src.probes.loop.use_plain_loop` says the trainer would run exactly those steps: one CPU
    process with the probe trainers' default settings).

    layer_ids: the cache layers of the L columns of ``x (N, L, D)`` (default ``0..L-1``).
    They name layers in errors and are passed to the probe, whose heads are initialised
    from generators seeded by (seed, layer id): the result does not depend on the global
    RNG state nor on which other layers are in the run. Every split's features are checked
    for inf/NaN first (ValueError naming the layers). Lightning probes keep each head at its own
    best validation epoch: highest accuracy for classification, lowest loss for regression
    (``probe.select_by``; `keep_best_callback`; ``probe.best_epochs``).
    Features may be in memory or streamed (`CacheFeatures`); data order: `probe_dataloaders`.
    The trainer is made by ``trainer_factory(callbacks=[...], use_distributed_sampler=False)``
    (the loaders shard batches across DDP ranks themselves); its ``max_epochs`` is then raised to
    the probe's budget (`apply_budget`: ``min_steps``, ``patience``, ``max_steps``). After training,
    ``probe.fit_warnings`` ({head position: reason}, see `fit_warnings`) flags heads whose fit
    failed, each logged as a warning naming the layer (``what``: the probe's name in the message),
    and ``probe.train_losses`` is each epoch's per-head mean training loss (E, H).
    """
    import lightning as L

    from src.probes.base import check_finite

    tr, va = arrays["train"], arrays["val"]
    L_, D = tr.x.shape[1], tr.x.shape[2]
    layer_ids = list(range(L_)) if layer_ids is None else [int(k) for k in layer_ids]
    if len(layer_ids) != L_:
        raise ValueError(f"layer_ids {layer_ids} has {len(layer_ids)} entries, but the features have {L_} layers")
    for split, a in arrays.items():
        if a.streaming and split == "train":
            continue  # streamed: checked by the pass that reads it (standardization, ridge moments): one pass less
        check_finite(a.x, layer_ids, f"{split} features")
    L.seed_everything(seed, workers=True, verbose=False)  # anything a probe still draws from the global RNG
    probe = probe_factory(num_layers=L_, dim=D, num_outputs=num_outputs, kind=kind, layer_ids=layer_ids, seed=seed)
    if len(va.y) == 0 and not getattr(probe, "closed_form", False):
        raise ValueError(f"the validation split is empty (split.val_count=0), but {type(probe).__name__} keeps the epoch "
                         "of its best validation epoch: give split.val_count > 0, or use probe=ridge with one alpha")  # fmt: skip
    if getattr(probe, "closed_form", False):
        names = getattr(getattr(tr, "data", None), "target_names", None)
        return probe.fit(tr.x, tr.y, va.x, va.y, kind, num_outputs, target_names=names)
    L.seed_everything(seed, workers=True, verbose=False)
    mu, sd = standardization(tr.x, layer_ids=layer_ids)
    probe.set_standardization(mu, sd)
    train_dl, val_dl = probe_dataloaders(arrays, batch_size=batch_size, seed=seed)
    keep = keep_best_callback()
    from src.progress import layers_label, lightning_callback

    shown = "weighted-sum head over " if getattr(probe, "single_head", False) else ""
    bar = lightning_callback(f"{what} training ({type(probe).__name__}, {shown}{layers_label(layer_ids)})")
    trainer = trainer_factory(callbacks=[keep, bar], use_distributed_sampler=False)
    steps = apply_budget(trainer, keep, probe, len(train_dl))
    from src.probes.loop import plain_fit, use_plain_loop

    if loop not in ("auto", "plain", "lightning"):
        raise ValueError(f"loop must be auto, plain or lightning, got {loop!r}")
    if loop == "plain" or (loop == "auto" and use_plain_loop(trainer, probe)):  # Lightning's steps without its overhead
        pre = prestandardized(probe, arrays)  # in memory: every item standardised once, not once per epoch
        if pre is not None:
            train_dl, val_dl = probe_dataloaders(pre, batch_size=batch_size, seed=seed)  # the same batches
        plain_fit(probe, train_dl, val_dl, [keep], trainer.fit_loop.max_epochs, logger=trainer.logger,
                  progress_desc=bar.desc, prestandardized=pre is not None)  # fmt: skip
    else:
        trainer.fit(probe, train_dl, val_dl)
    probe.train_losses = torch.stack(keep.train_losses) if keep.train_losses else None  # (E, H)
    probe.fit_warnings = fit_warnings(probe, tr, kind, layer_ids, train_losses=probe.train_losses,
                                      steps_per_epoch=steps, epochs_run=keep.epochs_run)  # fmt: skip
    for h, reason in probe.fit_warnings.items():
        head = "the weighted-sum head" if getattr(probe, "single_head", False) else f"layer {layer_ids[h]}"
        log.warning("%s fit failed on %s: %s", what, head, reason)
    return probe


def prestandardized(probe, arrays: dict[str, SplitArrays], chunk: int = 65536) -> dict[str, SplitArrays] | None:
    """The training and validation splits with features already through ``probe.standardize`` (float32), or
    None when a split is streamed (its features are read chunk by chunk) or the probe does not standardise with
    `LayerwiseProbe.standardize`. ``standardize`` is elementwise, so the standardised rows of a batch are
    the ones the probe would compute from the raw rows, bit for bit; the plain loop then skips the step.
    Memory: the float32 features of the two splits (what ``memory_budget_gb`` already counts)."""
    from src.probes.base import LayerwiseProbe

    if type(probe).standardize is not LayerwiseProbe.standardize:
        return None
    out = {}
    for k in ("train", "val"):
        a = arrays[k]
        if a.streaming:
            return None
        with torch.no_grad():
            z = torch.cat([probe.standardize(a.x[i : i + chunk]) for i in range(0, len(a.x), chunk)]) if len(a.x) \
                else torch.empty((0, *a.x.shape[1:]), dtype=torch.float32)  # fmt: skip
        out[k] = SplitArrays(z, a.y, a.utt, a.data, a.groups)
    return out


def mark_fit_warnings(rows: list[dict], probe, layer_ids: list[int], counts: dict | None = None) -> None:
    """Put each flagged head's reason (``probe.fit_warnings``) in a ``fit_warning`` column of its
    layer's rows (the weighted-sum head: the rows of layer -1 but the baselines'); ``counts["fit_warnings"]``
    lists them."""
    warn = getattr(probe, "fit_warnings", None) or {}
    if not warn:
        return
    single = getattr(probe, "single_head", False)
    by_layer = {(-1 if single else layer_ids[h]): reason for h, reason in warn.items()}
    for r in rows:
        if r.get("layer") in by_layer and not str(r.get("metric", "")).endswith("_baseline"):
            r["fit_warning"] = by_layer[r["layer"]]
    if counts is not None:
        counts["fit_warnings"] = {str(k): v for k, v in by_layer.items()}


def apply_budget(trainer, keep, probe, steps_per_epoch: int) -> int:
    """Set the trainer's epochs from the probe's budget (``min_steps``, ``patience``, ``max_steps``).

    ``budget = max(trainer max_epochs, ceil(min_steps / steps_per_epoch))`` epochs at least; with
    ``patience > 0`` the trainer's cap becomes ``max(budget, max_steps // steps_per_epoch)`` and the
    keep-best callback ``keep`` stops once the heads stopped improving (`keep_best_callback`). A
    trainer without an epoch limit (``max_epochs`` None or -1) is left as it is. Returns steps_per_epoch.
    """
    loop = trainer.fit_loop
    min_steps, patience = int(getattr(probe, "min_steps", 0) or 0), int(getattr(probe, "patience", 0) or 0)
    max_steps = getattr(probe, "max_steps", None)
    if steps_per_epoch < 1 or loop.max_epochs is None or loop.max_epochs < 0:
        return steps_per_epoch
    budget = max(int(loop.max_epochs), math.ceil(min_steps / steps_per_epoch))
    cap = budget
    if patience > 0:
        cap = max(budget, int(max_steps) // steps_per_epoch) if max_steps is not None else budget
        keep.budget_epochs, keep.patience = budget, patience
    if cap != loop.max_epochs:
        log.info("probe budget: %d epochs of %d steps (min_steps=%d%s; trainer max_epochs=%d)", budget, steps_per_epoch,
                 min_steps, f", then up to {cap} epochs while improving (patience={patience})" if cap > budget else "",
                 loop.max_epochs)  # fmt: skip
        loop.max_epochs = cap
    return steps_per_epoch


# a head whose training loss fell by more than this fraction after its kept (first) epoch did not keep a fit
LOSS_FALL = 0.1


def fit_warnings(probe, tr: SplitArrays, kind: str, layer_ids: list[int], train_losses: torch.Tensor | None = None,
                 steps_per_epoch: int | None = None, epochs_run: int | None = None) -> dict[int, str]:  # fmt: skip
    """Heads whose fit looks failed: ``{head position: reason}`` (empty when every head fits).

    - classification: the kept head's training accuracy is not above the majority class's
      share of the training items (it learned nothing a constant would not);
    - regression: the kept head's training R2 is <= 0 for some target (no better than the mean);
    - the head kept its first epoch (``best_epoch`` 0) although more epochs ran and its mean
      training loss still fell by more than ``LOSS_FALL`` (relative) from the first epoch to the
      last, when that first epoch had fewer optimiser steps than the probe's ``min_steps`` (or
      ``min_steps`` is 0): no later epoch beat the first on the selection criterion
      (``probe.select_by``), so the result is that of a barely trained head (an over-fitting or
      mis-scaled probe).
    """
    H = 1 if getattr(probe, "single_head", False) else len(layer_ids)
    reasons: dict[int, list[str]] = {h: [] for h in range(H)}
    if kind == "classification":
        ok = _correct(probe, tr)  # (H, N)
        counts = np.bincount(tr.y.numpy())
        majority = float(counts.max() / counts.sum())
        for h in range(H):
            acc = float(ok[h].mean())
            if acc <= majority:
                reasons[h].append(f"train accuracy {acc:.3f} not above the majority class ({majority:.3f})")
    else:
        r2 = _train_r2(probe, tr)  # (H, K)
        names = list(getattr(getattr(tr, "data", None), "target_names", None) or range(r2.shape[1]))
        for h in range(H):
            bad = [str(names[k]) if k < len(names) else str(k) for k in np.flatnonzero(~(r2[h] > 0))]
            if bad:
                reasons[h].append(f"train R2 <= 0 for target(s) {bad} (min {float(np.nanmin(r2[h])):.3f})")
    best = getattr(probe, "best_epochs", None)
    min_steps = int(getattr(probe, "min_steps", 0) or 0)
    short = steps_per_epoch is None or min_steps == 0 or steps_per_epoch < min_steps
    if best is not None and train_losses is not None and len(train_losses) > 1 and short:
        for h in range(min(H, len(best), train_losses.shape[1])):
            first, last = float(train_losses[0, h]), float(train_losses[-1, h])
            if best[h] == 0 and np.isfinite(first) and np.isfinite(last) and last < (1 - LOSS_FALL) * first:
                crit = "accuracy" if getattr(probe, "select_by", "loss") == "accuracy" else "loss"
                reasons[h].append(f"best epoch 0 of {epochs_run or len(train_losses)} ({steps_per_epoch} steps) while "
                                  f"the training loss fell {first:.3g} -> {last:.3g} (no later epoch had a better "
                                  f"validation {crit}: over-fitting or a too high learning rate)")  # fmt: skip
    if best is not None:
        for h in range(min(H, len(best))):
            if best[h] < 0:
                reasons[h].append("no finite validation loss in any epoch")
    return {h: "; ".join(r) for h, r in reasons.items() if r}


def _train_r2(probe, tr: SplitArrays) -> np.ndarray:
    """Training-set R2 of every head and target: (H, K) (streamed features: chunk by chunk)."""
    y = tr.y.reshape(len(tr.y), -1).double().numpy()  # (N, K)
    sse = None
    for a, b, o in probe.predict_chunks(tr.x) if tr.streaming else [(0, len(y), probe.predict_all(tr.x))]:
        o = o.reshape(o.shape[0], b - a, -1).double().numpy()  # (H, n, K)
        d = ((o - y[None, a:b]) ** 2).sum(1)  # (H, K)
        sse = d if sse is None else sse + d
    sst = ((y - y.mean(0)) ** 2).sum(0)  # (K,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - sse / sst


def _ci_fields(ci, k: int | None = None, unit: str | None = None) -> dict:
    """Interval columns of a result row: bounds, the resampled unit and how many units there were."""
    lo, hi = (ci.low, ci.high) if k is None else (np.atleast_1d(ci.low)[k], np.atleast_1d(ci.high)[k])
    return dict(ci_low=float(lo), ci_high=float(hi), unit=unit, n_units=int(ci.n_groups))


def _quantile_ci(ci, unit: str | None) -> dict:
    """Interval of the mean over targets, from the per-target replicates of ``ci``."""
    samples = np.asarray(ci.samples).reshape(len(ci.samples), -1).mean(1)
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(samples, [ci.alpha / 2, 1 - ci.alpha / 2])
    return dict(ci_low=float(lo), ci_high=float(hi), unit=unit, n_units=int(ci.n_groups))


def _groups(arr: SplitArrays) -> np.ndarray:
    return arr.utt if arr.groups is None else arr.groups


def _class_rows(layer, name: str, split: str, pred: torch.Tensor, y: torch.Tensor, C: int, ginv: np.ndarray, G: int,
                n_boot: int, seed: int, unit) -> list[dict]:  # fmt: skip
    """Accuracy and macro-F1 rows of one head from its predicted classes ``pred (N,)``."""
    import torchmetrics.functional as tmf

    from src.functional.intervals import bootstrap_group_sums
    from src.functional.probing import macro_f1_fn, macro_f1_group_sums

    correct = (pred == y).double().numpy()
    acc = float(tmf.accuracy(pred, y, task="multiclass", num_classes=C, average="micro"))
    # per-group correct counts and sizes (integers: exactly bootstrap_ci(correct, groups)'s group sums)
    ci = bootstrap_ci(np.bincount(ginv, weights=correct, minlength=G), totals=np.bincount(ginv, minlength=G).astype(float),
                      statistic="accuracy", n_boot=n_boot, seed=seed)  # fmt: skip
    rows = [dict(layer=layer, target=name, metric="accuracy", value=acc, split=split, **_ci_fields(ci, unit=unit))]
    f1 = float(tmf.f1_score(pred, y, task="multiclass", num_classes=C, average="macro"))
    sums = macro_f1_group_sums(pred.numpy(), y.numpy(), ginv, G, C)  # (G, 3C) integer counts
    ci = bootstrap_group_sums(sums, macro_f1_fn(C), n_boot=n_boot, seed=seed)
    rows.append(dict(layer=layer, target=name, metric="macro_f1", value=f1, split=split, **_ci_fields(ci, unit=unit)))
    return rows


def _regression_rows(layer, target_names, split: str, r, r2, ci, ci2, unit) -> list[dict]:
    rows = []
    for k, name in enumerate(target_names):
        rows.append(dict(layer=layer, target=name, metric="pearson_r", value=float(r[k]), split=split,
                         **_ci_fields(ci, k, unit)))  # fmt: skip
        rows.append(dict(layer=layer, target=name, metric="r2", value=float(r2[k]), split=split,
                         **_ci_fields(ci2, k, unit)))  # fmt: skip
    rows.append(dict(layer=layer, target="mean", metric="pearson_r", value=float(np.mean(r)), split=split,
                     **_quantile_ci(ci, unit)))  # fmt: skip
    rows.append(dict(layer=layer, target="mean", metric="r2", value=float(np.mean(r2)), split=split,
                     **_quantile_ci(ci2, unit)))  # fmt: skip
    return rows


def evaluate(probe, arr: SplitArrays, kind: str, layer_ids: list[int], target_names: list[str], split: str,
             n_boot: int = 1000, seed: int = 0, unit: str | None = None) -> list[dict]:  # fmt: skip
    """Metric rows for every head: accuracy / macro-F1 or per-target Pearson r and R2, each with a
    95% percentile bootstrap interval over ``arr.groups`` (the split unit), named in ``unit``.

    Streamed features (`CacheFeatures`) are evaluated chunk by chunk (`_evaluate_streaming`):
    only per-item predicted classes ``(H, N)`` or per-group sums are kept, never ``(H, N, C)``.
    """
    import torchmetrics.functional as tmf

    from src.functional.probing import r2_stats

    unit = unit or ("utterance" if arr.groups is None else None)
    if arr.streaming:
        return _evaluate_streaming(probe, arr, kind, layer_ids, target_names, split, n_boot, seed, unit)
    groups = _groups(arr)
    ginv_ids, ginv = np.unique(groups, return_inverse=True)
    out = probe.predict_all(arr.x)  # (H, N, C)
    heads = [-1] if getattr(probe, "single_head", False) else layer_ids
    rows = []
    for h, layer in enumerate(heads):
        o = out[h]
        if kind == "classification":
            rows += _class_rows(layer, target_names[0], split, o.argmax(-1), arr.y, o.shape[-1], ginv, len(ginv_ids),
                                n_boot, seed, unit)  # fmt: skip
        else:
            from src.functional.intervals import bootstrap_from_sums

            y = arr.y.reshape(len(arr.y), -1)
            o = o.reshape(len(y), -1)
            r = tmf.pearson_corrcoef(o, y) if y.shape[1] > 1 else tmf.pearson_corrcoef(o[:, 0], y[:, 0]).reshape(1)
            r2 = tmf.r2_score(o, y, multioutput="raw_values").reshape(-1)
            ci = bootstrap_ci(o.double().numpy(), groups, target=y.double().numpy(), statistic="pearson",
                              n_boot=n_boot, seed=seed)  # fmt: skip
            st, fn = r2_stats(o.double().numpy(), y.double().numpy())
            ci2 = bootstrap_from_sums(st, groups, fn, n_boot=n_boot, seed=seed)
            rows += _regression_rows(layer, target_names, split, r.numpy(), r2.numpy(), ci, ci2, unit)
    return rows


def _evaluate_streaming(probe, arr: SplitArrays, kind: str, layer_ids: list[int], target_names: list[str], split: str,
                        n_boot: int, seed: int, unit: str | None) -> list[dict]:  # fmt: skip
    """`evaluate` over a `CacheFeatures`, one chunk of predictions at a time.

    Classification keeps the predicted class of every item and head ``(H, N)`` int32 and gives
    exactly the in-memory numbers (same predictions, integer counts). Regression keeps per-head,
    per-group float64 sums: Pearson's [n, sp, sy, spp, syy, spy] of values shifted by the first
    chunk's means, and R^2's [1, y - mean_y, (y - mean_y)^2, (y - o)^2] (`r2_stats`), so the
    bootstrap resamples the same groups with the same RNG as `bootstrap_ci`/`bootstrap_from_sums`;
    values and bounds agree with the in-memory ones to float64 rounding of sums taken in another
    order (and the in-memory r/R^2 values themselves are torchmetrics float32).
    """
    from src.functional.intervals import bootstrap_group_sums, pearson_fn
    from src.functional.probing import r2_fn

    groups = _groups(arr)
    gids, ginv = np.unique(groups, return_inverse=True)
    G, N = len(gids), len(arr.y)
    heads = [-1] if getattr(probe, "single_head", False) else layer_ids
    rows = []
    if kind == "classification":
        pred, C = None, None
        for a, b, o in probe.predict_chunks(arr.x):  # o (H, n, C)
            if pred is None:
                pred, C = np.empty((o.shape[0], N), dtype=np.int32), o.shape[-1]
            pred[:, a:b] = o.argmax(-1).numpy()
        for h, layer in enumerate(heads):
            rows += _class_rows(layer, target_names[0], split, torch.from_numpy(pred[h].astype(np.int64)), arr.y, C,
                                ginv, G, n_boot, seed, unit)  # fmt: skip
        return rows
    y = arr.y.reshape(N, -1).double().numpy()  # (N, K)
    K = y.shape[1]
    mu_y = y.mean(0)
    ps = r2s = shift_p = None
    for a, b, o in probe.predict_chunks(arr.x):  # o (H, n, K)
        o = o.reshape(o.shape[0], b - a, K).double().numpy()
        yc = y[a:b]
        if ps is None:
            H = o.shape[0]
            shift_p, shift_y = o.mean(1), yc.mean(0)  # (H, K), (K,)
            ps = np.zeros((H, G, 6, K))
            r2s = np.zeros((H, G, 1 + 3 * K))
        ty = yc - shift_y  # (n, K)
        gi = ginv[a:b]
        for h in range(o.shape[0]):
            tp = o[h] - shift_p[h]  # (n, K)
            np.add.at(ps[h], gi, np.stack([np.ones_like(tp), tp, ty, tp * tp, ty * ty, tp * ty], axis=1))
            ym = yc - mu_y
            np.add.at(r2s[h], gi, np.concatenate([np.ones((b - a, 1)), ym, ym * ym, (yc - o[h]) ** 2], axis=1))
    pfn, rfn = pearson_fn(K), r2_fn(K)
    for h, layer in enumerate(heads):
        sums = ps[h].reshape(G, 6 * K)
        ci = bootstrap_group_sums(sums, pfn, n_boot=n_boot, seed=seed)
        ci2 = bootstrap_group_sums(r2s[h], rfn, n_boot=n_boot, seed=seed)
        r, r2 = pfn(sums.sum(0)), rfn(r2s[h].sum(0))
        rows += _regression_rows(layer, target_names, split, r, r2, ci, ci2, unit)
    return rows


def _sortable(a: np.ndarray) -> np.ndarray:
    """An object array of str as a numpy str array (same order; np.unique/searchsorted in C, not on
    Python objects: 10x faster at 1M items); anything else unchanged."""
    a = np.asarray(a)
    if a.dtype == object and len(a) and all(isinstance(v, str) for v in a[:1000].tolist()):
        try:
            return a.astype(str)
        except (TypeError, ValueError):
            return a
    return a


def _majority(y: np.ndarray) -> int:
    """Most frequent value; ties go to the value seen first (as ``Counter.most_common``)."""
    vals, first, counts = np.unique(y, return_index=True, return_counts=True)
    cands = np.flatnonzero(counts == counts.max())
    return int(vals[cands[np.argmin(first[cands])]])


def baseline_rows(arrays: dict[str, SplitArrays], data: ProbeData, split: str = "test", n_boot: int = 1000,
                  seed: int = 0, unit: str | None = None) -> list[dict]:  # fmt: skip
    """Majority class, and for stress the vowel-identity lookup (stress is largely predictable from the vowel)."""
    if data.kind != "classification":
        return []
    tr, te = arrays["train"], arrays[split]
    g = _groups(te)
    ytr = tr.y.numpy()
    majority = _majority(ytr)

    def row(metric: str, correct: torch.Tensor) -> dict:
        c = correct.double().numpy()
        ci = bootstrap_ci(c, g, statistic="accuracy", n_boot=n_boot, seed=seed)
        return dict(layer=-1, target=data.target_names[0], metric=metric, value=float(c.mean()), split=split,
                    **_ci_fields(ci, unit=unit))  # fmt: skip

    rows = [row("accuracy_majority_baseline", te.y == majority)]
    if "vowel" in data.extra:
        vt, ve = _sortable(tr.data.extra["vowel"]), _sortable(te.data.extra["vowel"])
        uv, inv_t = np.unique(vt, return_inverse=True)
        table = {v: _majority(ytr[inv_t == i]) for i, v in enumerate(uv.tolist())}  # one pass per vowel (few)
        ue, inv_e = np.unique(ve, return_inverse=True)
        lut = np.array([table.get(v, majority) for v in ue.tolist()], dtype=np.int64)  # one lookup per vowel
        pred = torch.from_numpy(lut[inv_e].reshape(-1))
        rows.append(row("accuracy_vowel_identity_baseline", pred == te.y))
    return rows


def check_control_types(data: ProbeData, train: SplitArrays | None = None) -> None:
    """Refuse a control task whose control label would be a function of the task label.

    That happens when the types are the labels (task=words, phone tokens with
    control_type=label) or when, in the training split, every label has exactly one type;
    control accuracy is then >= task accuracy by construction and selectivity <= 0 for
    every representation (Hewitt & Liang's types must be something the label is not).
    """
    if data.types_reason:
        raise ControlTaskError(f"controls.selectivity=true: {data.types_reason}")
    if data.types is None:
        raise ControlTaskError(f"controls.selectivity=true: task {data.task!r} defines no control types")
    if train is not None:
        pairs = set(zip(train.y.tolist(), train.data.types.tolist()))  # linear (hashing); np.unique on strings is no faster
        per_label = Counter(lab for lab, _ in pairs)
        if per_label and max(per_label.values()) == 1:
            raise ControlTaskError(
                f"controls.selectivity=true: in the training split every {data.task!r} label has exactly one control "
                "type, so the control label is a function of the task label (selectivity <= 0 by construction); "
                "the types must vary within a label (e.g. task.control_type=word: word + position)"
            )


def _correct(probe, arr: SplitArrays) -> np.ndarray:
    """``(H, N)`` 0/1 correctness of every head (streamed features: chunk by chunk)."""
    if not arr.streaming:
        return (probe.predict_all(arr.x).argmax(-1) == arr.y[None]).double().numpy()
    out = None
    for a, b, o in probe.predict_chunks(arr.x):  # (H, n, C)
        if out is None:
            out = np.empty((o.shape[0], len(arr.y)))
        out[:, a:b] = (o.argmax(-1) == arr.y[None, a:b]).double().numpy()
    return out


def control_rows(probe_factory, arrays, data: ProbeData, layer_ids, trainer_factory, task_probe, counts: dict,
                 seed=0, n_boot: int = 1000, unit: str | None = None, **kw) -> list[dict]:  # fmt: skip
    """Hewitt & Liang (2019) control task: each item *type* gets a random label; selectivity = acc - control acc.

    Types are e.g. word + phone position (never the label itself: see :func:`check_control_types`).
    Control labels are drawn from the *training* label distribution.  A control label can
    only be predicted for a type seen in training (it is arbitrary), so both accuracies are
    measured on the test items whose type occurs in the training split (as in H&L, whose
    test words are mostly training types); their number is reported in the counts.
    Selectivity's interval is the bootstrap of the paired per-item difference (the same
    resampled units for task and control).
    """
    check_control_types(data, arrays["train"])
    C = len(data.classes)
    types = {s: _sortable(arrays[s].data.types) for s in arrays}
    types_all = np.concatenate([types[s] for s in ("train", "val", "test")])
    train_counts = np.bincount(arrays["train"].y.numpy(), minlength=C)
    _, labels_all = control_task_labels(types_all, seed=seed, label_counts=train_counts)  # (N_all,) per item
    ctrl, at = {}, 0
    for s in ("train", "val", "test"):  # types_all is these splits' types, concatenated in this order
        a = arrays[s]
        ctrl[s] = SplitArrays(a.x, torch.from_numpy(labels_all[at : at + len(types[s])]), a.utt, a.data, a.groups)
        at += len(types[s])
    probe = fit_probe(probe_factory, ctrl, "classification", C, trainer_factory, seed=seed, layer_ids=layer_ids,
                      what="control-task probe", **kw)  # fmt: skip
    seen = np.isin(types["test"], types["train"])  # (N_test,)
    counts["test_items_control_type_seen_in_train"] = int(seen.sum())
    counts["test_items_control_type_unseen"] = int((~seen).sum())
    if not seen.any():
        log.warning("control task: no test item has a type seen in training; selectivity not computed")
        return []
    c_arr, t_arr = ctrl["test"].subset(seen), arrays["test"].subset(seen)
    g = _groups(t_arr)
    c_ok, t_ok = _correct(probe, c_arr), _correct(task_probe, t_arr)  # (H, N)
    name = data.target_names[0]
    heads = [-1] if getattr(task_probe, "single_head", False) else layer_ids
    out = []
    for h, layer in enumerate(heads):
        ci_c = bootstrap_ci(c_ok[h], g, statistic="accuracy", n_boot=n_boot, seed=seed)
        ci_t = bootstrap_ci(t_ok[h], g, statistic="accuracy", n_boot=n_boot, seed=seed)
        ci_s = bootstrap_ci(t_ok[h] - c_ok[h], g, statistic="mean", n_boot=n_boot, seed=seed)
        out.append(dict(layer=layer, target=name, metric="control_accuracy", value=float(c_ok[h].mean()),
                        split="test", **_ci_fields(ci_c, unit=unit)))  # fmt: skip
        out.append(dict(layer=layer, target=name, metric="accuracy_control_types_seen", value=float(t_ok[h].mean()),
                        split="test", **_ci_fields(ci_t, unit=unit)))  # fmt: skip
        out.append(dict(layer=layer, target=name, metric="selectivity",
                        value=float(selectivity(t_ok[h].mean(), c_ok[h].mean())), split="test",
                        **_ci_fields(ci_s, unit=unit)))  # fmt: skip
    return out


def mdl_rows(arrays, data: ProbeData, layer_ids: list[int], seed: int = 0, max_items: int | None = 20000,
             unit: str = "utterance") -> list[dict]:  # fmt: skip
    """Online codelength and compression per layer on the training split, in blocks of whole units.

    Frames of one segment are near-identical, so shuffling frames would put siblings of a
    block's frames into the training prefix and reward memorising segments.  Instead the
    units (``unit``: utterances, or texts when the split is by text) are shuffled and the
    block ends of Voita & Titov's schedule are moved to the next unit boundary, so each
    block is coded by a probe that never saw its units.  ``max_items`` keeps whole units.
    Streamed features: the chosen items are read one layer at a time (memory ``n * D``).
    """
    from src.functional.mdl import mdl_block_schedule, snap_schedule
    from src.probes.mdl import mdl_online_code
    from src.progress import progress

    tr = arrays["train"]
    groups = _groups(tr)
    uniq, inv = np.unique(groups, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.random.default_rng(seed).permutation(len(uniq))] = np.arange(len(uniq))
    order = np.argsort(rank[inv], kind="stable")  # items of unit rank 0, then rank 1, ...
    cum = np.cumsum(np.bincount(rank[inv], minlength=len(uniq)))  # (G,) unit boundaries in that order
    if max_items is not None and cum[-1] > max_items:
        k = max(1, int(np.searchsorted(cum, max_items, side="right")))
        cum = cum[:k]
        order = order[: cum[-1]]
    n = int(cum[-1])
    ends = snap_schedule(mdl_block_schedule(n), cum)
    num_classes = len(data.classes)
    rows = []
    for j, layer in enumerate(progress(layer_ids, desc=f"MDL online code ({n} items, {len(ends)} blocks)", unit="layer")):
        xj = tr.x.take(order, layers=[j])[:, 0] if tr.streaming else tr.x[order, j].float()  # (n, D)
        res = mdl_online_code(xj.numpy(), tr.y[order].numpy(), num_classes, seed=None, schedule=ends)
        for metric, value in (("mdl_codelength_kbits", res.codelength_bits / 1000), ("mdl_compression", res.compression)):
            rows.append(dict(layer=layer, target=data.target_names[0], metric=metric, value=value, split="train",
                             unit=f"blocks of whole {unit}s"))  # fmt: skip
    return rows


FINER = {"speaker": "text", "text": "utterance", "utterance": None}
MIN_UNITS_WARN = 5


def bootstrap_unit(corpus, by: str, test_utts: np.ndarray, counts: dict) -> tuple[str, np.ndarray]:
    """The unit the intervals resample: the split unit, or the next finer one when the test
    split has a single unit of that kind (one test speaker); warns when there are few."""
    from src.datamodules.splits import group_keys

    unit = {"order": "text", "timit_core": "speaker"}.get(by, by)  # order: sentences; timit_core: speakers
    while True:
        keys = group_keys(corpus, unit)
        n = len(set(keys[test_utts].tolist()))
        if n >= 2 or FINER[unit] is None:
            break
        log.warning("bootstrap: the test split has %d %s(s); intervals resample %ss instead (they cover "
                    "sampling within the test %s only)", n, unit, FINER[unit], unit)  # fmt: skip
        counts["bootstrap_unit_fallback"] = f"{unit}->{FINER[unit]}"
        unit = FINER[unit]
    counts["bootstrap_unit"] = unit
    counts["bootstrap_units_in_test"] = n
    if n < MIN_UNITS_WARN:
        log.warning("bootstrap: only %d test %ss; the 95%% intervals are unreliable with so few units", n, unit)
        counts["warning_few_test_units"] = n
    return unit, keys


def probed_layers(acts, layers, single) -> list[int]:
    """The cache states to probe from ``layers=`` or ``probe.layer=`` (never both)."""
    from src.layers import LayerSpecError, resolve_for

    if single is not None and layers is not None:
        raise LayerSpecError(f"give either layers={layers} or probe.layer={single}, not both")
    if single is not None:
        return resolve_for(acts, single, "probe.layer")
    return resolve_for(acts, layers, "layers")


def run_probing(acts, corpus, task, probe_factory, trainer_factory, split_cfg: dict, controls: dict | None = None,
                layers: list[int] | None = None, batch_size: int = 256, n_boot: int = 1000, seed: int = 0,
                stream="auto", memory_budget_gb: float = 2.0, probe_layer=None) -> ProbingOutput:  # fmt: skip
    """The whole probing run on one cache: items, split, probe on every layer, metrics, controls.

    layers / probe_layer: the config's ``layers=`` and ``probe.layer=`` specs (never both; None = every state).

    stream / memory_budget_gb (config keys of the same names): whether features are held in
    memory or read from the cache in chunks, see `load_split_arrays`.
    """
    from src.datamodules.splits import split_utterances

    controls = controls or {}
    layer_ids = probed_layers(acts, layers, probe_layer)
    data = task.build(acts, corpus, control_types=bool(controls.get("selectivity")))
    if controls.get("selectivity") and data.kind == "classification":
        check_control_types(data)  # before any training
    counts = dict(data.counts)
    splits = split_utterances(corpus, seed=seed, **split_cfg)
    unit, keys = bootstrap_unit(corpus, split_cfg.get("by", "text"), splits["test"], counts)
    arrays = load_split_arrays(acts, data, splits, layer_ids, unit_of_utterance=keys, stream=stream,
                               memory_budget_gb=memory_budget_gb)  # fmt: skip
    if data.kind == "classification":
        drop_unseen_labels(arrays, counts)
    for s, a in arrays.items():
        counts[f"{s}_items"] = len(a.y)
        counts[f"{s}_utterances"] = int(len(np.unique(a.utt)))
        if len(a.y) == 0 and not (s == "val" and split_cfg.get("by") == "order"):  # order: val_count may be 0
            raise ValueError(f"split {s!r} has no items for task {data.task!r}; check split settings and the corpus "
                             f"(items per split: { {k: len(v.y) for k, v in arrays.items()} })")  # fmt: skip
    check_targets(arrays, data)
    num_outputs = len(data.classes) if data.kind == "classification" else arrays["train"].y.reshape(len(arrays["train"].y), -1).shape[1]
    log.info("probing %s on %d layers: %s", data.task, len(layer_ids), {k: v for k, v in counts.items() if k.endswith("_items")})
    probe = fit_probe(probe_factory, arrays, data.kind, num_outputs, trainer_factory, batch_size=batch_size, seed=seed,
                      layer_ids=layer_ids)  # fmt: skip
    rows = []
    for split in ("val", "test") if len(arrays["val"].y) else ("test",):  # no val rows for an empty val split
        rows += evaluate(probe, arrays[split], data.kind, layer_ids, data.target_names, split, n_boot=n_boot, seed=seed,
                         unit=unit)  # fmt: skip
    rows += baseline_rows(arrays, data, n_boot=n_boot, seed=seed, unit=unit)
    for r in probe.extra_results():
        if "layer_index" in r:
            r["layer"] = layer_ids[r.pop("layer_index")]
        rows.append({"target": data.target_names[0] if data.kind == "classification" else "all", **r})
    if controls.get("selectivity") and data.kind == "classification":
        rows += control_rows(probe_factory, arrays, data, layer_ids, lambda **kw: trainer_factory(logger=False, **kw),
                             probe, counts, seed=seed, n_boot=n_boot, unit=unit, batch_size=batch_size)  # fmt: skip
    if controls.get("mdl") and data.kind == "classification":
        mdl_unit = "text" if split_cfg.get("by", "text") == "text" else "utterance"
        from src.datamodules.splits import group_keys

        mdl_keys = keys if mdl_unit == unit else group_keys(corpus, mdl_unit)  # the bootstrap's keys when they agree
        tr = arrays["train"]
        arrays_mdl = {**arrays, "train": SplitArrays(tr.x, tr.y, tr.utt, tr.data, unit_codes(mdl_keys)[tr.utt])}
        rows += mdl_rows(arrays_mdl, data, layer_ids, seed=seed, max_items=controls.get("mdl_max_items"), unit=mdl_unit)
    mark_fit_warnings(rows, probe, layer_ids, counts)  # every row of a flagged layer (its controls and MDL too)
    return ProbingOutput(rows=rows, counts=counts, probe=probe)

