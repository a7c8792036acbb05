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


@dataclass
class ProbingOutput:
    rows: list[dict]
    counts: dict = field(default_factory=dict)
    probe: object | None = None


def load_split_arrays(acts, data: ProbeData, splits: dict[str, np.ndarray], layers: list[int]) -> dict[str, SplitArrays]:
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
        out[k] = SplitArrays(torch.from_numpy(feats[k]), y.long() if data.kind == "classification" else y.float(), d.utt, d)
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
            arrays[split] = SplitArrays(a.x[keep], a.y[keep], a.utt[keep], a.data.subset(keep))


def standardization(x: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and dimension mean and std of (N, L, D), accumulated in float64."""
    s = torch.zeros(x.shape[1:], dtype=torch.float64)
    ss = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        c = x[i : i + chunk].double()
        s += c.sum(0)
        ss += (c * c).sum(0)
    mu = s / len(x)
    var = (ss / len(x) - mu**2).clamp_min(0)
    return mu.float(), var.sqrt().float()


def _keep_best_callback():
    """A Lightning callback that remembers the weights with the lowest val/loss and restores them at the end."""
    import lightning as L

    class KeepBest(L.Callback):
        def __init__(self) -> None:
            self.best, self.state = float("inf"), None

        def on_validation_epoch_end(self, trainer, pl_module):
            v = trainer.callback_metrics.get("val/loss")
            if v is not None and float(v) < self.best:
                self.best, self.state = float(v), copy.deepcopy(pl_module.state_dict())

        def on_fit_end(self, trainer, pl_module):
            if self.state is not None:
                pl_module.load_state_dict(self.state)

    return KeepBest()


def fit_probe(probe_factory, arrays: dict[str, SplitArrays], kind: str, num_outputs: int, trainer_factory,
              batch_size: int = 256, seed: int = 0):  # fmt: skip
    """Instantiate and train a probe (Lightning, or closed form when the probe says so)."""
    L_ = arrays["train"].x.shape[1]
    D = arrays["train"].x.shape[2]
    probe = probe_factory(num_layers=L_, dim=D, num_outputs=num_outputs, kind=kind)
    tr, va = arrays["train"], arrays["val"]
    if getattr(probe, "closed_form", False):
        return probe.fit(tr.x, tr.y, va.x, va.y, kind, num_outputs)
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    L.seed_everything(seed, workers=True, verbose=False)
    mu, sd = standardization(tr.x)
    probe.set_standardization(mu, sd)
    g = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(TensorDataset(tr.x, tr.y), batch_size=batch_size, shuffle=True, generator=g)
    val_dl = DataLoader(TensorDataset(va.x, va.y), batch_size=4096)
    trainer = trainer_factory(callbacks=[_keep_best_callback()])
    trainer.fit(probe, train_dl, val_dl)
    return probe


def evaluate(probe, arr: SplitArrays, kind: str, layer_ids: list[int], target_names: list[str], split: str,
             n_boot: int = 1000, seed: int = 0) -> list[dict]:  # fmt: skip
    """Metric rows for every head: accuracy / macro-F1 or per-target Pearson r and R2, with CIs."""
    import torchmetrics.functional as tmf

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
            ci = bootstrap_ci(correct, arr.utt, statistic="accuracy", n_boot=n_boot, seed=seed)
            rows.append(dict(layer=layer, target=target_names[0], metric="accuracy", value=acc,
                             ci_low=float(ci.low), ci_high=float(ci.high), split=split))  # fmt: skip
            f1 = float(tmf.f1_score(pred, arr.y, task="multiclass", num_classes=C, average="macro"))
            rows.append(dict(layer=layer, target=target_names[0], metric="macro_f1", value=f1, split=split))
        else:
            y = arr.y.reshape(len(arr.y), -1)
            o = o.reshape(len(y), -1)
            r = tmf.pearson_corrcoef(o, y) if y.shape[1] > 1 else tmf.pearson_corrcoef(o[:, 0], y[:, 0]).reshape(1)
            r2 = tmf.r2_score(o, y, multioutput="raw_values").reshape(-1)
            ci = bootstrap_ci(o.double().numpy(), arr.utt, target=y.double().numpy(), statistic="pearson",
                              n_boot=n_boot, seed=seed)  # fmt: skip
            lows, highs = np.atleast_1d(ci.low), np.atleast_1d(ci.high)
            for k, name in enumerate(target_names):
                rows.append(dict(layer=layer, target=name, metric="pearson_r", value=float(r[k]),
                                 ci_low=float(lows[k]), ci_high=float(highs[k]), split=split))  # fmt: skip
                rows.append(dict(layer=layer, target=name, metric="r2", value=float(r2[k]), split=split))
            rows.append(dict(layer=layer, target="mean", metric="pearson_r", value=float(r.mean()), split=split))
            rows.append(dict(layer=layer, target="mean", metric="r2", value=float(r2.mean()), split=split))
    return rows


def baseline_rows(arrays: dict[str, SplitArrays], data: ProbeData, split: str = "test") -> list[dict]:
    """Majority class, and for stress the vowel-identity lookup (stress is largely predictable from the vowel)."""
    if data.kind != "classification":
        return []
    tr, te = arrays["train"], arrays[split]
    majority = Counter(tr.y.tolist()).most_common(1)[0][0]
    rows = [dict(layer=-1, target=data.target_names[0], metric="accuracy_majority_baseline",
                 value=float((te.y == majority).double().mean()), split=split)]  # fmt: skip
    if "vowel" in data.extra:
        vt, ve = tr.data.extra["vowel"], te.data.extra["vowel"]
        table = {}
        for v in np.unique(vt):
            table[v] = Counter(tr.y[torch.from_numpy(vt == v)].tolist()).most_common(1)[0][0]
        pred = torch.tensor([table.get(v, majority) for v in ve])
        rows.append(dict(layer=-1, target=data.target_names[0], metric="accuracy_vowel_identity_baseline",
                         value=float((pred == te.y).double().mean()), split=split))  # fmt: skip
    return rows


def control_rows(probe_factory, arrays, data: ProbeData, layer_ids, trainer_factory, task_probe, counts: dict,
                 seed=0, **kw) -> list[dict]:  # fmt: skip
    """Hewitt & Liang (2019) control task: each item *type* gets a random label; selectivity = acc - control acc.

    A control label can only be predicted for a type seen in training (it is arbitrary), so
    both accuracies are measured on the test items whose type occurs in the training split
    (as in H&L, whose test words are mostly training types). With a split by text, many
    word types are new at test time; their number is reported in the counts.
    """
    types_all = np.concatenate([arrays[s].data.types for s in ("train", "val", "test")])
    labels_all = np.concatenate([arrays[s].y.numpy() for s in ("train", "val", "test")])
    mapping, _ = control_task_labels(types_all, task_labels=labels_all, seed=seed)
    ctrl = {}
    for s, a in arrays.items():
        yc = torch.tensor([mapping[t] for t in a.data.types], dtype=torch.long)
        ctrl[s] = SplitArrays(a.x, yc, a.utt, a.data)
    num_outputs = int(max(mapping.values())) + 1
    probe = fit_probe(probe_factory, ctrl, "classification", num_outputs, trainer_factory, seed=seed, **kw)
    seen = np.isin(arrays["test"].data.types, arrays["train"].data.types)  # (N_test,)
    counts["test_items_control_type_seen_in_train"] = int(seen.sum())
    counts["test_items_control_type_unseen"] = int((~seen).sum())
    if not seen.any():
        log.warning("control task: no test item has a type seen in training; selectivity not computed")
        return []
    sel = torch.from_numpy(seen)

    def on_seen(a: SplitArrays) -> SplitArrays:
        return SplitArrays(a.x[sel], a.y[sel], a.utt[seen], a.data.subset(seen))

    name = data.target_names[0]
    c_rows = evaluate(probe, on_seen(ctrl["test"]), "classification", layer_ids, [name], "test")
    t_rows = evaluate(task_probe, on_seen(arrays["test"]), "classification", layer_ids, [name], "test")
    acc = {r["layer"]: r for r in c_rows if r["metric"] == "accuracy"}
    task_acc = {r["layer"]: r for r in t_rows if r["metric"] == "accuracy"}
    out = []
    for layer, c in acc.items():
        t = task_acc[layer]
        out.append({**c, "metric": "control_accuracy"})
        out.append({**t, "metric": "accuracy_control_types_seen"})
        out.append(dict(layer=layer, target=name, metric="selectivity",
                        value=float(selectivity(t["value"], c["value"])), split="test"))  # fmt: skip
    return out


def mdl_rows(arrays, data: ProbeData, layer_ids: list[int], seed: int = 0, max_items: int | None = 20000) -> list[dict]:
    """Online codelength and compression per layer (train split, shuffled)."""
    from src.probes.mdl import mdl_online_code

    tr = arrays["train"]
    n = len(tr.y) if max_items is None else min(len(tr.y), max_items)
    order = np.random.default_rng(seed).permutation(len(tr.y))[:n]
    num_classes = len(data.classes)
    rows = []
    for j, layer in enumerate(layer_ids):
        res = mdl_online_code(tr.x[order, j].float().numpy(), tr.y[order].numpy(), num_classes, seed=seed)
        rows.append(dict(layer=layer, target=data.target_names[0], metric="mdl_codelength_kbits",
                         value=res.codelength_bits / 1000, split="train"))  # fmt: skip
        rows.append(dict(layer=layer, target=data.target_names[0], metric="mdl_compression",
                         value=res.compression, split="train"))  # fmt: skip
    return rows


def run_probing(acts, corpus, task, probe_factory, trainer_factory, split_cfg: dict, controls: dict | None = None,
                layers: list[int] | None = None, batch_size: int = 256, n_boot: int = 1000, seed: int = 0) -> ProbingOutput:  # fmt: skip
    """The whole probing run on one cache: items, split, probe on every layer, metrics, controls."""
    from src.datamodules.splits import split_utterances

    controls = controls or {}
    data = task.build(acts, corpus)
    counts = dict(data.counts)
    splits = split_utterances(corpus, seed=seed, **split_cfg)
    single = getattr(probe_factory, "keywords", {}).get("layer")
    if single is not None:
        layers = [int(single) % acts.num_layers]
    layer_ids = list(range(acts.num_layers)) if layers is None else [int(k) % acts.num_layers for k in layers]
    arrays = load_split_arrays(acts, data, splits, layer_ids)
    if data.kind == "classification":
        drop_unseen_labels(arrays, counts)
    for s, a in arrays.items():
        counts[f"{s}_items"] = len(a.y)
        counts[f"{s}_utterances"] = int(len(np.unique(a.utt)))
        if len(a.y) == 0:
            raise ValueError(f"split {s!r} has no items for task {data.task!r}; check split settings and the corpus")
    num_outputs = len(data.classes) if data.kind == "classification" else arrays["train"].y.reshape(len(arrays["train"].y), -1).shape[1]
    log.info("probing %s on %d layers: %s", data.task, len(layer_ids), {k: v for k, v in counts.items() if k.endswith("_items")})
    probe = fit_probe(probe_factory, arrays, data.kind, num_outputs, trainer_factory, batch_size=batch_size, seed=seed)
    rows = []
    for split in ("val", "test"):
        rows += evaluate(probe, arrays[split], data.kind, layer_ids, data.target_names, split, n_boot=n_boot, seed=seed)
    rows += baseline_rows(arrays, data)
    for r in probe.extra_results():
        if "layer_index" in r:
            r["layer"] = layer_ids[r.pop("layer_index")]
        rows.append({"target": data.target_names[0] if data.kind == "classification" else "all", **r})
    if controls.get("selectivity") and data.kind == "classification":
        rows += control_rows(probe_factory, arrays, data, layer_ids, lambda **kw: trainer_factory(logger=False, **kw),
                             probe, counts, seed=seed, batch_size=batch_size)  # fmt: skip
    if controls.get("mdl") and data.kind == "classification":
        rows += mdl_rows(arrays, data, layer_ids, seed=seed, max_items=controls.get("mdl_max_items"))
    return ProbingOutput(rows=rows, counts=counts, probe=probe)
