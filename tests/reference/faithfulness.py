"""Deliberately literal reference for src/functional/faithfulness.py and src/functional/agreement.py.

Plain Python loops over lists of floats: every perturbed input is built element by element, every
ranking by repeated selection of the maximum, every score by one call of ``f`` on one input, each AOPC
written as its paper / code describes it. Used only by tests (slow by design).
"""

from __future__ import annotations

import math


def rank_units(scores, units):
    """Units by descending score, ties: lower index first (repeated selection of the maximum)."""
    left = list(units)
    out = []
    while left:
        best = left[0]
        for u in left[1:]:
            if scores[u] > scores[best] or (scores[u] == scores[best] and u < best):
                best = u
        out.append(best)
        left.remove(best)
    return out


def perturb(x0, baseline, mask, replaced):
    """x0, baseline, mask: flat lists; replaced: a set of segment indices. Element by element."""
    out = []
    for i in range(len(x0)):
        if mask[i] >= 0 and mask[i] in replaced:
            out.append(baseline[i])
        else:
            out.append(x0[i])
    return out


def comprehensiveness(f, x0, baseline, mask, scores, units, k):
    order = rank_units(scores, units)
    removed = set(order[:k])
    return f(x0) - f(perturb(x0, baseline, mask, removed))


def sufficiency(f, x0, baseline, mask, scores, units, k):
    order = rank_units(scores, units)
    kept = set(order[:k])
    removed = set(u for u in units if u not in kept)
    return f(x0) - f(perturb(x0, baseline, mask, removed))


def aopc_eraser(f, x0, baseline, mask, scores, units, measure):
    """DeYoung et al.: bins 1, 5, 10, 20, 50 %; k = ceil(b m) (at least 1, at most m); mean over the 5 bins."""
    m = len(units)
    fn = comprehensiveness if measure == "comprehensiveness" else sufficiency
    total = 0.0
    for percent in (1, 5, 10, 20, 50):
        k = -(-(percent * m) // 100)  # exact integer ceiling of percent * m / 100
        k = max(1, min(m, k))
        total += fn(f, x0, baseline, mask, scores, units, k)
    return total / 5


def aopc_all_k(f, x0, baseline, mask, scores, units, measure):
    m = len(units)
    fn = comprehensiveness if measure == "comprehensiveness" else sufficiency
    total = 0.0
    for k in range(1, m + 1):
        total += fn(f, x0, baseline, mask, scores, units, k)
    return total / m


def aopc_ferret(f, x0, baseline, mask, scores, units, measure):
    """ferret's faithfulness_measures_speech.py with _get_id_tokens_percentage / _get_id_tokens_top_k,
    transcribed: thresholds numpy.arange(0.1, 1.1, 0.1) written out as the same float steps."""
    word_scores = [scores[u] for u in units]  # ferret's explanation.scores: one per word
    n = len(word_scores)
    thresholds = []
    for i in range(10):
        thresholds.append(0.1 + i * 0.1)  # numpy.arange(0.1, 1.1, 0.1) holds start + i * step
    importances = []
    last = None
    for v_frac in thresholds:
        v = int(v_frac * n)
        if not (v > 0 and v <= n):
            continue  # id_top is None
        order = rank_units(word_scores, range(n))[:v]
        id_top = [i for i in order if word_scores[i] > 0]
        if last is not None and set(id_top) == last:
            continue
        last = set(id_top)
        chosen = set(units[i] for i in id_top)
        if measure == "comprehensiveness":
            removed = chosen
        else:
            removed = set(u for u in units if u not in chosen)
        importances.append(f(x0) - f(perturb(x0, baseline, mask, removed)))
    if not importances:
        return 0
    return sum(importances) / len(importances)


def deletion_curve(f, x0, baseline, mask, scores, units):
    order = rank_units(scores, units)
    return [f(perturb(x0, baseline, mask, set(order[:k]))) for k in range(len(order) + 1)]


def insertion_curve(f, x0, baseline, mask, scores, units):
    order = rank_units(scores, units)
    out = []
    for k in range(len(order) + 1):
        kept = set(order[:k])
        out.append(f(perturb(x0, baseline, mask, set(u for u in units if u not in kept))))
    return out


def trapezoid(y):
    m = len(y) - 1
    area = 0.0
    for k in range(m):
        area += (y[k] + y[k + 1]) / 2 * (1 / m)
    return area


# ----------------------------------------------------------------------------- agreement


def average_ranks(x):
    """1-based ranks, ties get the mean of the ranks they span."""
    n = len(x)
    ranks = [0.0] * n
    for i in range(n):
        less = sum(1 for j in range(n) if x[j] < x[i])
        equal = sum(1 for j in range(n) if x[j] == x[i])
        ranks[i] = less + (equal + 1) / 2
    return ranks


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((a[i] - ma) * (b[i] - mb) for i in range(n))
    va = sum((a[i] - ma) ** 2 for i in range(n))
    vb = sum((b[i] - mb) ** 2 for i in range(n))
    return cov / math.sqrt(va * vb)


def spearman(a, b):
    return pearson(average_ranks(a), average_ranks(b))


def kendall_tau_b(a, b):
    """(concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b)), pairs counted one by one."""
    n = len(a)
    conc = disc = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0:
                ties_a += 1
            if db == 0:
                ties_b += 1
            if da * db > 0:
                conc += 1
            elif da * db < 0:
                disc += 1
    n0 = n * (n - 1) // 2
    return (conc - disc) / math.sqrt((n0 - ties_a) * (n0 - ties_b))


def top_k_overlap(a, b, k):
    k = min(k, len(a))
    ta = set(rank_units(a, range(len(a)))[:k])
    tb = set(rank_units(b, range(len(b)))[:k])
    return len(ta & tb) / k
