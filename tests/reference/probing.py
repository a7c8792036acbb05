"""Deliberately literal reference implementations for src/functional/{ridge,probing,mdl}.py.

Slow, loop-based, written from the definitions; used only by tests.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def pearson_r_loop(pred, target) -> np.ndarray:
    """Pearson r of each column, by explicit sums over rows."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.ndim == 1:
        p, t = p[:, None], t[:, None]
    n, k = p.shape
    out = np.empty(k)
    for j in range(k):
        mp = sum(p[i, j] for i in range(n)) / n
        mt = sum(t[i, j] for i in range(n)) / n
        cov = sum((p[i, j] - mp) * (t[i, j] - mt) for i in range(n))
        vp = sum((p[i, j] - mp) ** 2 for i in range(n))
        vt = sum((t[i, j] - mt) ** 2 for i in range(n))
        out[j] = cov / math.sqrt(vp * vt) if vp > 0 and vt > 0 else math.nan
    return out


def explicit_scores(x_val, y_val, w, b) -> dict[str, np.ndarray]:
    """Form the predictions and score them: Pearson r, R^2 and MSE per target."""
    x = np.asarray(x_val, dtype=np.float64)
    y = np.asarray(y_val, dtype=np.float64)
    pred = x @ np.asarray(w, dtype=np.float64) + np.asarray(b, dtype=np.float64)
    r = np.array([np.corrcoef(pred[:, j], y[:, j])[0, 1] for j in range(y.shape[1])])
    sse = ((pred - y) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    return {"r": r, "r2": 1 - sse / sst, "mse": sse / y.shape[0]}


def bootstrap_loop(values, groups, *, target=None, statistic="accuracy", n_boot=1000, alpha=0.05, seed=0):
    """Percentile bootstrap over groups by literal resampling: for every replicate, gather the
    items of the drawn groups (with repetition) and compute the statistic from scratch.

    Resample design (the contract of src.functional.intervals.bootstrap_ci): groups sorted,
    indices ``np.random.default_rng(seed).integers(0, G, size=(n_boot, G))``.
    Returns (estimate, low, high, replicates).
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups)
    names = sorted(set(groups.tolist()))
    members = {g: [i for i in range(len(groups)) if groups[i] == g] for g in names}
    idx = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))

    def stat(rows):
        if statistic in ("accuracy", "mean"):
            return sum(values[i] for i in rows) / len(rows)
        p = values[rows]
        t = np.asarray(target, dtype=np.float64)[rows]
        if p.ndim == 1:
            return np.corrcoef(p, t)[0, 1]
        return np.array([np.corrcoef(p[:, j], t[:, j])[0, 1] for j in range(p.shape[1])])

    estimate = stat(list(range(len(values))))
    reps = []
    for b in range(n_boot):
        rows = []
        for gi in idx[b]:
            rows.extend(members[names[gi]])
        reps.append(stat(rows))
    reps = np.array(reps)
    low = np.quantile(reps, alpha / 2, axis=0)
    high = np.quantile(reps, 1 - alpha / 2, axis=0)
    return estimate, low, high, reps


def online_codelength_loop(x, y, num_classes, fit_fn, fractions_percent) -> float:
    """Online code, example by example: block ends int(fraction * n) as in the authors' code."""
    n = len(y)
    ends = []
    for f in fractions_percent:
        t = int(f / 100 * n)
        if t > 0 and (not ends or t > ends[-1]):
            ends.append(t)
    bits = ends[0] * math.log2(num_classes)
    for start, stop in itertools.pairwise(ends):
        predict = fit_fn(x[:start], y[:start])
        for i in range(start, stop):
            logp = predict(x[i : i + 1])[0]
            bits += -logp[y[i]] / math.log(2)
    return bits
