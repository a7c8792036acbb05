"""Canonical correlation analysis (CCA) and its variants SVCCA and PWCCA.

Conventions
-----------
- ``x (n, dx)`` and ``y (n, dy)``: rows are aligned items (frames), columns are
  features. Each view is centred by its column means (train means for held-out data).
- Canonical correlations are the singular values of ``Ux^T Uy`` where ``Ux``, ``Uy`` are
  orthonormal bases of the column spaces of the centred views (thin SVD; singular
  values below ``rtol * max`` count as zero). This handles rank-deficient views (for
  example one-hot labels, whose centred columns sum to zero, or constant features)
  exactly: CCA is then computed on the subspace the view actually spans, and
  ``min(rank_x, rank_y)`` correlations are returned, in decreasing order.
- ``epsilon > 0`` gives regularised CCA: the correlations are the singular values of
  ``(Sxx + ex I)^-1/2 Sxy (Syy + ey I)^-1/2`` with covariances ``S = X^T Y / (n - 1)``;
  it shrinks the correlations of weak directions. What ``ex``, ``ey`` are depends on
  ``epsilon_mode``:

  - ``absolute`` (default): ``ex = ey = epsilon``, in the units of the feature variance
    (so the same number regularises a view with variances around 1e3, as Whisper's outlier
    dimensions, about 1e3 times less than a standardised one);
  - ``relative``: the scaling of the SVCCA reference code (google/svcca
    ``cca_core.get_cca_similarity``): ``Sxx``, ``Syy`` are divided by ``max|Sxx|``,
    ``max|Syy|`` (and ``Sxy`` by the square root of their product), neurons whose scaled
    variance is below ``epsilon`` are removed (``remove_small``), then ``epsilon I`` is
    added. That is ``ex = epsilon * max|Sxx|`` (the largest feature variance; by
    Cauchy-Schwarz the largest entry of a covariance is on its diagonal) with the
    features of variance below ``ex`` left out, and the same for ``y``. The canonical
    correlations do not depend on the overall scale, so this equals the reference's values.

  With ``epsilon = 0`` both modes are plain CCA.
- With ``epsilon = 0``, and ``n <= rank_x + rank_y``, CCA overfits (correlations reach 1
  trivially): use held-out data (:func:`cca_fit` / :func:`cca_transform_corr`) or SVCCA.
- Errors: fewer than 2 items, mismatched rows, or a view with zero variance
  (rank 0) raise ``ValueError``.
- Results are float64 torch tensors; inputs may be torch tensors or numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["EPSILON_MODES", "CCAProjection", "Whitened", "cca", "cca_fit", "cca_fit_whitened", "cca_transform_corr",
           "pwcca", "pwcca_weights", "svcca", "whiten"]

EPSILON_MODES = ("absolute", "relative")


def _to_tensor(a: Any) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(a)).to(torch.float64)


def _pair(x: Any, y: Any) -> tuple[Tensor, Tensor]:
    x, y = _to_tensor(x), _to_tensor(y)
    if x.ndim == 1:
        x = x[:, None]  # (n, 1)
    if y.ndim == 1:
        y = y[:, None]  # (n, 1)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"x and y must be 2-D (n, d), got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows (items), got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"CCA needs at least 2 items (rows), got {x.shape[0]}")
    return x, y


def _whiten(
    xc: Tensor, epsilon: float, rtol: float | None, name: str, epsilon_mode: str = "absolute"
) -> tuple[Tensor, Tensor]:
    """Centred view (n, d) -> (A (n, r), W (d, r)) with A = xc @ W.

    A has orthonormal columns when epsilon == 0 (A = U of the thin SVD), and is the
    ridge-shrunk whitened view U diag(s / sqrt(s^2 + (n - 1) eps)) otherwise. With
    ``epsilon_mode="relative"``, eps = epsilon * (largest feature variance) and features of
    variance below eps get zero weight (see the module docstring).
    """
    n, d = xc.shape
    if epsilon_mode == "relative" and epsilon > 0:
        var = (xc * xc).sum(0) / (n - 1)  # (d,) diagonal of Sxx; max|Sxx| is on it
        vmax = float(var.max()) if var.numel() else 0.0
        if not vmax > 0:
            raise ValueError(f"{name} has constant features (zero variance): CCA is undefined")
        epsilon = epsilon * vmax
        cols = var >= epsilon  # (d,) remove_small of the reference code
        a, w = _whiten(xc[:, cols], epsilon, rtol, name)  # (n, r), (d_kept, r)
        w_full = torch.zeros(d, w.shape[1], dtype=w.dtype)  # (d, r) zero rows for removed features
        w_full[cols] = w
        return a, w_full
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)  # (n, k), (k,), (k, d)
    tol = (rtol if rtol is not None else max(n, d) * torch.finfo(torch.float64).eps) * (
        s[0] if s.numel() else 0
    )
    keep = s > tol
    r = int(keep.sum())
    if r == 0:
        raise ValueError(f"{name} has constant features (zero variance): CCA is undefined")
    u, s, v = u[:, :r], s[:r], vh[:r].T  # (n, r), (r,), (d, r)
    scale = 1.0 / s if epsilon == 0 else 1.0 / torch.sqrt(s * s + (n - 1) * epsilon)  # (r,)
    w = v * scale[None, :]  # (d, r)
    a = u * (s * scale)[None, :]  # (n, r)
    return a, w


@dataclass(frozen=True)
class CCAProjection:
    """CCA fitted on training data: ``(x - mean_x) @ wx`` and ``(y - mean_y) @ wy`` are the
    canonical variates (columns in decreasing order of ``correlations``)."""

    mean_x: Tensor  # (dx,)
    mean_y: Tensor  # (dy,)
    wx: Tensor  # (dx, k)
    wy: Tensor  # (dy, k)
    correlations: Tensor  # (k,) on the training data


@dataclass(frozen=True)
class Whitened:
    """One view's half of a CCA fit: its column means, the whitened centred view ``a (n, r)`` and the weights
    ``w (d, r)`` with ``a = (x - mean) @ w`` (:func:`whiten`). A view compared with several others (a layer with
    its two neighbours, with the shuffled null) is whitened once: :func:`cca_fit_whitened`."""

    mean: Tensor  # (d,)
    a: Tensor  # (n, r)
    w: Tensor  # (d, r)


def _check_options(epsilon: float, epsilon_mode: str) -> None:
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if epsilon_mode not in EPSILON_MODES:
        raise ValueError(f"epsilon_mode must be one of {EPSILON_MODES}, got {epsilon_mode!r}")


def whiten(x: Any, epsilon: float = 0.0, rtol: float | None = None, epsilon_mode: str = "absolute",
           name: str = "x") -> Whitened:  # fmt: skip
    """:class:`Whitened` of one view ``x (n, d)`` (float64), exactly as :func:`cca_fit` whitens each view."""
    _check_options(epsilon, epsilon_mode)
    x = _to_tensor(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be (n >= 2, d), got shape {tuple(x.shape)}")
    m = x.mean(0)
    a, w = _whiten(x - m, epsilon, rtol, name, epsilon_mode)  # (n, r), (d, r)
    return Whitened(m, a, w)


def cca_fit_whitened(wx: Whitened, wy: Whitened) -> CCAProjection:
    """:func:`cca_fit` from the two views' :func:`whiten` results (the same numbers, the whitening reused)."""
    if wx.a.shape[0] != wy.a.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {wx.a.shape[0]} and {wy.a.shape[0]}")
    p, rho, qh = torch.linalg.svd(wx.a.T @ wy.a, full_matrices=False)  # (rx, k), (k,), (k, ry)
    return CCAProjection(wx.mean, wy.mean, wx.w @ p, wy.w @ qh.T, rho.clamp(max=1.0))


