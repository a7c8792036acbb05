"""Probing controls and metrics: control tasks, selectivity, per-group accuracy, and the
additive per-item statistics (macro F1, R^2) that :mod:`src.functional.intervals` bootstraps.

numpy only. Types, labels and groups may be any hashable numpy-sortable values (ints,
strings); they are ordered as ``np.unique`` orders them, and that order is part of the
contract (it fixes which random draw goes to which type). The bootstrap engine itself
(``bootstrap_ci``, ``bootstrap_from_sums``, ``bootstrap_group_sums``) lives in
:mod:`src.functional.intervals`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from src.functional.intervals import group_sums

__all__ = [
    "accuracy_by_group",
    "control_task_labels",
    "macro_f1_fn",
    "macro_f1_group_sums",
    "macro_f1_stats",
    "r2_fn",
    "r2_stats",
    "selectivity",
]


# ---------------------------------------------------------------------- control tasks
def control_task_labels(
    type_ids: Any,
    num_control_classes: int | None = None,
    seed: int = 0,
    distribution: str = "empirical",
    *,
    task_labels: Any = None,
    label_counts: Any = None,
) -> tuple[dict[Hashable, int], np.ndarray]:
    """Hewitt & Liang (2019) control task: one random label per TYPE, shared by all its tokens.

    type_ids: ``(n,)`` the type of each token (e.g. the phone or word identity of each
        frame or segment).
    task_labels: ``(n,)`` the real task's label of each token. ``None`` means the real
        task is to predict the type itself (e.g. phone identity), so its labels are
        `type_ids`.
    distribution:
        ``"empirical"`` (the paper's definition): each type's control label is drawn
        independently from the empirical token distribution of the real task's labels,
        ``P(c) = #tokens with label c / n``. Control label ``c`` is an index into
        ``np.unique(task_labels)``; the number of control classes is the real task's.
        Because a type's label does not depend on its frequency, the token-level
        distribution of control labels equals the real one in expectation (not exactly:
        a frequent type takes all its tokens to one label), which is as close to "the
        same label entropy" as a type-level mapping can get.
        ``"uniform"``: uniform over ``num_control_classes`` labels (default: the number
        of distinct real labels).
    seed: the mapping is a function of (sorted distinct types, real label distribution,
        seed) only, never of token order.
    label_counts: ``(K,)`` token counts of the real labels to draw from (e.g. those of the
        training split only, so no test label informs the control task); overrides the
        distribution of `task_labels`.

    Returns ``(mapping, control_labels)``: ``mapping[type] -> int`` and the ``(n,)`` int64
    control label of every token.
    """
    types = np.asarray(type_ids)
    if types.ndim != 1 or types.size == 0:
        raise ValueError(f"type_ids must be a non-empty 1-D array, got shape {types.shape}")
    labels = types if task_labels is None else np.asarray(task_labels)
    if labels.shape != types.shape:
        raise ValueError(f"task_labels shape {labels.shape} differs from type_ids shape {types.shape}")
    uniq_types, type_index = np.unique(types, return_inverse=True)  # (T,), (n,)
    if label_counts is None:
        _, label_counts = np.unique(labels, return_counts=True)  # (K,)
    else:
        label_counts = np.asarray(label_counts, dtype=np.float64)
        if label_counts.ndim != 1 or (label_counts < 0).any() or label_counts.sum() <= 0:
            raise ValueError("label_counts must be a 1-D array of non-negative counts with a positive sum")
    rng = np.random.default_rng(seed)
    if distribution == "empirical":
        if num_control_classes is not None and num_control_classes != label_counts.size:
            raise ValueError(
                f"distribution='empirical' uses the real task's {label_counts.size} classes; "
                f"num_control_classes={num_control_classes} needs distribution='uniform'"
            )
        probs = label_counts / label_counts.sum()  # (K,)
        per_type = rng.choice(label_counts.size, size=uniq_types.size, p=probs)  # (T,)
    elif distribution == "uniform":
        k = label_counts.size if num_control_classes is None else int(num_control_classes)
        if k < 1:
            raise ValueError(f"num_control_classes must be >= 1, got {num_control_classes}")
        per_type = rng.integers(0, k, size=uniq_types.size)  # (T,)
    else:
        raise ValueError(f"distribution must be 'empirical' or 'uniform', got {distribution!r}")
    per_type = per_type.astype(np.int64)
    mapping = dict(zip(uniq_types.tolist(), per_type.tolist(), strict=True))
    return mapping, per_type[type_index]  # (n,)


def selectivity(task_acc: Any, control_acc: Any) -> Any:
    """Selectivity (Hewitt & Liang 2019): real-task accuracy minus control-task accuracy."""
    return np.subtract(task_acc, control_acc)


# ---------------------------------------------------------------------- groups
def accuracy_by_group(correct: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy within each group: ``(group_ids (G,), accuracy (G,), counts (G,))``."""
    ids, sums, counts = group_sums(np.asarray(correct, dtype=np.float64), groups)
    return ids, sums / counts, counts


# ---------------------------------------------------------------------- additive metric statistics
def macro_f1_fn(num_classes: int):
    """Macro F1 from summed stats ``(..., 3C)`` [tp_c, predicted_c, true_c] (see `macro_f1_stats`)."""
    C = int(num_classes)

    def fn(s: np.ndarray) -> np.ndarray:
        tp, pc, tc = s[..., :C], s[..., C : 2 * C], s[..., 2 * C :]
        present = (pc + tc) > 0
        f1 = np.where(present, 2 * tp / np.where(present, pc + tc, 1.0), 0.0)
        return f1.sum(-1) / np.maximum(present.sum(-1), 1)

    return fn


def macro_f1_group_sums(pred: Any, target: Any, group_index: Any, n_groups: int, num_classes: int) -> np.ndarray:
    """Per-group sums ``(G, 3C)`` of `macro_f1_stats`' per-item stats, without the ``(n, 3C)`` array.

    group_index ``(n,)``: each item's group in ``np.unique(groups)`` order (``return_inverse``).
    The counts are integers, so they equal ``group_sums(macro_f1_stats(...)[0], groups)`` exactly.
    """
    p, t = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
    gi, C, G = np.asarray(group_index, dtype=np.int64), int(num_classes), int(n_groups)
    m = 3 * C
    hit = p == t
    out = np.bincount(gi[hit] * m + p[hit], minlength=G * m).astype(np.float64)  # tp
    out += np.bincount(gi * m + C + p, minlength=G * m)  # predicted
    out += np.bincount(gi * m + 2 * C + t, minlength=G * m)  # true
    return out.reshape(G, m)


def macro_f1_stats(pred: Any, target: Any, num_classes: int) -> tuple[np.ndarray, Any]:
    """Per-item additive stats ``(n, 3C)`` [tp_c, predicted_c, true_c] and the macro-F1 function.

    Macro F1 averages the per-class F1 over classes that occur in the targets or the
    predictions (as scikit-learn's ``f1_score(average="macro")`` and torchmetrics').
    """
    p, t = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
    C, n = int(num_classes), len(p)
    stats = np.zeros((n, 3 * C))
    rows = np.arange(n)
    stats[rows[p == t], p[p == t]] = 1.0  # tp
    stats[rows, C + p] = 1.0  # predicted
    stats[rows, 2 * C + t] = 1.0  # true
    return stats, macro_f1_fn(C)


def r2_stats(pred: Any, target: Any) -> tuple[np.ndarray, Any]:
    """Per-item stats ``(n, 1 + 3k)`` [1, y, y^2, (y - o)^2] and the per-target R^2 function
    (``1 - SS_res / SS_tot``, as torchmetrics' and scikit-learn's ``r2_score``)."""
    o = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    y = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    mu = y.mean(0)
    yc, k = y - mu, y.shape[1]  # centring keeps the sums well conditioned
    stats = np.concatenate([np.ones((len(y), 1)), yc, yc * yc, (y - o) ** 2], axis=1)
    return stats, r2_fn(k)


def r2_fn(k: int):
    """Per-target R^2 from summed `r2_stats` stats ``(..., 1 + 3k)`` (NaN for a constant target)."""

    def fn(s: np.ndarray) -> np.ndarray:
        n, sy, syy, sres = s[..., :1], s[..., 1 : 1 + k], s[..., 1 + k : 1 + 2 * k], s[..., 1 + 2 * k :]
        sst = syy - sy**2 / n
        return np.where(sst > 0, 1 - sres / np.where(sst > 0, sst, 1.0), np.nan)

    return fn
