"""Ridge probe: closed-form, exact multi-output ridge regression for every layer.

No gradient descent: each layer's train moments are accumulated in one pass
(``src.functional.ridge.RidgeStats``), the penalty is chosen per target on validation
moments from ``alphas`` and the solution is exact.  ``alphas: [0.0]`` is ordinary least
squares (scikit-learn's ``LinearRegression``).  For classification the targets are
one-hot vectors and the prediction is the argmax (a ridge classifier); alpha is then
chosen by validation MSE.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from src.functional.ridge import RidgeStats, select_alpha


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
        **shapes,  # num_layers, dim, num_outputs, kind: given by the pipeline, read from the data in fit()
    ) -> None:
        self.alphas = [float(a) for a in (alphas if alphas is not None else [0.0, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4])]
        self.standardize, self.per_target, self.chunk = standardize, per_target, int(chunk)
        self.compute_dtype = getattr(torch, compute_dtype)
        self.weights: list[tuple[Tensor, Tensor]] = []
        self.best_alpha: list[Tensor] = []

    def _targets(self, y: np.ndarray | Tensor, kind: str, num_outputs: int) -> Tensor:
        y = torch.as_tensor(np.asarray(y))
        if kind == "classification":
            return torch.nn.functional.one_hot(y.long(), num_outputs).double()  # (N, C)
        return y.double().reshape(len(y), -1)  # (N, K)

    def _stats(self, x: Tensor, y: Tensor) -> RidgeStats:
        st = RidgeStats(compute_dtype=self.compute_dtype)
        for i in range(0, len(y), self.chunk):
            st.update(x[i : i + self.chunk], y[i : i + self.chunk])
        return st

    def fit(self, x_train: Tensor, y_train, x_val: Tensor, y_val, kind: str, num_outputs: int) -> RidgeProbe:
        """x: (N, L, D) features of every probed layer."""
        self.kind, self.num_outputs = kind, num_outputs
        yt, yv = self._targets(y_train, kind, num_outputs), self._targets(y_val, kind, num_outputs)
        metric = "mse" if kind == "classification" else "r"
        self.weights, self.best_alpha = [], []
        for k in range(x_train.shape[1]):
            tr, va = self._stats(x_train[:, k], yt), self._stats(x_val[:, k], yv)
            if len(self.alphas) > 1:
                alpha, _ = select_alpha(tr, va, self.alphas, metric=metric, per_target=self.per_target,
                                        standardize=self.standardize)  # fmt: skip
            else:
                alpha = torch.tensor(self.alphas[0], dtype=torch.float64)
            self.best_alpha.append(alpha)
            # one alpha (scalar) takes the Cholesky path; one per target the eigendecomposition
            self.weights.append(tr.solve(alpha.reshape(()) if alpha.numel() == 1 else alpha, standardize=self.standardize))
        return self

    @torch.no_grad()
    def predict_all(self, x: Tensor) -> Tensor:
        """(L, N, C) outputs (class scores or values)."""
        return torch.stack([x[:, k].double() @ w + b for k, (w, b) in enumerate(self.weights)]).float()

    def extra_results(self) -> list[dict]:
        rows = []
        for k, a in enumerate(self.best_alpha):
            rows.append({"layer_index": k, "metric": "ridge_alpha", "value": float(torch.as_tensor(a).double().mean()), "split": "val"})
        return rows
