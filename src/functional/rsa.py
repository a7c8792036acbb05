"""Representational similarity analysis (RSA): RDMs, their comparison, and permutation tests.

Conventions
-----------
- An RDM (representational dissimilarity matrix) of ``n`` items is stored condensed, as
  ``scipy.spatial.distance.pdist`` does: the upper triangle (``i < j``) in row-major
  order, shape ``(n (n - 1) / 2,)``. :func:`square` and :func:`condensed` convert.
- Metrics: ``euclidean`` ``||u - v||``; ``cosine`` ``1 - u.v / (|u| |v|)``;
  ``correlation`` the cosine distance of the row-centred vectors (``1 - Pearson r``).
- Comparisons: ``pearson`` and ``spearman`` (Pearson on average ranks, ties averaged,
  as ``scipy.stats.spearmanr``), and ``kendall_tau_a`` (Kendall's tau-a, no tie
  correction: ``(concordant - discordant) / (P (P - 1) / 2)`` over the ``P`` RDM entries, the
  measure recommended for RDMs with tied predictions by Nili et al. 2014 / rsatoolbox).
- Results are float64; inputs may be torch tensors or numpy arrays.
- Errors: fewer than 3 items (an RDM needs 3 entries to be compared) raises ``ValueError``;
  a zero-norm item under cosine/correlation, or a constant RDM under pearson/spearman,
  raises ``ValueError`` (never NaN). Kendall's tau-a of a constant RDM is 0 (no concordant
  or discordant pair), which is returned.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

__all__ = [
    "class_permutation_test",
    "compare_rdms",
    "group_permutations",
    "condensed",
    "permutation_test",
    "pooled_class_means",
    "rdm",
    "square",
]

_METRICS = ("euclidean", "cosine", "correlation")
_METHODS = ("spearman", "kendall_tau_a", "pearson")


def _to_tensor(a: Any) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(a)).to(torch.float64)


def _num_items(p: int) -> int:
    """n such that n (n - 1) / 2 == p, or ValueError."""
    n = round((1 + math.sqrt(1 + 8 * p)) / 2)
    if n * (n - 1) // 2 != p:
        raise ValueError(f"a condensed RDM has n (n - 1) / 2 entries; {p} is not such a number")
    return n


def rdm(x: Any, metric: str = "euclidean") -> Tensor:
    """Condensed RDM of the rows of ``x (n, d)`` -> ``(n (n - 1) / 2,)`` float64 (matches pdist)."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    x = _to_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, d), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"an RDM needs at least 2 items, got {n}")
    iu, ju = torch.triu_indices(n, n, offset=1)  # (P,), (P,) row-major upper triangle, as pdist
    if metric == "euclidean":
        d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # (n, n) exact differences
        return d[iu, ju]
    if metric == "correlation":
        x = x - x.mean(1, keepdim=True)  # (n, d) row-centred
    norms = torch.linalg.vector_norm(x, dim=1)  # (n,)
    if bool((norms == 0).any()):
        bad = int(torch.nonzero(norms == 0)[0])
        how = " after centring (constant features)" if metric == "correlation" else ""
        raise ValueError(f"{metric} distance is undefined for item {bad}: zero norm{how}")
    u = x / norms[:, None]  # (n, d) unit rows
    return 1.0 - (u @ u.T)[iu, ju]


def square(v: Any) -> Tensor:
    """Condensed ``(P,)`` -> square symmetric ``(n, n)`` with a zero diagonal."""
    v = _to_tensor(v)
    n = _num_items(v.numel())
    out = torch.zeros(n, n, dtype=torch.float64)
    iu, ju = torch.triu_indices(n, n, offset=1)
    out[iu, ju] = v.reshape(-1)  # (P,)
    out[ju, iu] = v.reshape(-1)  # (P,) mirrored below the diagonal
    return out


