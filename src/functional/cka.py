"""Centred kernel alignment (CKA) between representations.

Definitions (Kornblith et al., 2019; Nguyen et al., 2021)
----------------------------------------------------------
For two representations of the same ``n`` items, ``x (n, d1)`` and ``y (n, d2)`` (rows
aligned), with Gram matrices ``K = k(x_i, x_j)`` and ``L = k(y_i, y_j)``:

- biased HSIC: ``HSIC(K, L) = tr(K H L H) / (n - 1)^2`` with ``H = I - 11^T / n``;
- unbiased HSIC (Song et al., 2012), with ``K~``, ``L~`` the Gram matrices with their
  diagonal set to zero::

      HSIC_1(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
                       - 2 / (n-2) * 1^T K~ L~ 1 ] / (n (n-3))

- ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``; "debiased" CKA uses ``HSIC_1``
  (it may be slightly negative for unrelated representations).

Linear CKA is computed in feature space, never forming an ``n x n`` matrix: with centred
``x`` and ``y``, ``tr(K H L H) = ||y^T x||_F^2``, and (because centred columns sum to 0,
so ``K 1 = 0``) with ``k_i = ||x_i||^2`` and ``l_i = ||y_i||^2``::

    tr(K~ L~)   = ||y^T x||_F^2 - k.l
    1^T K~ 1    = -sum(k)
    1^T K~ L~ 1 = k.l

The unbiased estimator is invariant to translating the data (it is a U-statistic of
differences ``x_i - x_r``), so centring first changes nothing but rounding.

Conventions
-----------
- Inputs: torch tensors or numpy arrays (including float16 ``np.memmap`` slices); they are
  converted to float64 unless stated. Results are float64 torch tensors.
- Items needed: at least 2 (biased) or 4 (debiased); fewer raises ``ValueError``.
- A representation with zero variance (every row identical, up to rounding) makes CKA
  0 / 0: that raises ``ValueError`` ("constant features"); no NaN is ever returned.
- A representation holding inf or NaN (a float16 cache overflows above 65504) raises
  ``ValueError`` ("non-finite values"), naming it, before anything is computed from it.
- RBF CKA needs the ``n x n`` Gram matrices; it refuses more than ``max_items`` rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MinibatchCKA",
    "cka_matrix",
    "hsic",
    "linear_cka",
    "minibatch_cka",
    "rbf_cka",
    "rbf_gram",
]

_EPS = float(np.finfo(np.float64).eps)


def _to_tensor(a: Any, dtype: torch.dtype = torch.float64) -> Tensor:
    """Array-like (torch, numpy, memmap, float16 ...) -> tensor of `dtype`."""
    if isinstance(a, Tensor):
        return a.detach().to(dtype)
    return torch.as_tensor(np.asarray(a)).to(dtype)


def _check_2d(a: Tensor, name: str) -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(a.shape)}")


def _check_finite(a: Tensor, name: str) -> None:
    if not bool(torch.isfinite(a).all()):
        n_inf, n_nan = int(torch.isinf(a).sum()), int(torch.isnan(a).sum())
        raise ValueError(
            f"{name} has non-finite values ({n_inf} inf, {n_nan} NaN): CKA is undefined "
            "(a float16 cache overflows above 65504)"
        )


def _pair(x: Any, y: Any, min_items: int) -> tuple[Tensor, Tensor]:
    x, y = _to_tensor(x), _to_tensor(y)
    _check_2d(x, "x")
    _check_2d(y, "y")
    _check_finite(x, "x")
    _check_finite(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows (items), got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] < min_items:
        raise ValueError(f"CKA needs at least {min_items} items (rows), got {x.shape[0]}")
    return x, y


def _check_variance(centred_sq: float, raw_sq: float, n: int, name: str) -> None:
    """Raise if the centred data is zero up to the rounding of the centring itself."""
    if not centred_sq > (n * _EPS) ** 2 * raw_sq or centred_sq == 0.0:
        raise ValueError(f"{name} has constant features (zero variance in every column): CKA is undefined")


def _unbiased_from_stats(cross: Tensor, kl: Tensor, sum_k: Tensor, sum_l: Tensor, n: int) -> Tensor:
    """HSIC_1 from feature-space statistics of centred data (see the module docstring).

    cross = ||y^T x||_F^2, kl = k.l, sum_k = sum(k), sum_l = sum(l); all broadcastable.
    """
    trace = cross - kl  # tr(K~ L~)
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl) / (n * (n - 3))


def linear_cka(x: Any, y: Any, debiased: bool = False) -> Tensor:
    """Linear CKA of ``x (n, d1)`` and ``y (n, d2)``, rows aligned, in feature space.

    Costs ``O(n d1 d2)`` time and ``O(d1 d2 + n)`` memory; no ``n x n`` matrix. With
    ``debiased=True`` the unbiased HSIC estimator of Song et al. (2012) is used, as in
    Nguyen et al. (2021) (needs ``n >= 4``).

    >>> x = torch.randn(100, 8, dtype=torch.float64)
    >>> round(linear_cka(x, 2 * x).item(), 6)
    1.0
    """
    x, y = _pair(x, y, 4 if debiased else 2)
    n = x.shape[0]
    xc, yc = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)  # (n, d1), (n, d2)
    _check_variance(float((xc * xc).sum()), float((x * x).sum()), n, "x")
    _check_variance(float((yc * yc).sum()), float((y * y).sum()), n, "y")
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2  # ||Y^T X||_F^2
    self_x = torch.linalg.matrix_norm(xc.T @ xc) ** 2  # ||X^T X||_F^2
    self_y = torch.linalg.matrix_norm(yc.T @ yc) ** 2  # ||Y^T Y||_F^2
    if not debiased:
        return cross / torch.sqrt(self_x * self_y)
    k, l = (xc * xc).sum(1), (yc * yc).sum(1)  # (n,), (n,) squared row norms
    hxy = _unbiased_from_stats(cross, k @ l, k.sum(), l.sum(), n)
    hxx = _unbiased_from_stats(self_x, k @ k, k.sum(), k.sum(), n)
    hyy = _unbiased_from_stats(self_y, l @ l, l.sum(), l.sum(), n)
    _check_self_hsic(hxx, "x")
    _check_self_hsic(hyy, "y")
    return hxy / torch.sqrt(hxx * hyy)


def _check_self_hsic(h: Tensor, name: str) -> None:
    if not bool((h > 0).all()):
        raise ValueError(
            f"unbiased HSIC of {name} with itself is not positive ({h.min().item():.3g}): "
            "too few items or (nearly) constant features for debiased CKA"
        )


# ----------------------------------------------------------------------------- kernels


def hsic(k: Tensor, l: Tensor, debiased: bool = False) -> Tensor:
    """HSIC of two ``(n, n)`` Gram matrices (biased ``tr(KHLH)/(n-1)^2`` or unbiased ``HSIC_1``).

    Leading batch dimensions broadcast: ``k (..., n, n)``, ``l (..., n, n)``.
    """
    n = k.shape[-1]
    if not debiased:
        kc = _centre_gram(k)  # (..., n, n) = H K H
        lc = _centre_gram(l)
        return (kc * lc).sum((-2, -1)) / (n - 1) ** 2
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 items, got {n}")
    kt = k - torch.diag_embed(torch.diagonal(k, dim1=-2, dim2=-1))  # (..., n, n) K~
    lt = l - torch.diag_embed(torch.diagonal(l, dim1=-2, dim2=-1))
    trace = (kt * lt).sum((-2, -1))
    rk, rl = kt.sum(-1), lt.sum(-1)  # (..., n) row sums K~ 1, L~ 1
    return (trace + rk.sum(-1) * rl.sum(-1) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rk * rl).sum(-1)) / (
        n * (n - 3)
    )


def _centre_gram(k: Tensor) -> Tensor:
    """H K H without forming H: subtract row and column means, add back the grand mean."""
    return k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-2, -1), keepdim=True)


def _median(v: Tensor) -> Tensor:
    """numpy-style median (mean of the two middle values for an even count) of a 1-D tensor."""
    m = v.numel()
    lo = torch.kthvalue(v, (m - 1) // 2 + 1).values
    hi = torch.kthvalue(v, m // 2 + 1).values
    return (lo + hi) / 2


def rbf_gram(x: Any, threshold: float = 1.0) -> Tensor:
    """RBF Gram matrix ``exp(-||x_i - x_j||^2 / (2 sigma^2))`` of ``x (n, d)`` -> ``(n, n)``.

    Bandwidth as in Kornblith et al. (2019)'s reference code:
    ``sigma^2 = threshold^2 * median(squared distances)``, the median taken over all
    ``n^2`` entries of the squared-distance matrix (zero diagonal included), i.e.
    ``sigma ~= threshold * median pairwise distance``.
    """
    x = _to_tensor(x)
    _check_2d(x, "x")
    _check_finite(x, "x")
    d2 = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (n, n) exact differences
    med = _median(d2.reshape(-1))  # (n*n,)
    if not med > 0:
        raise ValueError(
            "rbf bandwidth is 0: the median squared distance between items is 0 "
            "(constant features or mostly duplicated rows)"
        )
    return torch.exp(-d2 / (2.0 * threshold**2 * med))


def rbf_cka(x: Any, y: Any, threshold: float = 1.0, debiased: bool = False, max_items: int = 8192) -> Tensor:
    """CKA with RBF kernels (Kornblith et al., 2019); bandwidth as in :func:`rbf_gram`.

    This forms the ``n x n`` Gram matrices (``O(n^2)`` memory), so ``n`` is capped at
    ``max_items``; subsample rows for larger sets.
    """
    x, y = _pair(x, y, 4 if debiased else 2)
    n = x.shape[0]
    if n > max_items:
        raise ValueError(
            f"rbf_cka forms n x n Gram matrices; n={n} exceeds max_items={max_items}: subsample rows"
        )
    k, l = rbf_gram(x, threshold), rbf_gram(y, threshold)  # (n, n), (n, n)
    hxy, hxx, hyy = hsic(k, l, debiased), hsic(k, k, debiased), hsic(l, l, debiased)
    if debiased:
        _check_self_hsic(hxx, "x")
        _check_self_hsic(hyy, "y")
    elif not (hxx > 0 and hyy > 0):
        raise ValueError("a centred RBF Gram matrix is zero (constant features): CKA is undefined")
    return hxy / torch.sqrt(hxx * hyy)


# ----------------------------------------------------------------------------- minibatch


class MinibatchCKA:
    """Linear CKA of many layer pairs accumulated over minibatches (Nguyen et al., 2021).

    Each ``update`` adds, for every pair of layers, the unbiased HSIC (Song et al., 2012) of
    the batch's linear Gram matrices; ``compute`` returns
    ``sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))``.
    Because ``HSIC_1`` is a U-statistic, its mean over random batches drawn without
    replacement equals the full-data ``HSIC_1``: with many batches the result approaches
    the full-batch debiased linear CKA.

    Memory is ``O(L b^2)`` for a batch of ``b`` rows and ``L`` layers (one ``b x b`` Gram per
    layer) plus the ``(L1, L2)`` accumulators; never ``N x N`` over the whole data, and
    nothing that grows with the number of batches. Time is ``O(b^2 d)`` per layer and batch,
    i.e. ``O(N b d L)`` for a pass over ``N`` rows: halving ``b`` halves the time (the estimate
    stays unbiased; its variance grows).
    Every batch needs ``b >= 4`` rows; all layers of a batch share the same rows.

    Args:
        compute_dtype: dtype of the centring and of the Gram products. ``torch.float64``
            (default) is exact to rounding; ``torch.float32`` is about 2x faster and agrees
            with it to about 1e-6 on CKA values (measured on float16 caches, tested at 1e-5).
            The HSIC sums are always accumulated in float64.
    """

    def __init__(self, compute_dtype: torch.dtype = torch.float64) -> None:
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
        self.compute_dtype = compute_dtype
        self._xy: Tensor | None = None  # (L1, L2) summed HSIC_1(K_i, L_j)
        self._xx: Tensor | None = None  # (L1,)
        self._yy: Tensor | None = None  # (L2,)
        self._symmetric: bool | None = None
        self.num_batches = 0

    def _grams(self, layers: Sequence[Any], name: str) -> Tensor:
        mats = []
        for i, a in enumerate(layers):
            a = _to_tensor(a, self.compute_dtype)
            _check_2d(a, f"{name}[{i}]")
            a = a - a.mean(0, keepdim=True)  # (b, d) centred: HSIC_1 is translation invariant
            g = (a @ a.T).to(torch.float64)  # (b, b) in float64 for the HSIC sums
            # inf/NaN anywhere in `a` makes its column mean and so the Gram matrix non-finite: one
            # reduction instead of an elementwise check of every input (|g| <= 65504^2 d, no overflow)
            if not bool(torch.isfinite(g.sum())):
                _check_finite(_to_tensor(layers[i]), f"{name}[{i}]")  # names the input and counts
                raise ValueError(f"{name}[{i}] gives a non-finite Gram matrix (values too large for {self.compute_dtype})")
            mats.append(g)
        b0 = mats[0].shape[0]
        if any(m.shape[0] != b0 for m in mats):
            raise ValueError(f"all layers of one batch must have the same number of rows; {name} differ")
        g = torch.stack(mats)  # (L, b, b)
        return g - torch.diag_embed(torch.diagonal(g, dim1=-2, dim2=-1))  # (L, b, b) zero diagonal

    @staticmethod
    def _hsic_all(kt: Tensor, lt: Tensor) -> Tensor:
        """Unbiased HSIC for every pair: kt (L1, b, b), lt (L2, b, b) zero-diagonal -> (L1, L2)."""
        n = kt.shape[-1]
        trace = kt.reshape(kt.shape[0], -1) @ lt.reshape(lt.shape[0], -1).T  # (L1, b*b) @ (b*b, L2)
        rk, rl = kt.sum(-1), lt.sum(-1)  # (L1, b), (L2, b)
        sk, sl = rk.sum(-1), rl.sum(-1)  # (L1,), (L2,)
        return (trace + sk[:, None] * sl[None, :] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rk @ rl.T)) / (
            n * (n - 3)
        )

    @staticmethod
    def _hsic_self(kt: Tensor) -> Tensor:
        """Unbiased HSIC of each layer with itself: kt (L, b, b) -> (L,)."""
        n = kt.shape[-1]
        trace = (kt * kt).sum((-2, -1))
        rk = kt.sum(-1)  # (L, b)
        sk = rk.sum(-1)
        return (trace + sk * sk / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rk * rk).sum(-1)) / (n * (n - 3))

    def update(self, xs: Sequence[Any], ys: Sequence[Any] | None = None) -> None:
        """Add one minibatch: ``xs[i] (b, d_i)`` and optionally ``ys[j] (b, e_j)``, same rows.

        With ``ys=None`` the result is the symmetric ``(L1, L1)`` matrix of ``xs`` layers.
        """
        if len(xs) == 0:
            raise ValueError("xs must contain at least one layer")
        symmetric = ys is None
        if self._symmetric is not None and symmetric != self._symmetric:
            raise ValueError("mixing updates with and without ys")
        kt = self._grams(xs, "xs")  # (L1, b, b)
        b = kt.shape[-1]
        if b < 4:
            raise ValueError(f"each minibatch needs at least 4 rows for unbiased HSIC, got {b}")
        lt = kt if symmetric else self._grams(ys, "ys")  # (L2, b, b)
        if lt.shape[-1] != b:
            raise ValueError(f"xs and ys must have the same rows in a batch, got {b} and {lt.shape[-1]}")
        xy = self._hsic_all(kt, lt)
        xx = self._hsic_self(kt)
        yy = xx if symmetric else self._hsic_self(lt)
        if self._xy is None:
            self._xy, self._xx, self._yy = xy, xx, yy
            self._symmetric = symmetric
        else:
            if self._xy.shape != xy.shape:
                raise ValueError(
                    f"number of layers changed between updates: {tuple(self._xy.shape)} vs {tuple(xy.shape)}"
                )
            self._xy, self._xx, self._yy = self._xy + xy, self._xx + xx, self._yy + yy
        self.num_batches += 1

    def compute(self) -> Tensor:
        """``(L1, L2)`` minibatch CKA matrix (float64)."""
        if self._xy is None:
            raise ValueError("MinibatchCKA.compute() called before any update()")
        _check_self_hsic(self._xx, "xs")
        _check_self_hsic(self._yy, "ys")
        return self._xy / torch.sqrt(self._xx[:, None] * self._yy[None, :])


def minibatch_cka(batches: Iterable[Any], compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """Minibatch linear CKA over an iterable of batches.

    Each batch is either ``xs`` (a sequence of ``(b, d_i)`` layers: symmetric matrix) or a
    pair ``(xs, ys)``. See :class:`MinibatchCKA`. The batches are consumed one at a time, so
    a generator that reads them from disk keeps memory ``O(batch)``.
    """
    acc = MinibatchCKA(compute_dtype)
    for batch in batches:
        if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], (list, tuple)):
            acc.update(batch[0], batch[1])
        else:
            acc.update(batch)
    return acc.compute()


# ----------------------------------------------------------------------------- all pairs


def _n_rows(a: Any) -> int:
    return int(a.shape[0])


def _rows(a: Any, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """Rows [start, stop) of a tensor / array / memmap, converted chunk-wise to `dtype`."""
    if isinstance(a, Tensor):
        return a[start:stop].detach().to(dtype)
    arr = np.ascontiguousarray(a[start:stop])
    if not arr.flags.writeable:  # read-only memmap: torch wants a writable buffer
        arr = arr.copy()
    return torch.from_numpy(arr).to(dtype)


def cka_matrix(
    layers_x: Sequence[Any],
    layers_y: Sequence[Any] | None = None,
    debiased: bool = False,
    chunk_size: int = 8192,
    compute_dtype: torch.dtype = torch.float32,
    max_accumulator_bytes: int = 512 * 2**20,
    max_buffer_bytes: int = 256 * 2**20,
) -> Tensor:
    """Linear CKA for every pair of layers, full batch, without any ``N x N`` matrix.

    ``layers_x[i] (N, d_i)`` and ``layers_y[j] (N, e_j)`` share their ``N`` rows (items);
    ``layers_y=None`` gives the symmetric ``(L1, L1)`` matrix of ``layers_x``. Returns a
    float64 ``(L1, L2)`` tensor equal to ``linear_cka(layers_x[i], layers_y[j], debiased)``.

    How: rows are read ``chunk_size`` at a time (inputs may be float16 ``np.memmap``
    arrays), shifted by a per-layer offset ``s`` (the mean of the first chunk; the exact
    mean when ``debiased``, which needs one extra pass), and every needed block
    ``U_a^T U_b`` of the shifted data is accumulated in float64 (chunk products in
    ``compute_dtype``). The exact centred Gram block follows as
    ``X_a^T X_b = U_a^T U_b - N m_a m_b^T`` with ``m`` the mean of the shifted rows, so each
    layer is centred once and each ``||X_a^T X_a||_F`` is computed once. In the symmetric
    case only the upper triangle of blocks is computed.

    Memory: ``O(chunk_size * sum(d) + A)``. The chunk buffer holds every layer's rows of
    one chunk; ``chunk_size`` is lowered (not below 1024) to keep it under
    ``max_buffer_bytes``. The float64 accumulators ``A`` hold the ``d_a x d_b`` blocks, at
    most about ``max_accumulator_bytes`` per pass over the data (more passes are made
    when needed).

    ``compute_dtype=torch.float32`` (default) is about 2x faster than float64 and agrees
    with it to about 1e-7 on CKA values; pass ``torch.float64`` for exact comparisons.
    """
    symmetric = layers_y is None
    layers = list(layers_x) + ([] if symmetric else list(layers_y))
    l1 = len(layers_x)
    l2 = l1 if symmetric else len(layers) - l1
    if l1 == 0 or l2 == 0:
        raise ValueError("cka_matrix needs at least one layer on each side")
    for i, a in enumerate(layers):
        if len(a.shape) != 2:
            raise ValueError(f"layer {i} must be 2-D (N, d), got shape {tuple(a.shape)}")
    n = _n_rows(layers[0])
    for i, a in enumerate(layers):
        if _n_rows(a) != n:
            raise ValueError(
                f"all layers must have the same number of rows; layer 0 has {n}, layer {i} has {_n_rows(a)}"
            )
    min_items = 4 if debiased else 2
    if n < min_items:
        raise ValueError(f"CKA needs at least {min_items} items (rows), got {n}")
    num = len(layers)
    dims = [int(a.shape[1]) for a in layers]
    offsets = [0, *np.cumsum(dims).tolist()]  # column offset of each layer in the chunk buffer
    row_bytes = offsets[-1] * torch.empty(0, dtype=compute_dtype).element_size()
    chunk_size = max(1, min(chunk_size, max(1024, max_buffer_bytes // row_bytes)))

    # Per-layer shift: exact means (debiased: row norms must be of exactly centred rows) or first-chunk means.
    def name(b: int) -> str:
        return f"layers_x[{b}]" if b < l1 else f"layers_y[{b - l1}]"

    if debiased:
        shift = [torch.zeros(d, dtype=torch.float64) for d in dims]
        for s in range(0, n, chunk_size):
            for b in range(num):
                shift[b] += _rows(layers[b], s, min(n, s + chunk_size), torch.float64).sum(0)
        shift = [v / n for v in shift]
    else:
        shift = [_rows(a, 0, min(n, chunk_size), torch.float64).mean(0) for a in layers]
    for b, v in enumerate(shift):  # a first-chunk (or exact) mean is finite unless the layer is not
        _check_finite(v, name(b))
    shift_c = [v.to(compute_dtype) for v in shift]
    shift = [v.to(compute_dtype).to(torch.float64) for v in shift_c]  # the shift actually applied

    # Layer ranges [lo, hi) that each row-layer multiplies against (contiguous buffer columns).
    if symmetric:
        targets = {a: [(a, num)] for a in range(num)}
    else:
        targets = {a: [(a, a + 1), (l1, num)] for a in range(l1)}
        targets.update({b: [(b, b + 1)] for b in range(l1, num)})

    def acc_bytes(a: int) -> int:
        return 8 * dims[a] * sum(offsets[hi] - offsets[lo] for lo, hi in targets[a])

    passes: list[list[int]] = [[]]  # row-layers per pass over the data, accumulators within budget
    used = 0
    for a in range(num):
        if passes[-1] and used + acc_bytes(a) > max_accumulator_bytes:
            passes.append([])
            used = 0
        passes[-1].append(a)
        used += acc_bytes(a)

    col_sum = [torch.zeros(d, dtype=torch.float64) for d in dims]  # sum of shifted rows
    row_sq = torch.zeros(num, n, dtype=torch.float64) if debiased else None  # (L, N) ||x_i - mean||^2
    blocks: dict[tuple[int, int], Tensor] = {}  # (a, b) -> U_a^T U_b, (d_a, d_b)
    buf = torch.empty(min(chunk_size, n), offsets[-1], dtype=compute_dtype)  # (c, sum d)
    for p, rows_in_pass in enumerate(passes):
        if p == 0:
            needed = list(range(num))  # the first pass also sums every layer's shifted rows
        else:
            needed = sorted({b for a in rows_in_pass for lo, hi in targets[a] for b in range(lo, hi)})
        acc = {a: [torch.zeros(dims[a], offsets[hi] - offsets[lo], dtype=torch.float64) for lo, hi in targets[a]]
               for a in rows_in_pass}  # fmt: skip
        for s in range(0, n, chunk_size):
            e = min(n, s + chunk_size)
            c = e - s
            for b in needed:
                u = buf[:c, offsets[b] : offsets[b + 1]]  # (c, d_b) view into the buffer
                u.copy_(_rows(layers[b], s, e, compute_dtype))
                u.sub_(shift_c[b])
                if p == 0:
                    _check_finite(u, name(b))  # every row is read in the first pass
                    col_sum[b] += u.sum(0, dtype=torch.float64)
                    if row_sq is not None:
                        row_sq[b, s:e] = (u * u).sum(1, dtype=torch.float64)
            for a in rows_in_pass:
                left = buf[:c, offsets[a] : offsets[a + 1]]  # (c, d_a)
                for t, (lo, hi) in enumerate(targets[a]):
                    acc[a][t] += (left.T @ buf[:c, offsets[lo] : offsets[hi]]).to(torch.float64)  # (d_a, W)
        for a in rows_in_pass:
            for t, (lo, hi) in enumerate(targets[a]):
                for b in range(lo, hi):
                    col = offsets[b] - offsets[lo]
                    blocks[(a, b)] = acc[a][t][:, col : col + dims[b]]  # (d_a, d_b)
    del buf

    means = [v / n for v in col_sum]  # mean of the shifted rows, m_a
    for (a, b), g in blocks.items():
        g -= n * torch.outer(means[a], means[b])  # (d_a, d_b) centred X_a^T X_b
    for b in range(num):
        centred_sq = float(torch.trace(blocks[(b, b)]))  # ||X_b - mean||_F^2
        raw_sq = centred_sq + n * float(((means[b] + shift[b]) ** 2).sum())  # ||X_b||_F^2
        _check_variance(centred_sq, raw_sq, n, f"layer {b}")

    def cross(a: int, b: int) -> Tensor:
        g = blocks[(a, b)] if (a, b) in blocks else blocks[(b, a)]
        return torch.linalg.matrix_norm(g) ** 2  # ||X_a^T X_b||_F^2

    self_sq = torch.stack([cross(a, a) for a in range(num)])  # (num,)
    cols = list(range(num)) if symmetric else list(range(l1, num))
    cross_sq = torch.empty(l1, l2, dtype=torch.float64)  # (L1, L2)
    for i in range(l1):
        for j, b in enumerate(cols):
            cross_sq[i, j] = cross_sq[j, i] if symmetric and b < i else cross(i, b)
    sx, sy = self_sq[:l1], self_sq[cols]  # (L1,), (L2,)
    if not debiased:
        return cross_sq / torch.sqrt(sx[:, None] * sy[None, :])
    kl = row_sq[:l1] @ row_sq[cols].T  # (L1, L2) k_i . l_j
    kk = (row_sq * row_sq).sum(1)  # (num,)
    sums = row_sq.sum(1)  # (num,) sum(k) = ||X - mean||_F^2
    hxy = _unbiased_from_stats(cross_sq, kl, sums[:l1, None], sums[cols][None, :], n)
    hxx = _unbiased_from_stats(sx, kk[:l1], sums[:l1], sums[:l1], n)
    hyy = _unbiased_from_stats(sy, kk[cols], sums[cols], sums[cols], n)
    _check_self_hsic(hxx, "layers_x")
    _check_self_hsic(hyy, "layers_y")
    return hxy / torch.sqrt(hxx[:, None] * hyy[None, :])
