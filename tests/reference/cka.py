"""Deliberately literal reference for src/functional/cka.py: Gram matrices and HSIC as written.

K = X X^T (or an RBF kernel built entry by entry), H = I - 11^T / n,
HSIC = tr(K H L H) / (n - 1)^2, and the unbiased HSIC of Song et al. (2012) with the
diagonals zeroed. numpy float64, n x n everywhere; used only by tests.
"""

from __future__ import annotations

import math

import numpy as np


def linear_gram(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x @ x.T


def rbf_gram(x, threshold: float = 1.0) -> np.ndarray:
    """exp(-d_ij^2 / (2 threshold^2 median(d^2))), median over all n^2 entries (Kornblith et al.)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    d2 = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d2[i, j] = float(np.sum((x[i] - x[j]) ** 2))
    sigma2 = threshold**2 * np.median(d2)
    return np.exp(-d2 / (2.0 * sigma2))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), eq. (5)."""
    n = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return float(term1 + term2 - term3) / (n * (n - 3))


def cka_from_grams(k: np.ndarray, l: np.ndarray, debiased: bool = False) -> float:
    f = hsic_unbiased if debiased else hsic_biased
    return f(k, l) / math.sqrt(f(k, k) * f(l, l))


def linear_cka(x, y, debiased: bool = False) -> float:
    return cka_from_grams(linear_gram(x), linear_gram(y), debiased)


def rbf_cka(x, y, threshold: float = 1.0, debiased: bool = False) -> float:
    return cka_from_grams(rbf_gram(x, threshold), rbf_gram(y, threshold), debiased)
