"""Deliberately literal reference for src/functional/cca.py (tests only).

Canonical correlations as the square roots of the eigenvalues of
``Sxx^-1 Sxy Syy^-1 Syx`` (Hotelling), with ``S = X^T Y / (n - 1)`` of centred data and
``Sxx + eps I`` for regularised CCA. Needs full-column-rank views when ``eps = 0``.
"""

from __future__ import annotations

import numpy as np


def covariances(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.shape[0]
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    return xc.T @ xc / (n - 1), xc.T @ yc / (n - 1), yc.T @ yc / (n - 1)


def canonical_correlations(x, y, epsilon: float = 0.0) -> np.ndarray:
    sxx, sxy, syy = covariances(x, y)
    sxx = sxx + epsilon * np.eye(sxx.shape[0])
    syy = syy + epsilon * np.eye(syy.shape[0])
    m = np.linalg.inv(sxx) @ sxy @ np.linalg.inv(syy) @ sxy.T
    eig = np.sort(np.linalg.eigvals(m).real)[::-1]
    k = min(sxx.shape[0], syy.shape[0])
    return np.sqrt(np.clip(eig[:k], 0.0, None))


def pwcca_loop(x, y) -> float:
    """Morcos et al. (2018): canonical variates of x from the eigenvectors, weights by loops."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    sxx, sxy, syy = covariances(x, y)
    m = np.linalg.inv(sxx) @ sxy @ np.linalg.inv(syy) @ sxy.T
    vals, vecs = np.linalg.eig(m)
    order = np.argsort(vals.real)[::-1]
    k = min(x.shape[1], y.shape[1])
    rho = np.sqrt(np.clip(vals.real[order[:k]], 0.0, None))
    wx = vecs.real[:, order[:k]]  # (dx, k) canonical directions of x
    xc = x - x.mean(axis=0)
    h = xc @ wx  # (n, k)
    q, _ = np.linalg.qr(h)
    alpha = np.zeros(k)
    for i in range(k):
        for j in range(x.shape[1]):
            alpha[i] += abs(float(q[:, i] @ xc[:, j]))
    alpha = alpha / alpha.sum()
    return float(sum(alpha[i] * rho[i] for i in range(k)))


def _positivedef_matrix_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root through the eigendecomposition (as svcca's cca_core)."""
    w, v = np.linalg.eigh(a)
    return v @ np.diag(np.sqrt(np.clip(w, 0.0, None))) @ v.T


def svcca_reference_correlations(x, y, epsilon: float) -> np.ndarray:
    """Canonical correlations the way google/svcca ``cca_core.get_cca_similarity`` computes them.

    Written literally from its description: covariances of the centred views; ``Sxx``,
    ``Syy`` divided by their largest absolute entry and ``Sxy`` by the square root of the
    product; neurons whose (scaled) variance is below ``epsilon`` removed; ``epsilon I``
    added; whitening by the square root of the pseudo-inverse; singular values of
    ``Sxx^-1/2 Sxy Syy^-1/2``. ``x (n, dx)``, ``y (n, dy)``: rows are data points.
    """
    sxx, sxy, syy = covariances(x, y)
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx = sxx / xmax
    syy = syy / ymax
    sxy = sxy / np.sqrt(xmax * ymax)
    x_idx = np.abs(np.diagonal(sxx)) >= epsilon  # remove_small
    y_idx = np.abs(np.diagonal(syy)) >= epsilon
    sxx = sxx[x_idx][:, x_idx]
    syy = syy[y_idx][:, y_idx]
    sxy = sxy[x_idx][:, y_idx]
    sxx = sxx + epsilon * np.eye(sxx.shape[0])
    syy = syy + epsilon * np.eye(syy.shape[0])
    inv_sqrt_xx = _positivedef_matrix_sqrt(np.linalg.pinv(sxx))
    inv_sqrt_yy = _positivedef_matrix_sqrt(np.linalg.pinv(syy))
    arr = inv_sqrt_xx @ sxy @ inv_sqrt_yy
    s = np.linalg.svd(arr, compute_uv=False)
    return s[: min(sxx.shape[0], syy.shape[0])]
