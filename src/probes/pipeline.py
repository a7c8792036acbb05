"""The probing run behind ``train.py``: cache -> task items -> split -> probes -> result rows.

Everything is built from the composed config by ``train.py``; this module holds the
steps so that they are testable without Hydra.  Metrics come from torchmetrics
(functional forms on the collected predictions) with 95% bootstrap intervals over test
utterances (``src.functional.probing.bootstrap_ci``).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from src.datamodules.tasks import ProbeData
from src.functional.probing import bootstrap_ci, control_task_labels, selectivity

log = logging.getLogger(__name__)


@dataclass
class SplitArrays:
    x: torch.Tensor  # (N, L, D)
    y: torch.Tensor  # (N,) or (N, K)
    utt: np.ndarray  # (N,)
    data: ProbeData
    groups: np.ndarray | None = None  # (N,) the bootstrap unit of each item (text, speaker or utterance key)

    def subset(self, keep: np.ndarray) -> SplitArrays:
        sel = torch.from_numpy(np.asarray(keep))
        g = None if self.groups is None else self.groups[keep]
        return SplitArrays(self.x[sel], self.y[sel], self.utt[keep], self.data.subset(keep), g)


@dataclass
class ProbingOutput:
    rows: list[dict]
    counts: dict = field(default_factory=dict)
    probe: object | None = None


class ControlTaskError(ValueError):
    """A control task that cannot be informative (its control label is a function of the task label)."""


def load_split_arrays(acts, data: ProbeData, splits: dict[str, np.ndarray], layers: list[int],
                      unit_of_utterance: np.ndarray | None = None) -> dict[str, SplitArrays]:  # fmt: skip
    """Features of every probed layer for each split: x (N, L, D) in the cache dtype."""
    from tqdm.auto import tqdm

    out = {}
    masks = {k: np.isin(data.utt, v) for k, v in splits.items()}
    per_split = {k: data.subset(m) for k, m in masks.items()}
    dtype = np.float16 if acts.meta["dtype"] == "float16" else np.float32
    feats = {k: np.empty((len(d), len(layers), acts.hidden_size), dtype=dtype) for k, d in per_split.items()}
    for j, layer in enumerate(tqdm(layers, desc="loading layers", leave=False)):
        arr = acts.layer(layer)
        for k, d in per_split.items():
            feats[k][:, j] = d.features(arr, dtype)
    for k, d in per_split.items():
        y = torch.as_tensor(d.y)
        g = None if unit_of_utterance is None else unit_of_utterance[d.utt]
        out[k] = SplitArrays(torch.from_numpy(feats[k]), y.long() if data.kind == "classification" else y.float(), d.utt,
                             d, g)  # fmt: skip
    return out


def drop_unseen_labels(arrays: dict[str, SplitArrays], counts: dict) -> None:
    """Test/val items whose class never occurs in training cannot be predicted: drop and count them."""
    seen = set(arrays["train"].y.unique().tolist())
    for split in ("val", "test"):
        a = arrays[split]
        keep = np.array([int(v) in seen for v in a.y.tolist()], dtype=bool)
        if (~keep).any():
            counts[f"{split}_items_unseen_label"] = int((~keep).sum())
            log.warning("%s: %d items with labels unseen in training were left out", split, int((~keep).sum()))
            arrays[split] = a.subset(keep)


def check_targets(arrays: dict[str, SplitArrays], data: ProbeData) -> None:
    """Fail before training when a split cannot give a defined metric (constant target, one class)."""
    for s, a in arrays.items():
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


def standardization(x: torch.Tensor, chunk: int = 65536, layer_ids: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and dimension mean and std of (N, L, D), accumulated in float64.

    Raises ValueError naming the layers (``layer_ids``, else positions) that hold inf or
    NaN, with their counts: one inf would make the layer's mean inf and std NaN, and every
    prediction of that layer NaN. A zero-variance feature gets std 0 here (the probe
    clamps it, so it standardises to 0, not NaN).
    """
    from src.probes.base import nonfinite_message, nonfinite_per_layer

    s = torch.zeros(x.shape[1:], dtype=torch.float64)  # (L, D)
    ss = torch.zeros_like(s)
    chunk = max(1, min(chunk, (1 << 24) // max(1, x.shape[1] * x.shape[2])))  # <= 16M values (128 MB) per step
    for i in range(0, len(x), chunk):
        c = x[i : i + chunk].double()  # (n, L, D)
        s += c.sum(0)
        ss += (c * c).sum(0)
    # float64 sums of float16/32 values cannot overflow, so a non-finite sum means a non-finite input
    if not bool(torch.isfinite(s).all() and torch.isfinite(ss).all()):
        raise ValueError(nonfinite_message(nonfinite_per_layer(x, chunk), x.shape[0] * x.shape[2], layer_ids,
                                           "training features"))  # fmt: skip
    mu = s / len(x)
    var = (ss / len(x) - mu**2).clamp_min(0)
    return mu.float(), var.sqrt().float()


def _keep_best_callback():
    """A Lightning callback that keeps, per head, the parameters of the epoch with the lowest validation loss.

    Multi-head probes (``head_parameters()`` gives the parameters stacked per head and
    ``validation_loss_per_head()`` each head's mean validation loss) keep each head at its
    own best epoch, so a layer's result does not depend on the other layers in the run.
    Other probes (one head, e.g. the weighted sum) keep the whole state at the best epoch of
    their loss (``validation_loss_per_head()`` or ``val/loss``). Sanity-check validation is
    ignored; ties keep the earlier epoch; a NaN loss never counts as best. At the end the
    kept parameters are restored and ``pl_module.best_epochs`` (0-based ``current_epoch``
    per head, -1 if never validated) is set.
    """
    import lightning as L

    class KeepBest(L.Callback):
        def __init__(self) -> None:
            self.best_loss: torch.Tensor | None = None  # (H,)
            self.best_epoch: torch.Tensor | None = None  # (H,)
            self.heads: dict | None = None  # per-head copies of the stacked parameters
            self.state: dict | None = None  # whole state (single-head probes)

        def _losses(self, trainer, pl_module) -> torch.Tensor | None:
            if hasattr(pl_module, "validation_loss_per_head"):
                return pl_module.validation_loss_per_head().double().reshape(-1)  # (H,)
            v = trainer.callback_metrics.get("val/loss")
            return None if v is None else torch.tensor([float(v)], dtype=torch.float64)

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
            if self.best_loss is None:
                self.best_loss = torch.full_like(loss, float("inf"))
                self.best_epoch = torch.full(loss.shape, -1, dtype=torch.long)
            better = loss < self.best_loss  # (H,); NaN is never better
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


def fit_probe(probe_factory, arrays: dict[str, SplitArrays], kind: str, num_outputs: int, trainer_factory,
              batch_size: int = 256, seed: int = 0, layer_ids: list[int] | None = None):  # fmt: skip
    """Instantiate and train a probe (Lightning, or closed form when the probe says so).

    layer_ids: the cache layers of the L columns of ``x (N, L, D)`` (default ``0..L-1``).
    They name layers in errors and are passed to the probe, whose heads are initialised
    from generators seeded by (seed, layer id): the result does not depend on the global
    RNG state nor on which other layers are in the run. Every split's features are checked
    for inf/NaN first (ValueError naming the layers). Lightning probes keep each head at the
    epoch of its own lowest validation loss (`_keep_best_callback`; ``probe.best_epochs``).
    """
    import lightning as L

    from src.probes.base import check_finite

    tr, va = arrays["train"], arrays["val"]
    L_, D = tr.x.shape[1], tr.x.shape[2]
    layer_ids = list(range(L_)) if layer_ids is None else [int(k) for k in layer_ids]
    if len(layer_ids) != L_:
        raise ValueError(f"layer_ids {layer_ids} has {len(layer_ids)} entries, but the features have {L_} layers")
    for split, a in arrays.items():
        check_finite(a.x, layer_ids, f"{split} features")
    L.seed_everything(seed, workers=True, verbose=False)  # anything a probe still draws from the global RNG
    probe = probe_factory(num_layers=L_, dim=D, num_outputs=num_outputs, kind=kind, layer_ids=layer_ids, seed=seed)
    if getattr(probe, "closed_form", False):
        names = getattr(getattr(tr, "data", None), "target_names", None)
        return probe.fit(tr.x, tr.y, va.x, va.y, kind, num_outputs, target_names=names)
    from torch.utils.data import DataLoader, TensorDataset

    L.seed_everything(seed, workers=True, verbose=False)
    mu, sd = standardization(tr.x, layer_ids=layer_ids)
    probe.set_standardization(mu, sd)
    g = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(TensorDataset(tr.x, tr.y), batch_size=batch_size, shuffle=True, generator=g)
    val_dl = DataLoader(TensorDataset(va.x, va.y), batch_size=4096)
    trainer = trainer_factory(callbacks=[_keep_best_callback()])
    trainer.fit(probe, train_dl, val_dl)
    return probe


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


def evaluate(probe, arr: SplitArrays, kind: str, layer_ids: list[int], target_names: list[str], split: str,
             n_boot: int = 1000, seed: int = 0, unit: str | None = None) -> list[dict]:  # fmt: skip
    """Metric rows for every head: accuracy / macro-F1 or per-target Pearson r and R2, each with a
    95% percentile bootstrap interval over ``arr.groups`` (the split unit), named in ``unit``."""
    import torchmetrics.functional as tmf

    from src.functional.probing import bootstrap_from_sums, macro_f1_stats, r2_stats

    unit = unit or ("utterance" if arr.groups is None else None)
    groups = _groups(arr)
    out = probe.predict_all(arr.x)  # (H, N, C)
    heads = [-1] if getattr(probe, "single_head", False) else layer_ids
    rows = []
    for h, layer in enumerate(heads):
        o = out[h]
        if kind == "classification":
            pred = o.argmax(-1)
            C = o.shape[-1]
            correct = (pred == arr.y).double().numpy()
            acc = float(tmf.accuracy(pred, arr.y, task="multiclass", num_classes=C, average="micro"))
            ci = bootstrap_ci(correct, groups, statistic="accuracy", n_boot=n_boot, seed=seed)
            rows.append(dict(layer=layer, target=target_names[0], metric="accuracy", value=acc, split=split,
                             **_ci_fields(ci, unit=unit)))  # fmt: skip
            f1 = float(tmf.f1_score(pred, arr.y, task="multiclass", num_classes=C, average="macro"))
            st, fn = macro_f1_stats(pred.numpy(), arr.y.numpy(), C)
            ci = bootstrap_from_sums(st, groups, fn, n_boot=n_boot, seed=seed)
            rows.append(dict(layer=layer, target=target_names[0], metric="macro_f1", value=f1, split=split,
                             **_ci_fields(ci, unit=unit)))  # fmt: skip
        else:
            y = arr.y.reshape(len(arr.y), -1)
            o = o.reshape(len(y), -1)
            r = tmf.pearson_corrcoef(o, y) if y.shape[1] > 1 else tmf.pearson_corrcoef(o[:, 0], y[:, 0]).reshape(1)
            r2 = tmf.r2_score(o, y, multioutput="raw_values").reshape(-1)
            ci = bootstrap_ci(o.double().numpy(), groups, target=y.double().numpy(), statistic="pearson",
                              n_boot=n_boot, seed=seed)  # fmt: skip
            st, fn = r2_stats(o.double().numpy(), y.double().numpy())
            ci2 = bootstrap_from_sums(st, groups, fn, n_boot=n_boot, seed=seed)
            for k, name in enumerate(target_names):
                rows.append(dict(layer=layer, target=name, metric="pearson_r", value=float(r[k]), split=split,
                                 **_ci_fields(ci, k, unit)))  # fmt: skip
                rows.append(dict(layer=layer, target=name, metric="r2", value=float(r2[k]), split=split,
                                 **_ci_fields(ci2, k, unit)))  # fmt: skip
            rows.append(dict(layer=layer, target="mean", metric="pearson_r", value=float(r.mean()), split=split,
                             **_quantile_ci(ci, unit)))  # fmt: skip
            rows.append(dict(layer=layer, target="mean", metric="r2", value=float(r2.mean()), split=split,
                             **_quantile_ci(ci2, unit)))  # fmt: skip
    return rows


def baseline_rows(arrays: dict[str, SplitArrays], data: ProbeData, split: str = "test", n_boot: int = 1000,
                  seed: int = 0, unit: str | None = None) -> list[dict]:  # fmt: skip
    """Majority class, and for stress the vowel-identity lookup (stress is largely predictable from the vowel)."""
    if data.kind != "classification":
        return []
    tr, te = arrays["train"], arrays[split]
    g = _groups(te)
    majority = Counter(tr.y.tolist()).most_common(1)[0][0]

    def row(metric: str, correct: torch.Tensor) -> dict:
        c = correct.double().numpy()
        ci = bootstrap_ci(c, g, statistic="accuracy", n_boot=n_boot, seed=seed)
        return dict(layer=-1, target=data.target_names[0], metric=metric, value=float(c.mean()), split=split,
                    **_ci_fields(ci, unit=unit))  # fmt: skip

    rows = [row("accuracy_majority_baseline", te.y == majority)]
    if "vowel" in data.extra:
        vt, ve = tr.data.extra["vowel"], te.data.extra["vowel"]
        table = {}
        for v in np.unique(vt):
            table[v] = Counter(tr.y[torch.from_numpy(vt == v)].tolist()).most_common(1)[0][0]
        pred = torch.tensor([table.get(v, majority) for v in ve])
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
        pairs = set(zip(train.y.tolist(), train.data.types.tolist()))
        per_label = Counter(lab for lab, _ in pairs)
        if per_label and max(per_label.values()) == 1:
            raise ControlTaskError(
                f"controls.selectivity=true: in the training split every {data.task!r} label has exactly one control "
                "type, so the control label is a function of the task label (selectivity <= 0 by construction); "
                "the types must vary within a label (e.g. task.control_type=word: word + position)"
            )


def _correct(probe, arr: SplitArrays) -> np.ndarray:
    """``(H, N)`` 0/1 correctness of every head."""
    return (probe.predict_all(arr.x).argmax(-1) == arr.y[None]).double().numpy()


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
    types_all = np.concatenate([arrays[s].data.types for s in ("train", "val", "test")])
    train_counts = np.bincount(arrays["train"].y.numpy(), minlength=C)
    mapping, _ = control_task_labels(types_all, seed=seed, label_counts=train_counts)
    ctrl = {}
    for s, a in arrays.items():
        yc = torch.tensor([mapping[t] for t in a.data.types], dtype=torch.long)
        ctrl[s] = SplitArrays(a.x, yc, a.utt, a.data, a.groups)
    probe = fit_probe(probe_factory, ctrl, "classification", C, trainer_factory, seed=seed, layer_ids=layer_ids, **kw)
    seen = np.isin(arrays["test"].data.types, arrays["train"].data.types)  # (N_test,)
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
    """
    from src.functional.mdl import mdl_block_schedule, snap_schedule
    from src.probes.mdl import mdl_online_code

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
    for j, layer in enumerate(layer_ids):
        res = mdl_online_code(tr.x[order, j].float().numpy(), tr.y[order].numpy(), num_classes, seed=None,
                              schedule=ends)  # fmt: skip
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

    unit = by
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


def _resolve(acts, spec, what: str) -> list[int]:
    if hasattr(acts, "resolve_layers"):
        return acts.resolve_layers(spec, what=what)
    from src.layers import resolve_layers

    return resolve_layers(spec, acts.num_layers, extras=getattr(acts, "extra_states", ()), what=what)


def probed_layers(acts, layers, single) -> list[int]:
    """The cache states to probe from ``layers=`` or ``probe.layer=`` (never both)."""
    from src.layers import LayerSpecError

    if single is not None and layers is not None:
        raise LayerSpecError(f"give either layers={list(layers)} or probe.layer={single}, not both")
    if single is not None:
        return _resolve(acts, single, "probe.layer")
    return _resolve(acts, layers, "layers")


def run_probing(acts, corpus, task, probe_factory, trainer_factory, split_cfg: dict, controls: dict | None = None,
                layers: list[int] | None = None, batch_size: int = 256, n_boot: int = 1000, seed: int = 0) -> ProbingOutput:  # fmt: skip
    """The whole probing run on one cache: items, split, probe on every layer, metrics, controls."""
    from src.datamodules.splits import split_utterances

    controls = controls or {}
    layer_ids = probed_layers(acts, layers, getattr(probe_factory, "keywords", {}).get("layer"))
    data = task.build(acts, corpus)
    if controls.get("selectivity") and data.kind == "classification":
        check_control_types(data)  # before any training
    counts = dict(data.counts)
    splits = split_utterances(corpus, seed=seed, **split_cfg)
    unit, keys = bootstrap_unit(corpus, split_cfg.get("by", "text"), splits["test"], counts)
    arrays = load_split_arrays(acts, data, splits, layer_ids, unit_of_utterance=keys)
    if data.kind == "classification":
        drop_unseen_labels(arrays, counts)
    for s, a in arrays.items():
        counts[f"{s}_items"] = len(a.y)
        counts[f"{s}_utterances"] = int(len(np.unique(a.utt)))
        if len(a.y) == 0:
            raise ValueError(f"split {s!r} has no items for task {data.task!r}; check split settings and the corpus "
                             f"(items per split: { {k: len(v.y) for k, v in arrays.items()} })")  # fmt: skip
    check_targets(arrays, data)
    num_outputs = len(data.classes) if data.kind == "classification" else arrays["train"].y.reshape(len(arrays["train"].y), -1).shape[1]
    log.info("probing %s on %d layers: %s", data.task, len(layer_ids), {k: v for k, v in counts.items() if k.endswith("_items")})
    probe = fit_probe(probe_factory, arrays, data.kind, num_outputs, trainer_factory, batch_size=batch_size, seed=seed,
                      layer_ids=layer_ids)  # fmt: skip
    rows = []
    for split in ("val", "test"):
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
        arrays_mdl = {**arrays, "train": SplitArrays(tr.x, tr.y, tr.utt, tr.data, mdl_keys[tr.utt])}
        rows += mdl_rows(arrays_mdl, data, layer_ids, seed=seed, max_items=controls.get("mdl_max_items"), unit=mdl_unit)
    return ProbingOutput(rows=rows, counts=counts, probe=probe)

