"""ABX discriminability of speech items (Schatz et al., 2013; ZeroSpeech; fastabx).

Task
----
For triplets ``(A, B, X)`` with ``label(A) == label(X) != label(B)`` and ``X`` a different
item from ``A``, the triplet is an error when ``d(A, X) > d(B, X)``, half an error on a tie
(distances equal to a relative 1e-12, so that rounding in batched products cannot turn
an exact tie into a win or a loss). The error rate is in [0, 1]; 0.5 is chance.

- ``mode="within"``: ``A``, ``B`` and ``X`` share one speaker (and one context if
  ``contexts`` is given). A cell is ``(label_a, label_b, context, speaker)``.
- ``mode="across"``: ``A`` and ``B`` share a speaker ``s``; ``X`` (label of ``A``, same context)
  comes from another speaker ``s_x != s``. A cell is
  ``(label_a, label_b, context, s, s_x)``; there ``X`` can never be ``A``.

A cell's score is the mean error over all its triplets (or over ``max_triplets_per_cell``
triplets drawn uniformly without replacement, seeded). Cells are collapsed as the
ZeroSpeech 2021 ABX does (fastabx's ``zerospeech_abx`` levels): the mean over
contexts (jointly with the X speakers in ``across`` mode) for each
``(label_a, label_b, speaker)``, then the mean over speakers (if there is no context,
the X speakers are averaged jointly with the speakers at this step), then the mean over
the ordered label pairs ``(label_a, label_b)``. Cells with no triplet (fewer than 2 items
of ``label_a`` in ``within`` mode, none of ``label_b``, no other speaker) do not exist.

Distances
---------
- ``distance="dtw"``: frame-level distances aligned by dynamic time warping. Steps
  ``(i-1, j)``, ``(i-1, j-1)``, ``(i, j-1)``, each adding the full frame cost (no diagonal
  weight); the accumulated cost ``D[n-1, m-1]`` of the best path is divided by the number
  of cells on that path. The path is the one followed back from ``(n-1, m-1)`` choosing
  the diagonal predecessor on ties, then the left one ``(i, j-1)``, then ``(i-1, j)``: the
  convention of fastabx's DTW (which follows the ZeroSpeech / libri-light ABX code).
  Only that tie rule makes DTW asymmetric; like fastabx, each unordered pair of items is
  aligned once, with the item of lower index (in the order given) as the rows.
- ``distance="mean_pooled"``: the frame distance between the items' mean frames.
- Frame distances: ``angular`` = ``arccos(cos_sim) / pi`` in [0, 1] (the ZeroSpeech
  default), ``cosine`` = ``1 - cos_sim``, ``euclidean``. Cosine similarity with a zero
  frame is taken as 0 (angular 0.5, cosine 1); similarities within 1e-12 of 1 are set to
  1 (unit-vector dot products cannot resolve smaller angles; identical frames are then
  exactly 0 apart).

Everything is float64 torch. DTW is batched: frame distances come from one matrix
product per block of items, and many pairs are padded to a common length and filled
anti-diagonal by anti-diagonal, so thousands of items take seconds (the number of pairs
grows with the square of the items per speaker: use ``max_triplets_per_cell`` on big sets).
Why by hand: fastabx does this but needs a compiled extension built for one exact
torch/CUDA version; the triplet/cell bookkeeping here is small.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["ABXCell", "abx_cells", "abx_error_rate", "collapse_cells", "dtw_distance", "pairwise_dtw"]

_FRAME = ("angular", "cosine", "euclidean")
_DIST = ("dtw", "mean_pooled")
_SNAP = 1e-12  # cosine similarities this close to 1 are rounded to 1
_TIE_RTOL = 1e-12  # distances this close (relative) count as a tie
_DENSE_KEYS = 2**26  # up to this many (item, item) keys, pair lookups use a dense table


def _to_tensor(a: Any) -> Tensor:
    if isinstance(a, Tensor):
        t = a.detach().to(torch.float64)
    else:
        t = torch.as_tensor(np.asarray(a)).to(torch.float64)
    if t.ndim == 1:
        t = t[:, None]  # (n, 1): a sequence of scalar frames
    if t.ndim != 2:
        raise ValueError(f"an item must be (frames, dim), got shape {tuple(t.shape)}")
    return t


def _unit_rows(f: Tensor) -> Tensor:
    """Rows scaled to unit norm; zero rows stay zero (cosine similarity 0 with anything)."""
    norms = torch.linalg.vector_norm(f, dim=-1, keepdim=True)  # (T, 1)
    return f / torch.where(norms == 0, 1.0, norms)


def _frame_matrix(a: Tensor, b: Tensor, frame_distance: str, normalised: bool = False) -> Tensor:
    """Frame distances between all frames: a (T1, d), b (T2, d) -> (T1, T2).

    Cosine similarities within _SNAP of 1 are set to 1 (see _cos_to_distance).
    """
    if frame_distance == "euclidean":
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")  # exact differences
    if not normalised:
        a, b = _unit_rows(a), _unit_rows(b)
    return _cos_to_distance(a @ b.T, frame_distance)  # (T1, T2)


def _cos_to_distance(cos: Tensor, frame_distance: str) -> Tensor:
    """Cosine similarity (modified in place) -> cosine or angular distance.

    Similarities within _SNAP of 1 are set to 1: a dot product of unit vectors cannot
    resolve smaller angles, and this makes identical frames exactly 0 apart.
    """
    cos = cos.clamp_(-1.0, 1.0)
    cos.masked_fill_(cos >= 1.0 - _SNAP, 1.0)
    if frame_distance == "cosine":
        return cos.neg_().add_(1.0)
    return cos.arccos_().mul_(1.0 / math.pi)


def _padded(dist: Tensor, max_len: int) -> tuple[Tensor, int]:
    """dist (T1, T2) flattened with zero margins so every skewed read in _lattices is in bounds.

    Returns (flat, front): dist[r, c] is flat[front + r * T2 + c].
    """
    t1, t2 = dist.shape
    front = t2 + 1
    back = (max_len + 1) * (t2 + 1) + 2 * max_len + 2
    flat = torch.zeros(front + t1 * t2 + back, dtype=dist.dtype)
    flat[front : front + t1 * t2] = dist.reshape(-1)  # (T1*T2,) row-major
    return flat, front


def _lattices(
    flat: Tensor, front: int, t2: int, row_off: Tensor, col_off: Tensor, n: Tensor, m: Tensor
) -> Tensor:
    """Gather each pair's cost lattice, laid out by anti-diagonal, in one strided gather.

    ``flat``/``front`` from _padded of a (T1, T2) frame-distance matrix; pair p uses rows
    ``row_off[p] + [0, n[p])`` and columns ``col_off[p] + [0, m[p])``. Returns (K, P, N+1),
    K = N + M + 1, N = max n, M = max m: entry [k, p, i] is the cost of the 1-based cell
    (i, j = k - i), i.e. ``dist[row_off + i - 1, col_off + j - 1]``, which sits at
    ``base_p + k + i (T2 - 1)`` with ``base_p = front + (row_off - 1) T2 + col_off - 1``: a
    strided view indexed by ``base``. Border and outside cells (i = 0, j < 1, j > M) are set
    to +inf; padding cells (i > n[p] or j > m[p]) hold other finite values, and no valid
    cell depends on them.
    """
    nn, mm = int(n.max()), int(m.max())
    kk = nn + mm + 1
    span = (kk - 1) + nn * (t2 - 1)  # largest offset read from a base
    # view[a, k, i] = flat[a + k + i (T2 - 1)]: no copy
    view = flat.as_strided((flat.numel() - span, kk, nn + 1), (1, 1, t2 - 1))  # (A, K, N+1)
    base = front + (row_off - 1) * t2 + col_off - 1  # (P,)
    costk = view[base].permute(1, 0, 2).contiguous()  # (P, K, N+1) -> (K, P, N+1)
    k = torch.arange(kk)[:, None, None]  # (K, 1, 1)
    i = torch.arange(nn + 1)[None, None, :]  # (1, 1, N+1)
    outside = (i < 1) | (k - i < 1) | (k - i > mm)  # (K, 1, N+1)
    return costk.masked_fill_(outside, math.inf)


def _dtw_skewed(costk: Tensor, n: Tensor, m: Tensor) -> Tensor:
    """Normalised DTW from anti-diagonal costs (see _lattices) -> (P,); overwrites costk.

    Forward: D[i, j] = c(i, j) + min(D[i-1, j], D[i-1, j-1], D[i, j-1]) with an infinite
    border and D[0, 0] = 0. Anti-diagonal k depends only on k-1 (up, left) and k-2
    (diagonal). With anti-diagonal k stored as one contiguous (P, N+1) slab, flattened,
    the predecessors of flat position q are positions q-1 (up) and q (left) of slab k-1
    and q-1 (diagonal) of slab k-2, so each step is three 1-D operations. (At i = 0 the
    shift reads the previous pair's last row, but those border cells cost +inf and stay
    +inf.) Backward: the path is followed from (n, m) choosing the diagonal predecessor on
    ties, then the left one, then up, counting its cells (vectorised over pairs); the
    result is D[n, m] / cells.
    """
    kk, p, n1 = costk.shape
    d = costk.reshape(kk, p * n1)  # (K, P*(N+1)): filled in place, becomes D
    d[0, 0::n1] = 0.0  # D[0, 0] of every pair
    for k in range(2, kk):
        d[k, 1:] += torch.minimum(d[k - 2, :-1], torch.minimum(d[k - 1, 1:], d[k - 1, :-1]))
    flat = d.reshape(-1)  # (K*P*(N+1),) index k*P*(N+1) + p*(N+1) + i
    base = torch.arange(p) * n1
    stride = p * n1

    def at(k: Tensor, i: Tensor) -> Tensor:
        return flat.index_select(0, k * stride + base + i)

    i, j = n.clone(), m.clone()  # current cell, 1-based
    total = at(i + j, i)  # D[n, m]
    cells = torch.ones(p, dtype=torch.int64)
    while True:
        active = (i > 1) & (j > 1)
        if not bool(active.any()):
            break
        k = i + j
        up, left, diag = at(k - 1, i - 1), at(k - 1, i), at(k - 2, i - 1)
        take_diag = (diag <= left) & (diag <= up)
        take_left = ~take_diag & (left <= up)
        i = torch.where(active & ~take_left, i - 1, i)  # diagonal or up
        j = torch.where(active & (take_diag | take_left), j - 1, j)  # diagonal or left
        cells += active.to(torch.int64)
    cells += (i - 1) + (j - 1)  # the rest runs straight along the first row or column
    return total / cells


def dtw_distance(a: Any, b: Any, frame_distance: str = "angular") -> float:
    """DTW distance between sequences ``a (n, d)`` and ``b (m, d)``, normalised by path length.

    See the module docstring for the step pattern, tie rule and frame distances.
    """
    if frame_distance not in _FRAME:
        raise ValueError(f"frame_distance must be one of {_FRAME}, got {frame_distance!r}")
    a, b = _to_tensor(a), _to_tensor(b)
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("DTW needs sequences with at least 1 frame")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frame dimensions differ: {a.shape[1]} and {b.shape[1]}")
    n, m = torch.tensor([a.shape[0]]), torch.tensor([b.shape[0]])
    zero = torch.zeros(1, dtype=torch.int64)
    flat, front = _padded(_frame_matrix(a, b, frame_distance), max(a.shape[0], b.shape[0]))
    costk = _lattices(flat, front, b.shape[0], zero, zero, n, m)  # (K, 1, n+1)
    return float(_dtw_skewed(costk, n, m)[0])


def pairwise_dtw(
    items: Sequence[Any],
    pairs: Any,
    frame_distance: str = "angular",
    block_frames: int = 2048,
    batch_elements: int = 32_768,
) -> Tensor:
    """DTW distances for many item pairs: ``pairs (P, 2)`` of indices into ``items`` -> ``(P,)``.

    Items are cut into consecutive blocks of about ``block_frames`` frames (order items so
    that pairs fall in few block pairs, e.g. grouped by speaker). For each pair of blocks
    the frame-distance matrix is computed once (one matrix product for angular/cosine),
    then the block's item pairs are gathered into anti-diagonal lattices, sorted by
    length, in batches of about ``batch_elements / (n_max + 1)`` pairs: each DTW step then
    touches at most ``batch_elements`` numbers (torch's single-thread grain, so the many
    small steps carry no thread synchronisation) and memory stays small.
    """
    if frame_distance not in _FRAME:
        raise ValueError(f"frame_distance must be one of {_FRAME}, got {frame_distance!r}")
    tens = [_to_tensor(x) for x in items]
    if len({t.shape[1] for t in tens}) > 1:
        raise ValueError("all items must have the same frame dimension")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # (P, 2)
    lens = np.array([t.shape[0] for t in tens], dtype=np.int64)
    if (lens == 0).any():
        raise ValueError(f"item {int(np.flatnonzero(lens == 0)[0])} has no frame")
    frames = torch.cat(tens)  # (T, d)
    if frame_distance != "euclidean":
        frames = _unit_rows(frames)
    offsets = np.concatenate([[0], np.cumsum(lens)])  # (n+1,)
    block = np.zeros(len(tens), dtype=np.int64)  # block id of each item
    b, start = 0, 0
    for i in range(len(tens)):
        if offsets[i + 1] - start > block_frames and i > 0 and offsets[i] > start:
            b, start = b + 1, offsets[i]
        block[i] = b
    block_start = np.zeros(b + 1, dtype=np.int64)  # first frame of each block
    block_end = np.zeros(b + 1, dtype=np.int64)
    for i in range(len(tens) - 1, -1, -1):
        block_start[block[i]] = offsets[i]
    for i in range(len(tens)):
        block_end[block[i]] = offsets[i + 1]

    first, second = pairs[:, 0], pairs[:, 1]  # DTW(items[first], items[second]): first indexes rows
    out = torch.empty(len(pairs), dtype=torch.float64)
    b_lo = np.minimum(block[first], block[second])
    b_hi = np.maximum(block[first], block[second])
    bp = b_lo * (b + 1) + b_hi  # unordered block pair: one frame-distance matrix each
    order = np.lexsort((lens[second], lens[first], bp))  # by block pair, then by shape
    bp_sorted = bp[order]
    starts = np.flatnonzero(np.r_[True, bp_sorted[1:] != bp_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    max_len = int(lens.max())
    for g0, g1 in zip(starts, ends):
        bi, bj = divmod(int(bp_sorted[g0]), b + 1)
        dist = _frame_matrix(
            frames[block_start[bi] : block_end[bi]],
            frames[block_start[bj] : block_end[bj]],
            frame_distance,
            normalised=True,
        )  # (T_I, T_J)
        padded = {}  # orientation -> (flat, front, T2); the transpose serves pairs whose first item is in bj
        s0 = g0
        while s0 < g1:
            # Sorted by first length: the batch's N is its last pair's; size it to the element budget.
            guess = min(g1, s0 + max(1, batch_elements // (int(lens[first[order[s0]]]) + 1)))
            size = max(1, batch_elements // (int(lens[first[order[guess - 1]]]) + 1))
            idx = order[s0 : min(g1, s0 + size)]
            s0 += len(idx)
            f, sc = first[idx], second[idx]
            straight = block[f] == bi  # rows of `dist` are the first item's frames
            for sel, transposed in ((straight, False), (~straight, True)):
                if not sel.any():
                    continue
                if transposed not in padded:
                    mat = dist.T.contiguous() if transposed else dist  # (rows: first item's block)
                    flat, front = _padded(mat, max_len)
                    padded[transposed] = (flat, front, mat.shape[1])
                flat, front, t2 = padded[transposed]
                row_block, col_block = (bj, bi) if transposed else (bi, bj)
                fs, ss = f[sel], sc[sel]
                n, m = torch.from_numpy(lens[fs]), torch.from_numpy(lens[ss])
                row_off = torch.from_numpy(offsets[fs] - block_start[row_block])
                col_off = torch.from_numpy(offsets[ss] - block_start[col_block])
                costk = _lattices(flat, front, t2, row_off, col_off, n, m)  # (K, P, N+1)
                out[torch.from_numpy(idx[sel])] = _dtw_skewed(costk, n, m)
    return out


class ABXCell(NamedTuple):
    label_a: Any
    label_b: Any
    context: Any
    speaker: Any
    speaker_x: Any  # equal to `speaker` in within mode
    score: float  # mean error over the cell's (sampled) triplets
    n_triplets: int


def _keys(values: Any, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=np.int64)
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one entry per item ({n}), got shape {arr.shape}")
    return arr


def abx_cells(
    items: Sequence[Any],
    labels: Any,
    contexts: Any = None,
    speakers: Any = None,
    mode: str = "within",
    distance: str = "dtw",
    frame_distance: str = "angular",
    max_triplets_per_cell: int | None = None,
    seed: int = 0,
) -> list[ABXCell]:
    """Score every ABX cell; see the module docstring. ``items[i]`` is ``(n_i, d)``."""
    if mode not in ("within", "across"):
        raise ValueError(f"mode must be 'within' or 'across', got {mode!r}")
    if distance not in _DIST:
        raise ValueError(f"distance must be one of {_DIST}, got {distance!r}")
    if frame_distance not in _FRAME:
        raise ValueError(f"frame_distance must be one of {_FRAME}, got {frame_distance!r}")
    if max_triplets_per_cell is not None and max_triplets_per_cell < 1:
        raise ValueError(f"max_triplets_per_cell must be >= 1 or None, got {max_triplets_per_cell}")
    n = len(items)
    if n < 3:
        raise ValueError(f"ABX needs at least 3 items, got {n}")
    if mode == "across" and speakers is None:
        raise ValueError("mode='across' needs speakers")
    labels = _keys(labels, n, "labels")
    ctx = _keys(contexts, n, "contexts")
    spk = _keys(speakers, n, "speakers")
    tens = [_to_tensor(x) for x in items]
    dims = {t.shape[1] for t in tens}
    if len(dims) != 1:
        raise ValueError(f"all items must have the same frame dimension, got {sorted(dims)}")
    empty = [i for i, t in enumerate(tens) if t.shape[0] == 0]
    if empty:
        raise ValueError(f"item {empty[0]} has no frame")

    groups: dict[tuple, list[int]] = defaultdict(list)  # (context, speaker, label) -> items
    for i in range(n):
        groups[(ctx[i], spk[i], labels[i])].append(i)
    by_cs: dict[tuple, list] = defaultdict(list)  # (context, speaker) -> labels present
    for c, s, lab in groups:
        by_cs[(c, s)].append(lab)

    # Cells as (label_a, label_b, context, speaker, speaker_x, A items, B items, X items).
    cells = []
    for (c, s), labs in by_cs.items():
        for la in labs:
            for lb in labs:
                if la == lb:
                    continue
                a_items, b_items = groups[(c, s, la)], groups[(c, s, lb)]
                if mode == "within":
                    if len(a_items) >= 2:
                        cells.append((la, lb, c, s, s, a_items, b_items, a_items))
                else:
                    for (c2, s2), labs2 in by_cs.items():
                        if c2 == c and s2 != s and la in labs2:
                            cells.append((la, lb, c, s, s2, a_items, b_items, groups[(c, s2, la)]))
    if not cells:
        raise ValueError(f"no ABX cell has a valid triplet in mode={mode!r} (check labels/speakers/contexts)")

    rng = np.random.default_rng(seed)
    # Per cell either sampled triplets (x, a, b) or None (all triplets, scored from matrices).
    sampled: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
    keys = []  # int64 keys min(i, j) * n + max(i, j) of the pairs whose distance is needed
    for la, lb, c, s, sx, a_items, b_items, x_items in cells:
        a_arr, b_arr, x_arr = np.asarray(a_items), np.asarray(b_items), np.asarray(x_items)
        na, nb, nx = len(a_arr), len(b_arr), len(x_arr)
        na_eff = na - 1 if mode == "within" else na  # within: X is another item than A
        total = nx * na_eff * nb
        if max_triplets_per_cell is None or total <= max_triplets_per_cell:
            sampled.append(None)
            xa = np.repeat(x_arr, na), np.tile(a_arr, nx)  # (nx * na,) each
            keys.append(_pair_keys(xa[0][xa[0] != xa[1]], xa[1][xa[0] != xa[1]], n))  # no self-pairs
            keys.append(_pair_keys(np.repeat(x_arr, nb), np.tile(b_arr, nx), n))  # (nx * nb,)
            continue
        flat = rng.choice(total, size=max_triplets_per_cell, replace=False)
        xi, rem = np.divmod(flat, na_eff * nb)
        ai, bi = np.divmod(rem, nb)
        if mode == "within":
            ai = ai + (ai >= xi)  # skip a == x
        x, a, b = x_arr[xi], a_arr[ai], b_arr[bi]
        sampled.append((x, a, b))
        keys.append(_pair_keys(x, a, n))
        keys.append(_pair_keys(x, b, n))
    all_keys = np.concatenate(keys)
    if n * n <= _DENSE_KEYS:  # dense position table: faster than sorting and binary search
        needed = np.zeros(n * n, dtype=bool)
        needed[all_keys] = True
        uniq = np.flatnonzero(needed)  # (U,) sorted
        position = np.cumsum(needed, dtype=np.int64) - 1  # (n*n,) key -> index into uniq
    else:
        uniq = np.unique(all_keys)  # (U,) sorted
        position = None
    del all_keys
    pairs = np.stack(np.divmod(uniq, n), 1)  # (U, 2)
    if distance == "dtw":
        # Items grouped by (context, speaker) so that DTW blocks hold items that are compared.
        order = sorted(range(n), key=lambda i: (str(ctx[i]), str(spk[i])))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        dist = pairwise_dtw([tens[i] for i in order], rank[pairs], frame_distance).numpy()
    else:
        dist = _pooled_distances(torch.stack([t.mean(0) for t in tens]), pairs, frame_distance)  # (U,)

    def lookup(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        k = _pair_keys(i, j, n)
        pos = position[k] if position is not None else np.searchsorted(uniq, k)
        return dist[np.clip(pos, 0, len(uniq) - 1)]  # self-pairs (never scored) land anywhere

    out = []
    for (la, lb, c, s, sx, a_items, b_items, x_items), smp in zip(cells, sampled):
        if smp is not None:
            x, a, b = smp
            dax, dbx = lookup(x, a), lookup(x, b)
            err = _errors(dax, dbx)
            out.append(ABXCell(*_py(la, lb, c, s, sx), float(err.mean()), len(x)))
            continue
        a_arr, b_arr, x_arr = np.asarray(a_items), np.asarray(b_items), np.asarray(x_items)
        na, nb, nx = len(a_arr), len(b_arr), len(x_arr)
        dxa = lookup(np.repeat(x_arr, na), np.tile(a_arr, nx)).reshape(nx, na)  # (nx, na)
        dxb = lookup(np.repeat(x_arr, nb), np.tile(b_arr, nx)).reshape(nx, nb)  # (nx, nb)
        valid = x_arr[:, None] != a_arr[None, :]  # (nx, na) X is not A
        total_err, count = 0.0, 0
        step = max(1, 4_000_000 // max(1, na * nb))  # bound the (chunk, na, nb) comparison
        for s0 in range(0, nx, step):
            da = dxa[s0 : s0 + step, :, None]  # (c, na, 1)
            db = dxb[s0 : s0 + step, None, :]  # (c, 1, nb)
            err = _errors(da, db)  # (c, na, nb)
            v = valid[s0 : s0 + step]  # (c, na)
            total_err += float((err.sum(2) * v).sum())
            count += int(v.sum()) * nb
        out.append(ABXCell(*_py(la, lb, c, s, sx), total_err / count, count))
    return out


def _pooled_distances(
    vecs: Tensor, pairs: np.ndarray, frame_distance: str, block_elements: int = 4_000_000
) -> np.ndarray:
    """Frame distance between vecs[first] and vecs[second] for pairs (U, 2) sorted by first -> (U,).

    Rows of the full distance matrix are computed a block at a time (one matrix product
    for angular/cosine, exact differences for euclidean) and the pairs' entries picked.
    """
    n = vecs.shape[0]
    if frame_distance != "euclidean":
        vecs = _unit_rows(vecs)
    out = np.empty(len(pairs))
    rows = max(1, block_elements // n)
    bounds = np.searchsorted(pairs[:, 0], np.arange(0, n + rows, rows))  # pairs per row block
    for r, (p0, p1) in enumerate(itertools.pairwise(bounds)):
        if p0 == p1:
            continue
        block = vecs[r * rows : (r + 1) * rows]  # (B, d)
        mat = _frame_matrix(block, vecs, frame_distance, normalised=True)  # (B, n)
        sel = pairs[p0:p1]
        out[p0:p1] = mat[torch.from_numpy(sel[:, 0] - r * rows), torch.from_numpy(sel[:, 1])].numpy()
    return out


def _py(*values: Any) -> list[Any]:
    """numpy scalars -> Python scalars (readable cells, plain CSV/JSON)."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _errors(dax: np.ndarray, dbx: np.ndarray) -> np.ndarray:
    """1 where d(A, X) > d(B, X), 0.5 on a tie (equal to _TIE_RTOL relative), else 0."""
    tie = np.abs(dax - dbx) <= _TIE_RTOL * np.maximum(dax, dbx)
    return np.where(tie, 0.5, np.where(dax > dbx, 1.0, 0.0))


