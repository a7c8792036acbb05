"""Deliberately literal reference for src/functional/rsa.py (loops over pairs; tests only)."""

from __future__ import annotations

import math

import numpy as np


def rdm_loop(x, metric: str = "euclidean") -> np.ndarray:
    """Condensed RDM, one pair of items at a time, in pdist order (i < j, row-major)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            u, v = x[i], x[j]
            if metric == "euclidean":
                out.append(math.sqrt(sum((u[k] - v[k]) ** 2 for k in range(len(u)))))
            else:
                if metric == "correlation":
                    u, v = u - u.mean(), v - v.mean()
                dot = sum(u[k] * v[k] for k in range(len(u)))
                out.append(1.0 - dot / (math.sqrt(sum(t * t for t in u)) * math.sqrt(sum(t * t for t in v))))
    return np.array(out)


def kendall_tau_a_loop(a, b) -> float:
    """(concordant - discordant) / (P (P - 1) / 2), every pair of entries visited."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    p = len(a)
    total = 0.0
    for i in range(p):
        for j in range(i + 1, p):
            total += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return total / (p * (p - 1) / 2)


def permute_square(m: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """M'[i, j] = M[perm[i], perm[j]], entry by entry."""
    n = m.shape[0]
    out = np.zeros_like(m)
    for i in range(n):
        for j in range(n):
            out[i, j] = m[perm[i], perm[j]]
    return out


def to_square(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = round((1 + math.sqrt(1 + 8 * len(v))) / 2)
    m = np.zeros((n, n))
    k = 0
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = v[k]
            k += 1
    return m


def to_condensed(m: np.ndarray) -> np.ndarray:
    n = m.shape[0]
    return np.array([m[i, j] for i in range(n) for j in range(i + 1, n)])


def permutation_test_loop(x_rdm, y_rdm, compare, n_perm: int, seed: int) -> tuple[float, float]:
    """Same permutations as the production code: rng.permutation(n) n_perm times, in order."""
    x = np.asarray(x_rdm, dtype=np.float64)
    y = np.asarray(y_rdm, dtype=np.float64)
    xs = x if x.ndim == 2 else to_square(x)
    ys = y if y.ndim == 2 else to_square(y)
    obs = compare(to_condensed(xs), to_condensed(ys))
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(n_perm):
        perm = rng.permutation(xs.shape[0])
        if compare(to_condensed(xs), to_condensed(permute_square(ys, perm))) >= obs - 1e-12:
            count += 1
    return obs, (1 + count) / (1 + n_perm)


def class_permutation_test_loop(x_rdm, class_rdm, labels, compare, n_perm: int, seed: int) -> tuple[float, float]:
    """Class labels permuted: token pair (i, j) takes class_rdm[pi[c_i], pi[c_j]], built entry by
    entry; the same permutations as the production code (rng.permutation(C) n_perm times)."""
    x = np.asarray(x_rdm, dtype=np.float64)
    xs = x if x.ndim == 2 else to_square(x)
    c = np.asarray(class_rdm, dtype=np.float64)
    cs = c if c.ndim == 2 else to_square(c)
    classes = sorted(set(np.asarray(labels).tolist()))
    cls = [classes.index(v) for v in np.asarray(labels).tolist()]
    n = len(cls)

    def reference(pi):
        m = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                m[i, j] = 0.0 if i == j else cs[pi[cls[i]], pi[cls[j]]]
        return to_condensed(m)

    obs = compare(to_condensed(xs), reference(list(range(len(classes)))))
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(n_perm):
        pi = rng.permutation(len(classes))
        if compare(to_condensed(xs), reference(pi)) >= obs - 1e-12:
            count += 1
    return obs, (1 + count) / (1 + n_perm)