def condensed(m: Any) -> Tensor:
    """Square ``(n, n)`` (symmetric) or already condensed ``(P,)`` -> condensed ``(P,)``."""
    m = _to_tensor(m)
    if m.ndim == 1:
        _num_items(m.numel())
        return m
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"an RDM must be square (n, n) or condensed (P,), got shape {tuple(m.shape)}")
    if not torch.allclose(m, m.T, rtol=1e-10, atol=1e-12):
        raise ValueError("square RDM is not symmetric")
    iu, ju = torch.triu_indices(m.shape[0], m.shape[0], offset=1)
    return m[iu, ju]


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks of the last axis (ties share their mean rank)."""
    return stats.rankdata(v, axis=-1).astype(np.float64)


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson r along the last axis; a (..., P), b (..., P) broadcastable -> (...)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = torch.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    if bool((den == 0).any()):
        raise ValueError("constant RDM: its correlation with anything is undefined")
    return (a * b).sum(-1) / den


def _kendall_tau_a(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a from scipy's O(P log P) tau-b and the tie counts.

    scipy computes tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)) with n0 = P (P - 1) / 2 and
    n1, n2 the numbers of tied pairs in a and in b, so tau_a = (C - D) / n0 =
    tau_b * sqrt((n0 - n1)(n0 - n2)) / n0. (Neither scipy nor numpy offers tau-a directly;
    the O(P^2) definition is the test reference.)
    """
    p = a.size
    n0 = p * (p - 1) / 2
    n1 = sum(t * (t - 1) / 2 for t in np.unique(a, return_counts=True)[1])
    n2 = sum(t * (t - 1) / 2 for t in np.unique(b, return_counts=True)[1])
    if n1 == n0 or n2 == n0:
        return 0.0  # a constant vector: no pair is concordant or discordant
    tau_b = stats.kendalltau(a, b, variant="b").statistic
    return float(tau_b * math.sqrt((n0 - n1) * (n0 - n2)) / n0)