def _pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Unordered pair (i, j) -> min * n + max (int64)."""
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    return np.minimum(i, j) * n + np.maximum(i, j)


def collapse_cells(cells: Sequence[ABXCell], has_context: bool = True) -> float:
    """Collapse cell scores to one error rate with the ZeroSpeech order (module docstring)."""

    def mean_over(rows: list[tuple[tuple, float]]) -> list[tuple[tuple, float]]:
        acc: dict[tuple, list[float]] = defaultdict(list)
        for key, v in rows:
            acc[key].append(v)
        return [(k, float(np.mean(v))) for k, v in acc.items()]

    # Level 1: drop context (and speaker_x) -> key (la, lb, speaker); level 2: drop speaker.
    if has_context:
        rows = mean_over([((c.label_a, c.label_b, c.speaker), c.score) for c in cells])
        rows = mean_over([((k[0], k[1]), v) for k, v in rows])
    else:
        rows = mean_over([((c.label_a, c.label_b), c.score) for c in cells])
    return float(np.mean([v for _, v in rows]))


def abx_error_rate(
    items: Sequence[Any],
    labels: Any,
    contexts: Any = None,
    speakers: Any = None,
    mode: str = "within",
    distance: str = "dtw",
    frame_distance: str = "angular",
    max_triplets_per_cell: int | None = None,
    seed: int = 0,
) -> float:
    """ABX error rate in [0, 1] (0.5 = chance) of ``items[i] (n_i, d)`` with ``labels[i]``.

    ``contexts`` / ``speakers``: one value per item, or None (all the same). See the module
    docstring for the triplets, cells, collapse order and distances.
    """
    cells = abx_cells(
        items, labels, contexts, speakers, mode, distance, frame_distance, max_triplets_per_cell, seed
    )
    return collapse_cells(cells, has_context=contexts is not None)
