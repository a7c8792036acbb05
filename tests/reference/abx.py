"""Deliberately literal reference for src/functional/abx.py (tests only).

A textbook O(n m) DTW with an explicit backtrack, and an ABX that loops over every
triplet of every cell and collapses with explicit dictionaries.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def frame_distance(u: np.ndarray, v: np.ndarray, name: str) -> float:
    if name == "euclidean":
        return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(u, v)))
    nu, nv = math.sqrt(float(u @ u)), math.sqrt(float(v @ v))
    cos = 0.0 if nu == 0 or nv == 0 else float(u @ v) / (nu * nv)
    cos = min(1.0, max(-1.0, cos))
    return 1.0 - cos if name == "cosine" else math.acos(cos) / math.pi


def dtw(a, b, name: str = "angular") -> float:
    """Accumulated cost of the best path / number of cells on the backtracked path.

    Steps (i-1, j), (i-1, j-1), (i, j-1); backtrack prefers diagonal, then left, then up.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    n, m = len(a), len(b)
    c = [[frame_distance(a[i], b[j], name) for j in range(m)] for i in range(n)]
    d = [[0.0] * m for _ in range(n)]
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                d[i][j] = c[0][0]
            elif i == 0:
                d[i][j] = c[i][j] + d[i][j - 1]
            elif j == 0:
                d[i][j] = c[i][j] + d[i - 1][j]
            else:
                d[i][j] = c[i][j] + min(d[i - 1][j], d[i - 1][j - 1], d[i][j - 1])
    i, j, length = n - 1, m - 1, 1
    while i > 0 and j > 0:
        up, left, diag = d[i - 1][j], d[i][j - 1], d[i - 1][j - 1]
        if diag <= left and diag <= up:
            i, j = i - 1, j - 1
        elif left <= up:
            j -= 1
        else:
            i -= 1
        length += 1
    length += i + j  # the rest runs along the first row or column
    return d[n - 1][m - 1] / length


def item_distance(a, b, distance: str, name: str) -> float:
    if distance == "dtw":
        return dtw(a, b, name)
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    return frame_distance(a.mean(0), b.mean(0), name)


def abx(items, labels, contexts=None, speakers=None, mode="within", distance="dtw", name="angular") -> float:
    n = len(items)
    ctx = list(contexts) if contexts is not None else [0] * n
    spk = list(speakers) if speakers is not None else [0] * n
    cells = defaultdict(list)  # (la, lb, c, s, sx) -> errors of its triplets
    for x in range(n):
        for a in range(n):
            if a == x or labels[a] != labels[x] or ctx[a] != ctx[x]:
                continue
            if mode == "within" and spk[a] != spk[x]:
                continue
            if mode == "across" and spk[a] == spk[x]:
                continue
            for b in range(n):
                if labels[b] == labels[a] or ctx[b] != ctx[a] or spk[b] != spk[a]:
                    continue
                # DTW is computed once per unordered pair, lower index first (as the production code).
                dax = item_distance(items[min(a, x)], items[max(a, x)], distance, name)
                dbx = item_distance(items[min(b, x)], items[max(b, x)], distance, name)
                err = 1.0 if dax > dbx else (0.5 if dax == dbx else 0.0)
                cells[(labels[a], labels[b], ctx[a], spk[a], spk[x])].append(err)
    score = {k: sum(v) / len(v) for k, v in cells.items()}
    # ZeroSpeech collapse: context (with speaker_x) -> speaker -> (la, lb); without
    # contexts, speaker and speaker_x together -> (la, lb).
    if contexts is not None:
        lvl1 = defaultdict(list)
        for (la, lb, _c, s, _sx), v in score.items():
            lvl1[(la, lb, s)].append(v)
        lvl2 = defaultdict(list)
        for (la, lb, s), v in lvl1.items():
            lvl2[(la, lb)].append(sum(v) / len(v))
    else:
        lvl2 = defaultdict(list)
        for (la, lb, _c, s, _sx), v in score.items():
            lvl2[(la, lb)].append(v)
    finals = [sum(v) / len(v) for v in lvl2.values()]
    return sum(finals) / len(finals)