def _prepare(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    a, b = condensed(a), condensed(b)
    if a.shape != b.shape:
        raise ValueError(f"RDMs must have the same number of items, got {a.numel()} and {b.numel()} entries")
    if a.numel() < 3:
        raise ValueError(f"comparing RDMs needs at least 3 items (3 entries), got {a.numel()} entries")
    return a, b


def compare_rdms(a: Any, b: Any, method: str = "spearman") -> Tensor:
    """Similarity of two RDMs (square or condensed, same items): a 0-d float64 tensor."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    a, b = _prepare(a, b)
    if method == "pearson":
        return _pearson_rows(a, b)
    if method == "spearman":
        return _pearson_rows(torch.from_numpy(_ranks(a.numpy())), torch.from_numpy(_ranks(b.numpy())))
    return torch.tensor(_kendall_tau_a(a.numpy(), b.numpy()), dtype=torch.float64)


def group_permutations(groups: Any, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_perm, n)`` item permutations that move whole groups (e.g. utterances) at once.

    Item ``i`` of group ``g`` goes to the same position of another group ``h`` of the same
    size (the order within a group is kept); groups of a size no other group has stay in
    place. Under a null where groups are exchangeable (independent units) and items within
    a group may depend on each other, these are the permutations that keep the null
    distribution.
    """
    groups = np.asarray(groups)
    n = groups.shape[0]
    _, inv = np.unique(groups, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")  # (n,) items grouped by group, item order kept within one
    bounds = np.searchsorted(inv[order], np.arange(int(inv.max()) + 2)) if n else np.zeros(1, np.int64)
    members = [order[bounds[g] : bounds[g + 1]] for g in range(len(bounds) - 1)]  # one pass, not one scan per group
    sizes = np.array([len(m) for m in members])
    strata = [np.flatnonzero(sizes == s) for s in np.unique(sizes)]
    out = np.empty((n_perm, n), dtype=np.int64)
    for p in range(n_perm):
        perm = np.empty(n, dtype=np.int64)
        for gs in strata:
            for g, h in zip(gs, rng.permutation(gs)):
                perm[members[g]] = members[h]
        out[p] = perm
    return out


def permutation_test(
    x: Any, y: Any, n_perm: int = 1000, seed: int = 0, method: str = "spearman", chunk: int = 256,
    groups: Any = None, return_null: bool = False,
) -> tuple[float, float] | tuple[float, float, np.ndarray]:  # fmt: skip
    """Observed RDM similarity and its one-sided permutation p-value.

    The items (rows and columns together) of ``y`` are permuted ``n_perm`` times with
    ``numpy.random.default_rng(seed)``; ``p = (1 + #{perm stat >= observed}) / (1 + n_perm)``.
    RDMs may be square or condensed. Permuting items permutes the RDM's entries, so
    ranks are computed once and each permutation is a gather.

    Items must be exchangeable under the null. When they are not (tokens of one utterance
    share its speaker, rate, channel), give ``groups`` (``(n,)``, e.g. the utterance of each
    item): whole groups are then permuted (:func:`group_permutations`). Permuting
    dependent tokens one by one makes the p-values too small.

    ``return_null``: also return the ``(n_perm,)`` permutation statistics (the null distribution).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    a, b = _prepare(x, y)
    n = _num_items(a.numel())
    observed = float(compare_rdms(a, b, method))
    rng = np.random.default_rng(seed)
    if groups is not None:
        if np.asarray(groups).shape != (n,):
            raise ValueError(f"groups must have one entry per item ({n}), got shape {np.asarray(groups).shape}")
        perms = group_permutations(groups, n_perm, rng)  # (n_perm, n)
    else:
        perms = np.stack([rng.permutation(n) for _ in range(n_perm)])  # (n_perm, n)
    index = np.zeros((n, n), dtype=np.int64)  # condensed position of (i, j), i != j
    iu, ju = np.triu_indices(n, k=1)
    index[iu, ju] = np.arange(iu.size)
    index[ju, iu] = np.arange(iu.size)
    if method == "kendall_tau_a":
        bn, an = b.numpy(), a.numpy()
        null = np.array([_kendall_tau_a(an, bn[index[pi[iu], pi[ju]]]) for pi in perms])
    else:
        av = torch.from_numpy(_ranks(a.numpy())) if method == "spearman" else a
        bv = torch.from_numpy(_ranks(b.numpy())) if method == "spearman" else b
        null = np.empty(n_perm)
        for s in range(0, n_perm, chunk):
            pc = perms[s : s + chunk]  # (c, n)
            gather = torch.from_numpy(index[pc[:, iu], pc[:, ju]])  # (c, P) permuted entry positions
            null[s : s + chunk] = _pearson_rows(av[None, :], bv[gather]).numpy()  # (c,)
    # A tolerance so that permutations reproducing the observed value count as >= despite rounding.
    count = int((null >= observed - 1e-12).sum())
    if return_null:
        return observed, (1 + count) / (1 + n_perm), null
    return observed, (1 + count) / (1 + n_perm)


def class_permutation_test(
    x: Any, class_rdm: Any, labels: Any, n_perm: int = 1000, seed: int = 0, method: str = "kendall_tau_a",
    return_null: bool = False,
) -> tuple[float, float] | tuple[float, float, np.ndarray]:
    """RSA of a token RDM against a *categorical* reference, with the class labels permuted.

    ``x``: the model RDM over ``n`` tokens (square or condensed); ``class_rdm``: the reference
    RDM over the classes ``np.unique(labels)`` (sorted), so that the reference of tokens
    ``i, j`` is ``class_rdm[c_i, c_j]`` (0 within a class); ``labels (n,)``. Each permutation
    reassigns the classes' reference rows (``c -> pi(c)``) and keeps every token with its
    class, so the null keeps whatever makes tokens of one class alike (shared utterances,
    neighbours, the class identity itself) and tests only whether the *structure* of the
    reference over classes matches. Returns ``(observed, p)`` with
    ``p = (1 + #{perm stat >= observed}) / (1 + n_perm)``; with ``return_null`` also the ``(n_perm,)``
    permutation statistics.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    a = condensed(x)
    n = _num_items(a.numel())
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have one entry per item of the RDM ({n}), got shape {labels.shape}")
    classes, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(-1)
    c = square(class_rdm).numpy() if _to_tensor(class_rdm).ndim == 1 else _to_tensor(class_rdm).numpy()
    if c.shape != (len(classes), len(classes)):
        raise ValueError(f"class_rdm must be over the {len(classes)} classes of labels, got shape {c.shape}")
    if len(classes) < 3:
        raise ValueError(f"a class permutation needs at least 3 classes, got {len(classes)}")
    iu, ju = np.triu_indices(n, k=1)
    ci, cj = inv[iu], inv[ju]  # (P,) classes of each token pair
    an = a.numpy()
    observed = float(compare_rdms(an, c[ci, cj], method))
    rng = np.random.default_rng(seed)
    if method == "kendall_tau_a":
        stat = lambda b: _kendall_tau_a(an, b)  # noqa: E731
    else:
        av = torch.from_numpy(_ranks(an)) if method == "spearman" else a
        stat = lambda b: float(_pearson_rows(av, torch.from_numpy(_ranks(b) if method == "spearman" else b)))  # noqa: E731
    null = np.empty(n_perm)
    for k in range(n_perm):
        pi = rng.permutation(len(classes))  # (C,) class c takes the reference row of class pi[c]
        null[k] = stat(c[pi[ci], pi[cj]])  # (P,)
    count = int((null >= observed - 1e-12).sum())
    if return_null:
        return observed, (1 + count) / (1 + n_perm), null
    return observed, (1 + count) / (1 + n_perm)


def pooled_class_means(x: Any, labels: Any) -> tuple[np.ndarray, Tensor]:
    """Mean representation of each class: ``x (n, d)``, ``labels (n,)`` -> (sorted classes, (C, d))."""
    x = _to_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, d), got shape {tuple(x.shape)}")
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {labels.shape}")
    if x.shape[0] == 0:
        raise ValueError("pooled_class_means needs at least 1 item")
    classes, inverse = np.unique(labels, return_inverse=True)
    idx = torch.from_numpy(inverse.reshape(-1).astype(np.int64))  # (n,)
    sums = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, idx, x)  # (C, d)
    counts = torch.bincount(idx, minlength=len(classes)).to(torch.float64)  # (C,)
    return classes, sums / counts[:, None]