def cca_fit(
    x: Any, y: Any, epsilon: float = 0.0, rtol: float | None = None, epsilon_mode: str = "absolute"
) -> CCAProjection:
    """Fit CCA on ``x (n, dx)``, ``y (n, dy)``; see the module docstring for ``epsilon``,
    ``epsilon_mode`` (``absolute`` | ``relative``) and ``rtol``."""
    _check_options(epsilon, epsilon_mode)
    x, y = _pair(x, y)
    mx, my = x.mean(0), y.mean(0)
    ax, wx = _whiten(x - mx, epsilon, rtol, "x", epsilon_mode)  # (n, rx), (dx, rx)
    ay, wy = _whiten(y - my, epsilon, rtol, "y", epsilon_mode)  # (n, ry), (dy, ry)
    return cca_fit_whitened(Whitened(mx, ax, wx), Whitened(my, ay, wy))


def cca(
    x: Any, y: Any, epsilon: float = 0.0, rtol: float | None = None, epsilon_mode: str = "absolute"
) -> Tensor:
    """Canonical correlations of ``x (n, dx)`` and ``y (n, dy)``, decreasing, ``(min(rx, ry),)``."""
    return cca_fit(x, y, epsilon, rtol, epsilon_mode).correlations


def cca_transform_corr(proj: CCAProjection, x: Any, y: Any) -> Tensor:
    """Held-out CCA: Pearson correlation of each pair of canonical variates on new data.

    ``x (m, dx)``, ``y (m, dy)`` are projected with the training means and weights of
    ``proj`` (as in Pasad et al., 2021); returns ``(k,)`` correlations in the training
    order (not re-sorted; they may be negative). A variate that is constant on the new
    data raises ``ValueError``.
    """
    x, y = _pair(x, y)
    if x.shape[1] != proj.wx.shape[0] or y.shape[1] != proj.wy.shape[0]:
        raise ValueError(
            f"feature sizes ({x.shape[1]}, {y.shape[1]}) differ from the fitted ones "
            f"({proj.wx.shape[0]}, {proj.wy.shape[0]})"
        )
    hx = (x - proj.mean_x) @ proj.wx  # (m, k)
    hy = (y - proj.mean_y) @ proj.wy  # (m, k)
    hx = hx - hx.mean(0)
    hy = hy - hy.mean(0)
    den = torch.sqrt((hx * hx).sum(0) * (hy * hy).sum(0))  # (k,)
    if bool((den == 0).any()):
        raise ValueError("a canonical variate is constant on the held-out data: correlation undefined")
    return (hx * hy).sum(0) / den


