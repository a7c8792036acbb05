"""Closed-form multi-output ridge regression from sufficient statistics.

The all-layer regression probe is one pass over the data: every chunk of frames updates
the moments of each layer (`RidgeStats`), and each layer is then solved once for all its
targets. Validation scores (Pearson r, R^2, MSE) come from validation moments alone, so
choosing a regularisation strength per target never materialises predictions.

Conventions
-----------
- Features ``x``: ``(..., n, d)``; leading dims (e.g. layers ``L``) are a batch of
  independent problems that share the targets. Targets ``y``: ``(n, k)``, ``(..., n, k)``
  or ``(n,)`` (treated as ``k = 1``).
- The model is ``pred = x @ W + b`` with ``W (..., d, k)`` and ``b (..., k)``. The intercept
  is not penalised: the problem is solved on centred moments,
  ``W = (Cxx + alpha I)^-1 Cxy`` and ``b = mean_y - mean_x @ W``, which is exactly
  scikit-learn's ``Ridge(fit_intercept=True)`` (and ``LinearRegression`` at ``alpha = 0``).
- All accumulators are float64. Products of a chunk may be computed in float32
  (``compute_dtype``) for speed; rows are shifted by the mean of the first chunk before
  any product, so the float32 products carry centred-scale numbers and the later
  centring ``Cxx = sum(xs xs^T) - n mx mx^T`` does not cancel catastrophically.
- Results are float64 torch tensors. Inputs may be torch tensors or numpy arrays of any
  float dtype, including float16 slices of an ``np.memmap``.

Why by hand: scikit-learn fits one design matrix at a time from the raw rows; here the
statistic is accumulated in chunks (the cache does not fit in memory), many layers share
one pass, and alpha selection must run on moments.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AlphaAccuracy",
    "RidgeStats",
    "RidgeWarning",
    "moment_scores",
    "pearson_r",
    "r2_score",
    "select_alpha",
    "select_alpha_accuracy",
]

_METRICS = ("r", "r2", "mse")
# Eigenvalues of the centred scatter below _RCOND * max are treated as 0. Rounding in
# forming X^T X is ~1e-16..1e-14 relative, so smaller eigenvalues carry no information.
_RCOND = 1e-12


class RidgeWarning(UserWarning):
    """The ridge solve fell back to the pseudo-inverse (singular or ill-conditioned X^T X)."""


def _to_tensor(a: Any, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    """Array-like (torch, numpy, memmap, float16 ...) -> tensor of `dtype` (copies only if needed)."""
    if isinstance(a, Tensor):
        return a.to(device=device, dtype=dtype)
    arr = np.asarray(a)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    if arr.dtype != np_dtype or not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=np_dtype, order="C", copy=True)  # memmap slice / float16 -> owned
    return torch.from_numpy(arr).to(device=device)


def _check_finite(x: Tensor, y: Tensor, layer_ids: int | Sequence[int] | None) -> None:
    """ValueError naming the layers of ``x (..., n, d)`` (and counting ``y``'s values) that are inf or NaN."""
    bad_x = ~torch.isfinite(x)
    bad_y = ~torch.isfinite(y)
    if not (bool(bad_x.any()) or bool(bad_y.any())):
        return
    parts = []
    if bool(bad_x.any()):
        if x.ndim >= 3:  # count per entry of the first (layer) dimension
            counts = bad_x.reshape(x.shape[0], -1).sum(-1).tolist()
            per = x[0].numel()
            ids = list(layer_ids) if isinstance(layer_ids, Sequence) else list(range(x.shape[0]))
            parts += [f"layer {ids[j]}: {c} of {per} values" for j, c in enumerate(counts) if c > 0]
        else:
            if isinstance(layer_ids, Sequence):
                layer_ids = list(layer_ids)[0] if len(layer_ids) == 1 else None
            name = "x" if layer_ids is None else f"layer {layer_ids}"
            parts.append(f"{name}: {int(bad_x.sum())} of {x.numel()} values")
    if bool(bad_y.any()):
        parts.append(f"targets y: {int(bad_y.sum())} of {y.numel()} values")
    raise ValueError("non-finite values (inf/NaN) in the ridge statistics' input: " + ", ".join(parts)
                     + " (a float16 activation cache overflows above 65504)")


class RidgeStats:
    """Float64 sufficient statistics for ridge regression, accumulated in chunks.

    Holds, for rows shifted by a fixed vector ``c`` (the mean of the first chunk):
    ``n``, ``sum(xs)``, ``sum(ys)``, ``xs^T xs``, ``xs^T ys``, ``ys^T ys``. Shifting changes
    no centred moment and keeps cancellation small.

    >>> x = torch.randn(200, 5, dtype=torch.float64); y = x @ torch.ones(5, 2, dtype=torch.float64) + 3.0
    >>> st = RidgeStats(); st.update(x[:120], y[:120]); st.update(x[120:], y[120:])
    >>> w, b = st.solve(0.0)
    >>> bool(torch.allclose(w, torch.ones(5, 2, dtype=torch.float64))), round(b[0].item(), 6)
    (True, 3.0)
    """

    def __init__(
        self,
        compute_dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
        self.compute_dtype = compute_dtype
        self.device = device
        self.n = 0
        self.shift_x: Tensor | None = None  # (..., d)
        self.shift_y: Tensor | None = None  # (..., k)
        self.sum_x: Tensor | None = None  # (..., d)
        self.sum_y: Tensor | None = None  # (..., k)
        self.xtx: Tensor | None = None  # (..., d, d)
        self.xty: Tensor | None = None  # (..., d, k)
        self.yty: Tensor | None = None  # (..., k, k)

    # ------------------------------------------------------------------ accumulation
    def update(self, x: Any, y: Any, mask: Any = None, layer_ids: int | Sequence[int] | None = None) -> None:
        """Add rows. ``x (..., n, d)``, ``y (n, k) | (..., n, k) | (n,)``, ``mask (n,)`` bool.

        Rows with inf or NaN (after masking) raise ValueError with their count: they would
        make every moment, and so every weight, non-finite. ``layer_ids`` names the layers in
        that message: an int for a 2-D ``x``, or one id per entry of x's first dimension.
        """
        x = _to_tensor(x, self.compute_dtype, self.device)
        y = _to_tensor(y, self.compute_dtype, self.device)
        if y.ndim == 1:
            y = y[:, None]  # (n, 1)
        if x.ndim < 2:
            raise ValueError(f"x must be (..., n, d), got shape {tuple(x.shape)}")
        n = x.shape[-2]
        if y.shape[-2] != n:
            raise ValueError(
                f"x has {n} rows but y has {y.shape[-2]} (x {tuple(x.shape)}, y {tuple(y.shape)})"
            )
        if mask is not None:
            mask = _to_tensor(mask, torch.bool, x.device)
            if mask.shape != (n,):
                raise ValueError(f"mask must be a bool vector of length {n}, got shape {tuple(mask.shape)}")
            x, y = x[..., mask, :], y[..., mask, :]  # (..., m, d), (..., m, k)
            n = x.shape[-2]
        if n == 0:
            return
        if self.xtx is not None and (x.shape[-1] != self.xtx.shape[-1] or y.shape[-1] != self.yty.shape[-1]):
            raise ValueError(
                f"chunk has d={x.shape[-1]}, k={y.shape[-1]} but earlier chunks had "
                f"d={self.xtx.shape[-1]}, k={self.yty.shape[-1]}"
            )
        shift_x, shift_y = self.shift_x, self.shift_y  # stored only once the chunk is known to be finite
        if shift_x is None:
            # stored as rounded to the compute dtype: exactly the value subtracted below
            shift_x = x.mean(-2, dtype=torch.float64).to(x.dtype).double()  # (..., d)
            shift_y = y.mean(-2, dtype=torch.float64).to(y.dtype).double()  # (..., k)
        d = x.shape[-1]
        xs_shift = shift_x.to(x.dtype).unsqueeze(-2)  # (..., 1, d)
        ys_shift = shift_y.to(y.dtype).unsqueeze(-2)  # (..., 1, k)
        if y.shape[:-2] == x.shape[:-2]:  # one product for xs^T xs, xs^T ys, ys^T ys
            z = torch.empty(*x.shape[:-1], d + y.shape[-1], dtype=x.dtype, device=x.device)  # (..., n, d + k)
            torch.sub(x, xs_shift, out=z[..., :d])
            torch.sub(y, ys_shift, out=z[..., d:])
            g = z.mT @ z  # (..., d + k, d + k)
            sz = z.sum(-2)  # (..., d + k) in the compute dtype (one chunk), accumulated in float64
            sx, sy = sz[..., :d], sz[..., d:]
            xtx, xty, yty = g[..., :d, :d], g[..., :d, d:], g[..., d:, d:]
        else:  # a y shared by a stack of layers: its moments once
            xs, ys = x - xs_shift, y - ys_shift  # (..., n, d), (n, k)
            sx, sy = xs.sum(-2), ys.sum(-2)
            xtx, xty, yty = xs.mT @ xs, xs.mT @ ys, ys.mT @ ys
        diag_x, diag_y = torch.diagonal(xtx, dim1=-2, dim2=-1), torch.diagonal(yty, dim1=-2, dim2=-1)
        if not all(bool(torch.isfinite(t).all()) for t in (sx, sy, diag_x, diag_y)):
            _check_finite(x, y, layer_ids)  # any inf/NaN input makes its column's sum or square sum non-finite
        sx, sy, xtx, xty, yty = sx.double(), sy.double(), xtx.double(), xty.double(), yty.double()
        self.shift_x, self.shift_y = shift_x, shift_y
        if self.xtx is None:
            self.sum_x, self.sum_y, self.xtx, self.xty, self.yty = sx, sy, xtx, xty, yty
        else:
            self.sum_x = self.sum_x + sx
            self.sum_y = self.sum_y + sy
            self.xtx = self.xtx + xtx
            self.xty = self.xty + xty
            self.yty = self.yty + yty
        self.n += n

    def merge(self, other: RidgeStats) -> RidgeStats:
        """Pool two accumulators (e.g. folds or DDP ranks) into a new one; inputs unchanged."""
        if self.n == 0:
            return other._copy()
        if other.n == 0:
            return self._copy()
        n = self.n + other.n
        (ma_x, ma_y), (mb_x, mb_y) = self.means(), other.means()
        (cxx_a, cxy_a, cyy_a), (cxx_b, cxy_b, cyy_b) = self.centered(), other.centered()
        f = self.n * other.n / n
        dx, dy = ma_x - mb_x, ma_y - mb_y  # (..., d), (..., k)
        out = RidgeStats(self.compute_dtype, self.device)
        out.n = n
        out.shift_x = (self.n * ma_x + other.n * mb_x) / n  # new shift = pooled mean
        out.shift_y = (self.n * ma_y + other.n * mb_y) / n
        out.sum_x = torch.zeros_like(out.shift_x)
        out.sum_y = torch.zeros_like(out.shift_y)
        out.xtx = cxx_a + cxx_b + f * dx.unsqueeze(-1) * dx.unsqueeze(-2)  # (..., d, d)
        out.xty = cxy_a + cxy_b + f * dx.unsqueeze(-1) * dy.unsqueeze(-2)  # (..., d, k)
        out.yty = cyy_a + cyy_b + f * dy.unsqueeze(-1) * dy.unsqueeze(-2)  # (..., k, k)
        return out

    def _copy(self) -> RidgeStats:
        out = RidgeStats(self.compute_dtype, self.device)
        out.__dict__.update(
            {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        )
        return out

    # ------------------------------------------------------------------ moments
    def _check(self) -> None:
        if self.n == 0 or self.xtx is None:
            raise ValueError("RidgeStats is empty: call update() with at least one row first")

    def means(self) -> tuple[Tensor, Tensor]:
        """``(mean_x (..., d), mean_y (..., k))``."""
        self._check()
        return self.shift_x + self.sum_x / self.n, self.shift_y + self.sum_y / self.n

    def centered(self) -> tuple[Tensor, Tensor, Tensor]:
        """Centred scatter matrices ``(Cxx (..., d, d), Cxy (..., d, k), Cyy (..., k, k))`` (sums, not / n)."""
        self._check()
        mx, my = self.sum_x / self.n, self.sum_y / self.n
        cxx = self.xtx - self.n * mx.unsqueeze(-1) * mx.unsqueeze(-2)  # (..., d, d)
        cxy = self.xty - self.n * mx.unsqueeze(-1) * my.unsqueeze(-2)  # (..., d, k)
        cyy = self.yty - self.n * my.unsqueeze(-1) * my.unsqueeze(-2)  # (..., k, k)
        return cxx, cxy, cyy

    def feature_scale(self) -> Tensor:
        """Population standard deviation of each feature ``(..., d)``; 1 for constant features
        (as StandardScaler: a std below 10 eps, relative to the mean's size, counts as 0)."""
        cxx, _, _ = self.centered()
        std = (torch.diagonal(cxx, dim1=-2, dim2=-1).clamp_min(0) / self.n).sqrt()  # (..., d)
        bound = 10 * torch.finfo(torch.float64).eps * self.means()[0].abs().clamp_min(1.0)
        return torch.where(std < bound, torch.ones_like(std), std)

    # ------------------------------------------------------------------ solve
    def solve(
        self,
        alpha: float | Sequence[float] | Tensor = 0.0,
        standardize: bool = False,
        rcond: float = _RCOND,
    ) -> tuple[Tensor, Tensor]:
        """Ridge weights ``W (..., d, k)`` and intercept ``b (..., k)`` (float64).

        alpha: a scalar, or one value per target ``(k,)`` (broadcastable to ``(..., k)``).
            Penalises ``alpha * ||W||^2`` on centred data; the intercept is not penalised.
            With ``standardize=True`` the penalty applies to the weights of z-scored
            features (scikit-learn ``StandardScaler`` + ``Ridge``) and ``W`` is returned in
            the original feature units.
        rcond: relative eigenvalue cut-off (``s < rcond * max(s)`` is treated as 0) of
            the pseudo-inverse, and the conditioning below which Cholesky is not trusted.

        Solver: a scalar alpha uses a Cholesky solve of ``Cxx + alpha I``. If that matrix
        is not positive definite or is ill-conditioned (e.g. alpha = 0 with more features
        than rows or a constant feature), a `RidgeWarning` is emitted and the
        minimum-norm solution ``W = pinv(Cxx + alpha I) Cxy`` is returned from an
        eigendecomposition: at alpha = 0 that is the least-squares solution
        ``LinearRegression`` (LAPACK ``gelsd``) returns. A per-target alpha always uses one
        eigendecomposition ``Cxx = V diag(s) V^T`` and
        ``W[:, j] = V diag(1 / (s + alpha_j)) V^T Cxy[:, j]``.
        """
        cxx, cxy, _ = self.centered()
        mean_x, mean_y = self.means()
        scale = self.feature_scale() if standardize else None
        if scale is not None:
            cxx = cxx / (scale.unsqueeze(-1) * scale.unsqueeze(-2))  # (..., d, d) z-space
            cxy = cxy / scale.unsqueeze(-1)  # (..., d, k)
        alpha_t = torch.as_tensor(alpha, dtype=torch.float64, device=cxx.device)
        if (alpha_t < 0).any():
            raise ValueError(f"alpha must be >= 0, got {alpha}")

        if alpha_t.ndim == 0:
            w = _cholesky_solve(cxx, cxy, float(alpha_t), rcond)
        else:
            s, v = torch.linalg.eigh(cxx)  # (..., d), (..., d, d)
            w = _eig_solve(s, v, v.mT @ cxy, alpha_t.unsqueeze(-2), rcond)  # (..., d, k)
        if scale is not None:
            w = w / scale.unsqueeze(-1)  # back to original feature units
        b = mean_y - (mean_x.unsqueeze(-2) @ w).squeeze(-2)  # (..., k)
        return w, b


def _eig_solve(s: Tensor, v: Tensor, p: Tensor, alpha: Tensor, rcond: float) -> Tensor:
    """``V diag(1/(s+alpha)) P`` with eigenvalues below ``rcond * max(s)`` dropped (pseudo-inverse).

    s (..., d), v (..., d, d), p = V^T Cxy (..., d, k), alpha broadcastable to (..., 1, k).
    """
    tol = rcond * s.amax(-1, keepdim=True).clamp_min(0)  # (..., 1)
    denom = s.unsqueeze(-1) + alpha  # (..., d, k)
    keep = denom > tol.unsqueeze(-1)
    inv = torch.where(keep, 1.0 / torch.where(keep, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    return v @ (inv * p)  # (..., d, k)


def _cholesky_solve(cxx: Tensor, cxy: Tensor, alpha: float, rcond: float) -> Tensor:
    d = cxx.shape[-1]
    a = cxx + alpha * torch.eye(d, dtype=cxx.dtype, device=cxx.device)  # (..., d, d)
    chol, info = torch.linalg.cholesky_ex(a)
    if not bool((info == 0).all()):
        ok = False
    else:
        # Cholesky succeeds on numerically singular matrices; diag(L)^2 bounds the spread of
        # the eigenvalues, so a tiny ratio means the solve would amplify rounding noise.
        diag2 = torch.diagonal(chol, dim1=-2, dim2=-1) ** 2  # (..., d)
        ok = bool((diag2.amin(-1) > rcond * diag2.amax(-1)).all())
    if ok:
        return torch.cholesky_solve(cxy, chol)  # (..., d, k)
    warnings.warn(
        f"X^T X + alpha I (alpha={alpha}) is singular or ill-conditioned; "
        "returning the minimum-norm (pseudo-inverse) solution",
        RidgeWarning,
        stacklevel=3,
    )
    s, v = torch.linalg.eigh(cxx)  # (..., d), (..., d, d)
    return _eig_solve(s, v, v.mT @ cxy, torch.tensor(alpha, dtype=cxx.dtype), rcond)


# ---------------------------------------------------------------------- scores from moments
def _val_moments(val: RidgeStats, train_mean_x: Tensor, train_mean_y: Tensor):
    """Validation moments about the validation means, plus mean offsets w.r.t. training means."""
    cxx, cxy, cyy = val.centered()
    mx, my = val.means()
    return cxx, cxy, torch.diagonal(cyy, dim1=-2, dim2=-1), mx - train_mean_x, my - train_mean_y, val.n


def _scores(quad: Tensor, cross: Tensor, syy: Tensor, resid_mean: Tensor, n: int, metric: str) -> Tensor:
    """Per-target metric from ``quad = w^T Cxx w``, ``cross = w^T Cxy``, ``syy = Cyy_jj`` (centred sums).

    pred - y = (x - mx) w - (y - my) + resid_mean on the validation rows, so
    SSE = quad - 2 cross + syy + n resid_mean^2 and r = cross / sqrt(quad syy).
    """
    if metric == "r":
        den = (quad * syy).sqrt()
        return torch.where(den > 0, cross / torch.where(den > 0, den, torch.ones_like(den)), torch.nan)
    sse = (quad - 2 * cross + syy + n * resid_mean**2).clamp_min(0)
    if metric == "mse":
        return sse / n
    # r2: scikit-learn's conventions for a constant target (force_finite=True)
    r2 = 1 - sse / torch.where(syy > 0, syy, torch.ones_like(syy))
    return torch.where(syy > 0, r2, torch.where(sse == 0, torch.ones_like(sse), torch.zeros_like(sse)))


def moment_scores(val: RidgeStats, w: Tensor, b: Tensor, metric: str = "r") -> Tensor:
    """Score ``pred = x @ w + b`` on the rows summarised by `val`, without forming predictions.

    w (..., d, k), b (..., k) -> per-target ``(..., k)``: Pearson r (``"r"``), R^2 as
    ``sklearn.metrics.r2_score(multioutput="raw_values")`` (``"r2"``) or MSE (``"mse"``).
    With centred validation moments: cov(pred_j, y_j) ~ w_j^T Cxy[:, j],
    var(pred_j) ~ w_j^T Cxx w_j, var(y_j) ~ Cyy[j, j].
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    cxx, cxy, cyy = val.centered()
    syy, n = torch.diagonal(cyy, dim1=-2, dim2=-1), val.n  # (..., k)
    mx, my = val.means()
    w = w.to(torch.float64)
    quad = ((cxx @ w) * w).sum(-2)  # (..., k)
    cross = (cxy * w).sum(-2)  # (..., k)
    resid_mean = (mx.unsqueeze(-2) @ w).squeeze(-2) + b.to(torch.float64) - my  # (..., k)
    return _scores(quad, cross, syy, resid_mean, n, metric)


def select_alpha(
    train_stats: RidgeStats,
    val_stats: RidgeStats,
    alphas: Sequence[float] | Tensor,
    metric: str = "r",
    per_target: bool = True,
    standardize: bool = False,
    rcond: float = _RCOND,
) -> tuple[Tensor, Tensor]:
    """Pick the ridge penalty on validation moments: ``(best_alpha, scores)``.

    scores: ``(..., A, k)`` validation metric of every alpha (``A = len(alphas)``) for every
    target (Pearson r, R^2 or MSE; see `moment_scores`). best_alpha: ``(..., k)`` if
    `per_target` (each target its own alpha) else ``(...,)`` (the alpha with the best mean
    score over targets). Higher is better for r and r2, lower for mse; ties go to the first
    (list alphas in the order you prefer, e.g. largest first).

    One eigendecomposition of the training ``Cxx = V diag(s) V^T`` per problem serves all
    alphas: ``G(alpha) = diag(1/(s+alpha)) V^T Cxy``, ``W(alpha) = V G``; the validation
    quadratic forms are taken in the eigenbasis (``Q = V^T Cxx_val V``).
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    alphas_t = torch.as_tensor(alphas, dtype=torch.float64).reshape(-1)  # (A,)
    if alphas_t.numel() == 0 or (alphas_t < 0).any():
        raise ValueError(f"alphas must be a non-empty list of values >= 0, got {alphas}")
    cxx, cxy, _ = train_stats.centered()
    tmx, tmy = train_stats.means()
    vxx, vxy, syy, dmx, dmy, n_val = _val_moments(val_stats, tmx, tmy)
    if vxx.shape[-1] != cxx.shape[-1] or vxy.shape[-1] != cxy.shape[-1]:
        raise ValueError(
            f"train (d={cxx.shape[-1]}, k={cxy.shape[-1]}) and validation "
            f"(d={vxx.shape[-1]}, k={vxy.shape[-1]}) statistics do not match"
        )
    if standardize:
        scale = train_stats.feature_scale()  # (..., d) from TRAINING data only
        outer = scale.unsqueeze(-1) * scale.unsqueeze(-2)  # (..., d, d)
        cxx, vxx = cxx / outer, vxx / outer
        cxy, vxy = cxy / scale.unsqueeze(-1), vxy / scale.unsqueeze(-1)
        dmx = dmx / scale
    s, v = torch.linalg.eigh(cxx)  # (..., d), (..., d, d)
    p = v.mT @ cxy  # (..., d, k)
    q = v.mT @ vxx @ v  # (..., d, d)
    pv = v.mT @ vxy  # (..., d, k)
    dmx_e = (dmx.unsqueeze(-2) @ v).squeeze(-2)  # (..., d)

    tol = rcond * s.amax(-1, keepdim=True).clamp_min(0)  # (..., 1)
    denom = s.unsqueeze(-2) + alphas_t[:, None]  # (..., A, d)
    keep = denom > tol.unsqueeze(-1)
    inv = torch.where(keep, 1.0 / torch.where(keep, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    g = inv.unsqueeze(-1) * p.unsqueeze(-3)  # (..., A, d, k): W(alpha) = V g
    quad = ((q.unsqueeze(-3) @ g) * g).sum(-2)  # (..., A, k)
    cross = (pv.unsqueeze(-3) * g).sum(-2)  # (..., A, k)
    # val residual mean: mx_v W + b - my_v with b = my_t - mx_t W
    resid_mean = (dmx_e.unsqueeze(-2).unsqueeze(-2) @ g).squeeze(-2) - dmy.unsqueeze(-2)  # (..., A, k)
    scores = _scores(quad, cross, syy.unsqueeze(-2), resid_mean, n_val, metric)  # (..., A, k)

    sign = -1.0 if metric == "mse" else 1.0
    ranked = torch.nan_to_num(sign * scores, nan=-torch.inf)
    if per_target:
        best = alphas_t[ranked.argmax(-2)]  # (..., k)
    else:
        best = alphas_t[ranked.mean(-1).argmax(-1)]  # (...,)
    return best, scores


class AlphaAccuracy:
    """Streamed validation accuracy of a ridge classifier for every penalty (see `select_alpha_accuracy`).

    ``AlphaAccuracy(train_stats, alphas, standardize)`` does the one eigendecomposition;
    ``update(x_val_chunk (c, d), y_chunk (c,))`` adds validation rows (any chunking gives the
    same counts; the squared errors are float64 sums); ``result()`` gives
    ``(best_alpha (), accuracy (A,))``.
    """

    def __init__(self, train_stats: RidgeStats, alphas: Sequence[float] | Tensor, standardize: bool = False,
                 rcond: float = _RCOND) -> None:  # fmt: skip
        alphas_t = torch.as_tensor(alphas, dtype=torch.float64).reshape(-1)  # (A,)
        if alphas_t.numel() == 0 or (alphas_t < 0).any():
            raise ValueError(f"alphas must be a non-empty list of values >= 0, got {alphas}")
        cxx, cxy, _ = train_stats.centered()
        if cxx.ndim != 2:
            raise ValueError(f"select_alpha_accuracy takes one problem (no leading dims), got Cxx {tuple(cxx.shape)}")
        self.alphas = alphas_t
        self.mean_x, self.mean_y = train_stats.means()  # (d,), (C,)
        self.scale = train_stats.feature_scale() if standardize else torch.ones_like(self.mean_x)  # (d,)
        cxx = cxx / (self.scale.unsqueeze(-1) * self.scale.unsqueeze(-2))  # (d, d) z-space
        cxy = cxy / self.scale.unsqueeze(-1)  # (d, C)
        s, self.v = torch.linalg.eigh(cxx)  # (d,), (d, d)
        p = self.v.mT @ cxy  # (d, C)
        tol = rcond * s.amax().clamp_min(0)
        denom = s.unsqueeze(0) + alphas_t[:, None]  # (A, d)
        keep = denom > tol
        inv = torch.where(keep, 1.0 / torch.where(keep, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        self.g = inv.unsqueeze(-1) * p.unsqueeze(0)  # (A, d, C): W(alpha) = V g / scale
        self.num_classes = p.shape[-1]
        self.correct = torch.zeros(len(alphas_t), dtype=torch.int64)
        self.sse = torch.zeros(len(alphas_t), dtype=torch.float64)
        self.n = 0

    def update(self, x_val: Any, y_val: Any, first_row: int = 0) -> None:
        """Add validation rows ``x_val (c, d)`` with class ids ``y_val (c,)`` (first_row: for error messages)."""
        xc = _to_tensor(x_val, torch.float64)  # (c, d)
        yc = torch.as_tensor(np.asarray(y_val)).long().reshape(-1)  # (c,)
        if xc.ndim != 2 or xc.shape[0] != len(yc) or xc.shape[1] != len(self.mean_x):
            raise ValueError(f"x_val must be (m={len(yc)}, d={len(self.mean_x)}), got {tuple(xc.shape)}")
        if not bool(torch.isfinite(xc).all()):
            raise ValueError(f"non-finite values (inf/NaN) in x_val: {int((~torch.isfinite(xc)).sum())} in rows "
                             f"{first_row}..")  # fmt: skip
        u = ((xc - self.mean_x) / self.scale) @ self.v  # (c, d) in the eigenbasis
        scores = u.unsqueeze(0) @ self.g + self.mean_y  # (A, c, C)
        self.correct += (scores.argmax(-1) == yc).sum(-1)
        onehot = torch.nn.functional.one_hot(yc, self.num_classes).double()  # (c, C)
        self.sse += (scores - onehot).square().sum((-2, -1))
        self.n += len(yc)

    def result(self) -> tuple[Tensor, Tensor]:
        if self.n == 0:
            raise ValueError("no validation rows: call update() first")
        mse = self.sse / (self.n * self.num_classes)  # (A,)
        best = max(range(len(self.alphas)), key=lambda a: (int(self.correct[a]), -float(mse[a]), -a))
        return self.alphas[best], self.correct.double() / self.n


def select_alpha_accuracy(
    train_stats: RidgeStats,
    x_val: Any,
    y_val: Any,
    alphas: Sequence[float] | Tensor,
    standardize: bool = False,
    rcond: float = _RCOND,
    chunk: int = 16384,
) -> tuple[Tensor, Tensor]:
    """One penalty for a ridge classifier, by validation accuracy: ``(best_alpha (), accuracy (A,))``.

    `train_stats` holds one-hot targets ``(n, C)`` of one problem (no leading dims); the
    prediction is ``argmax(x @ W(alpha) + b)`` (as scikit-learn's ``RidgeClassifier``,
    whose +-1 targets give the same argmax). x_val ``(m, d)`` rows, y_val ``(m,)`` class ids.
    The best alpha has the highest accuracy; ties go to the lower validation MSE of the
    scores against the one-hot targets (mean over classes), then to the first listed.

    One eigendecomposition of the (standardised) training ``Cxx = V diag(s) V^T`` serves all
    alphas: validation rows are projected once, ``u = ((x - mean_x) / scale) V``, and the
    scores of alpha are ``u diag(1/(s+alpha)) V^T Cxy + mean_y``. Streamed validation
    data: `AlphaAccuracy` (this function feeds it ``chunk`` rows at a time).
    """
    acc = AlphaAccuracy(train_stats, alphas, standardize=standardize, rcond=rcond)
    y_val = torch.as_tensor(np.asarray(y_val)).long().reshape(-1)  # (m,)
    x_t = x_val if isinstance(x_val, Tensor) else torch.from_numpy(np.asarray(x_val))
    if x_t.ndim != 2 or x_t.shape[0] != len(y_val) or x_t.shape[1] != len(acc.mean_x):
        raise ValueError(f"x_val must be (m={len(y_val)}, d={len(acc.mean_x)}), got {tuple(x_t.shape)}")
    for i in range(0, len(y_val), chunk):
        acc.update(x_t[i : i + chunk], y_val[i : i + chunk], first_row=i)
    return acc.result()


# ---------------------------------------------------------------------- explicit metrics
def _as_2d(a: Any) -> tuple[Tensor, bool]:
    t = _to_tensor(a, torch.float64)
    return (t[:, None], True) if t.ndim == 1 else (t, False)  # (n, 1) for vectors


def pearson_r(pred: Any, target: Any) -> Tensor:
    """Pearson correlation per column. pred, target: ``(n, k)`` or ``(n,)`` -> ``(k,)`` or scalar.

    Columns with zero variance give NaN (as scipy.stats.pearsonr).
    """
    p, squeeze = _as_2d(pred)
    t, _ = _as_2d(target)
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    p = p - p.mean(0)  # (n, k)
    t = t - t.mean(0)  # (n, k)
    den = (p.square().sum(0) * t.square().sum(0)).sqrt()  # (k,)
    r = torch.where(den > 0, (p * t).sum(0) / torch.where(den > 0, den, torch.ones_like(den)), torch.nan)
    return r[0] if squeeze else r


def r2_score(target: Any, pred: Any) -> Tensor:
    """Coefficient of determination per column; argument order and constant-target rules as
    ``sklearn.metrics.r2_score(target, pred, multioutput="raw_values")``."""
    t, squeeze = _as_2d(target)
    p, _ = _as_2d(pred)
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    sse = (t - p).square().sum(0)  # (k,)
    sst = (t - t.mean(0)).square().sum(0)  # (k,)
    r2 = torch.where(
        sst > 0, 1 - sse / torch.where(sst > 0, sst, torch.ones_like(sst)), torch.zeros_like(sst)
    )
    r2 = torch.where((sst == 0) & (sse == 0), torch.ones_like(r2), r2)
    return r2[0] if squeeze else r2
