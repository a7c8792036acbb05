"""Ridge probe: closed-form, exact multi-output ridge regression for every layer.

No gradient descent: each layer's train moments are accumulated in one pass
(``src.functional.ridge.RidgeStats``), the penalty is chosen on validation data from
``alphas`` and the solution is exact.  ``alphas: [0.0]`` is ordinary least squares
(scikit-learn's ``LinearRegression``).

- Regression: one alpha per target (``per_target: true``) or one per layer, chosen by
  validation Pearson r on moments; reported as ``ridge_alpha`` rows per layer and target.
- Classification: the targets are one-hot vectors and the prediction is the argmax (a
  ridge classifier, as scikit-learn's ``RidgeClassifier``); one alpha per layer is chosen by
  validation accuracy (ties: lower validation MSE, then the first listed), because class
  scores compared by argmax should carry the same shrinkage. Reported as one
  ``ridge_alpha`` row per layer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from src.functional.ridge import RidgeStats, select_alpha, select_alpha_accuracy


class RidgeProbe:
    closed_form = True
    single_head = False

    def __init__(
        self,
        alphas: list[float] | None = None,
        standardize: bool = True,
        per_target: bool = True,
        chunk: int = 16384,
        layer: int | None = None,
        compute_dtype: str = "float64",
        layer_ids: list[int] | None = None,
        **shapes,  # num_layers, dim, num_outputs, kind, seed: given by the pipeline, read from the data in fit()
    ) -> None:
        self.alphas = [float(a) for a in (alphas if alphas is not None else [0.0, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4])]
        self.standardize, self.per_target, self.chunk = standardize, per_target, int(chunk)
        self.compute_dtype = getattr(torch, compute_dtype)
        self.layer_ids = list(layer_ids) if layer_ids is not None else None
        self.weights: list[tuple[Tensor, Tensor]] = []
        self.best_alpha: list[Tensor] = []
        self.target_names: list[str] | None = None

    def _targets(self, y: np.ndarray | Tensor, kind: str, num_outputs: int) -> Tensor:
        y = torch.as_tensor(np.asarray(y))
        if kind == "classification":
            return torch.nn.functional.one_hot(y.long(), num_outputs).double()  # (N, C)
        return y.double().reshape(len(y), -1)  # (N, K)

    def _stats(self, x: Tensor, y: Tensor, layer_id: int) -> RidgeStats:
        st = RidgeStats(compute_dtype=self.compute_dtype)
        for i in range(0, len(y), self.chunk):
            st.update(x[i : i + self.chunk], y[i : i + self.chunk], layer_ids=layer_id)
        return st

    def _streamed_stats(self, x, y, ids: list[int], kind: str, num_outputs: int) -> list[RidgeStats]:
        """One pass over the chunks of a `CacheFeatures`: the moments of every layer.

        Chunks of ``self.chunk`` items, as `_stats` slices in-memory features: the same float
        operations in the same order, so the moments (and weights) equal the in-memory ones.
        The targets (one-hot for classification, float64) are built per chunk from the raw
        labels ``y``: an ``(N, C)`` float64 one-hot would grow with the corpus (320 B per item at 40 classes).
        """
        y = torch.as_tensor(np.asarray(y))
        stats = [RidgeStats(compute_dtype=self.compute_dtype) for _ in ids]
        for a, b, c in x.chunks(self.chunk):  # c (n, L, D) float32
            yc = self._targets(y[a:b], kind, num_outputs)
            for k, st in enumerate(stats):
                st.update(c[:, k], yc, layer_ids=ids[k])
        return stats

    def fit(self, x_train, y_train, x_val, y_val, kind: str, num_outputs: int,
            target_names: list[str] | None = None) -> RidgeProbe:  # fmt: skip
        """x: (N, L, D) features of every probed layer, in memory or a `CacheFeatures` (streamed:
        one pass over the training chunks for all layers' moments, one over the validation chunks
        for alpha selection); target_names name the regression targets in results."""
        from src.functional.ridge import AlphaAccuracy

        self.kind, self.num_outputs = kind, num_outputs
        self.target_names = list(target_names) if target_names is not None else None
        L_ = x_train.shape[1]
        ids = self.layer_ids if self.layer_ids is not None and len(self.layer_ids) == L_ else list(range(L_))
        self.weights, self.best_alpha = [], []
        if len(self.alphas) > 1 and len(y_val) == 0:
            raise ValueError(f"probe.alphas={self.alphas}: an alpha is chosen on validation data, but the validation "
                             "split is empty (split.val_count=0); give one alpha (e.g. probe.alphas=[0.0]) or validation data")  # fmt: skip
        if isinstance(x_train, Tensor) and isinstance(x_val, Tensor):
            yt = self._targets(y_train, kind, num_outputs)
            yv = self._targets(y_val, kind, num_outputs) if len(y_val) else None  # empty: one alpha, nothing to choose
            for k in range(L_):
                tr = self._stats(x_train[:, k], yt, ids[k])
                if len(self.alphas) == 1:
                    alpha = torch.tensor(self.alphas[0], dtype=torch.float64)
                elif kind == "classification":  # one alpha per layer, by validation accuracy
                    alpha, _ = select_alpha_accuracy(tr, x_val[:, k], y_val, self.alphas, standardize=self.standardize,
                                                     chunk=self.chunk)  # fmt: skip
                else:
                    va = self._stats(x_val[:, k], yv, ids[k])
                    alpha, _ = select_alpha(tr, va, self.alphas, metric="r", per_target=self.per_target,
                                            standardize=self.standardize)  # fmt: skip
                self._solve(tr, alpha)
            return self
        from src.probes.data import CacheFeatures

        src = {"train": x_train, "val": x_val}
        for name, v in src.items():  # a small split may be in memory while the other streams
            if not isinstance(v, CacheFeatures):
                src[name] = _InMemory(v)
        trs = self._streamed_stats(src["train"], y_train, ids, kind, num_outputs)
        if len(self.alphas) == 1:
            alphas = [torch.tensor(self.alphas[0], dtype=torch.float64)] * L_
        elif kind == "classification":
            accs = [AlphaAccuracy(tr, self.alphas, standardize=self.standardize) for tr in trs]
            yv_ids = torch.as_tensor(np.asarray(y_val)).long().reshape(-1)
            for a, b, c in src["val"].chunks(self.chunk):
                for k, acc in enumerate(accs):
                    acc.update(c[:, k], yv_ids[a:b], first_row=a)
            alphas = [acc.result()[0] for acc in accs]
        else:
            vas = self._streamed_stats(src["val"], y_val, ids, kind, num_outputs)
            alphas = [select_alpha(tr, va, self.alphas, metric="r", per_target=self.per_target,
                                   standardize=self.standardize)[0] for tr, va in zip(trs, vas)]  # fmt: skip
        for tr, alpha in zip(trs, alphas):
            self._solve(tr, alpha)
        return self

    def _solve(self, tr: RidgeStats, alpha: Tensor) -> None:
        self.best_alpha.append(alpha)
        # one alpha (scalar) takes the Cholesky path; one per target the eigendecomposition
        self.weights.append(tr.solve(alpha.reshape(()) if alpha.numel() == 1 else alpha, standardize=self.standardize))

    @torch.no_grad()
    def predict_all(self, x) -> Tensor:
        """(L, N, C) outputs (class scores or values); x in memory or a `CacheFeatures` (read in chunks)."""
        if isinstance(x, Tensor):
            return torch.stack([x[:, k].double() @ w + b for k, (w, b) in enumerate(self.weights)]).float()
        return torch.cat([o for _, _, o in self.predict_chunks(x)], dim=1)

    @torch.no_grad()
    def predict_chunks(self, x, batch_size: int | None = None):
        """``(start, stop, out (L, n, C))`` over consecutive items of ``x`` (tensor or `CacheFeatures`)."""
        from src.probes.base import feature_chunks

        for a, b, c in feature_chunks(x, batch_size or self.chunk):
            yield a, b, self.predict_all(c)

    def extra_results(self) -> list[dict]:
        """The chosen penalty: one ``ridge_alpha`` row per layer (classification, or one alpha per
        layer), else one per layer and target (``target`` = the target's name)."""
        rows = []
        for k, a in enumerate(self.best_alpha):
            a = torch.as_tensor(a).double().reshape(-1)
            if a.numel() == 1:
                row = {"layer_index": k, "metric": "ridge_alpha", "value": float(a[0]), "split": "val"}
                if self.kind != "classification":
                    row["target"] = "all"
                rows.append(row)
                continue
            names = self.target_names if self.target_names is not None and len(self.target_names) == a.numel() \
                else [f"target_{j}" for j in range(a.numel())]  # fmt: skip
            rows += [{"layer_index": k, "target": n, "metric": "ridge_alpha", "value": float(v), "split": "val"}
                     for n, v in zip(names, a.tolist())]  # fmt: skip
        return rows


class _InMemory:
    """In-memory features (N, L, D) with the ``chunks`` reader of a `CacheFeatures`."""

    def __init__(self, x: Tensor) -> None:
        self.x, self.shape = x, tuple(x.shape)

    def __len__(self) -> int:
        return len(self.x)

    def chunks(self, max_items: int):
        for i in range(0, len(self.x), max_items):
            yield i, min(len(self.x), i + max_items), self.x[i : i + max_items]