def _svd_reduce(x: Tensor, keep: float, name: str) -> Tensor:
    """Centred x (n, d) -> its top principal components (n, k) (scores U S)."""
    u, s, _ = torch.linalg.svd(x - x.mean(0), full_matrices=False)  # (n, r), (r,), (r, d)
    if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool):
        if keep < 1:
            raise ValueError(f"keep_dims must be >= 1, got {keep}")
        k = min(int(keep), s.numel())
    else:
        if not 0 < keep <= 1:
            raise ValueError(f"keep_dims as a variance fraction must be in (0, 1], got {keep}")
        var = s * s
        if float(var.sum()) == 0:
            raise ValueError(f"{name} has constant features (zero variance): SVCCA is undefined")
        frac = torch.cumsum(var, 0) / var.sum()  # (r,)
        k = int(torch.searchsorted(frac, torch.tensor(keep, dtype=frac.dtype) - 1e-12)) + 1
        k = min(k, s.numel())
    return u[:, :k] * s[:k]  # (n, k)


def svcca(
    x: Any, y: Any, keep_dims: float = 0.99, epsilon: float = 0.0, return_all: bool = False,
    epsilon_mode: str = "absolute",
) -> Tensor:  # fmt: skip
    """SVCCA (Raghu et al., 2017): SVD-reduce each view, then CCA; mean canonical correlation.

    ``keep_dims``: a float in (0, 1] keeps the fewest top singular directions explaining at
    least that fraction of each view's variance; an int keeps that many directions.
    Returns the mean of all ``min(kx, ky)`` canonical correlations of the reduced views
    (0-d tensor), or the correlations themselves with ``return_all=True``.
    """
    x, y = _pair(x, y)
    rho = cca(_svd_reduce(x, keep_dims, "x"), _svd_reduce(y, keep_dims, "y"), epsilon, epsilon_mode=epsilon_mode)
    return rho if return_all else rho.mean()


def pwcca(
    x: Any, y: Any, epsilon: float = 0.0, return_weights: bool = False, epsilon_mode: str = "absolute"
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Projection-weighted CCA (Morcos et al., 2018), weights from ``x``.

    With canonical variates ``h_i`` of ``x`` (orthonormalised) and the centred neurons
    (columns) ``x_j``, ``alpha_i ~ sum_j |<h_i, x_j>|`` normalised to sum to 1, and
    ``PWCCA = sum_i alpha_i rho_i``. Not symmetric: swap the arguments to weight by ``y``.
    (The reference SVCCA code weights by whichever view has fewer neurons and adds the
    neuron means back before orthonormalising; here ``x`` is always the weighting view and
    everything is centred.) With ``return_weights``: ``(pwcca, alpha, rho)``.
    """
    x, y = _pair(x, y)
    proj = cca_fit(x, y, epsilon, epsilon_mode=epsilon_mode)
    alpha = pwcca_weights(proj, x)
    value = (alpha * proj.correlations).sum()
    return (value, alpha, proj.correlations) if return_weights else value


def pwcca_weights(proj: CCAProjection, x: Any) -> Tensor:
    """PWCCA's weights ``alpha (k,)`` of a fitted :class:`CCAProjection` on its weighting view ``x (n, dx)`` (the
    data it was fitted on): see :func:`pwcca`."""
    x = _to_tensor(x)
    xc = x - proj.mean_x  # (n, dx)
    h = xc @ proj.wx  # (n, k) canonical variates of x
    q, _ = torch.linalg.qr(h)  # (n, k) orthonormal basis, column i spans h_1..h_i
    alpha = (q.T @ xc).abs().sum(1)  # (k,)
    return alpha / alpha.sum()
