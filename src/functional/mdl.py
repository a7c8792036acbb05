"""Minimum description length probing: the online code of Voita & Titov (2020).

The labels ``y_1..y_n`` are sent in blocks given the representations. Block boundaries are
cumulative sizes ``t_1 < t_2 < ... < t_S = n``. The first block ``[0, t_1)`` goes with the
uniform code (``t_1 * log2 K`` bits); block ``[t_i, t_{i+1})`` costs
``sum -log2 p_i(y | x)`` under a probe trained on examples ``[0, t_i)``. The online
codelength is the total; compression is ``n * log2 K / codelength`` (1 = no better than
uniform). The order of the examples matters: pass them shuffled (or give `seed`).

Why by hand: no maintained library implements the online code; the probe is the caller's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MDL_FRACTIONS_PERCENT",
    "OnlineCodeResult",
    "mdl_block_schedule",
    "online_code_probe",
    "online_codelength",
]

#: Voita & Titov (2020) timesteps, in percent of the training set.
MDL_FRACTIONS_PERCENT: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25.0, 50.0, 100.0)
# The same in parts per 10,000, so that sizes are exact integer floors (no float rounding).
_PER_10K: tuple[int, ...] = (10, 20, 40, 80, 160, 320, 625, 1250, 2500, 5000, 10000)


def mdl_block_schedule(n_train: int) -> list[int]:
    """Cumulative block ends ``[t_1, ..., n_train]`` for the paper's timesteps.

    ``t_i = floor(n_train * fraction_i)`` (the authors' ``int(fraction * n)``); ends that
    are 0 or repeat an earlier end (small ``n_train``) are dropped, so every block is
    non-empty.

    >>> mdl_block_schedule(1000)
    [1, 2, 4, 8, 16, 32, 62, 125, 250, 500, 1000]
    """
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    ends: list[int] = []
    for p in _PER_10K:
        t = n_train * p // 10000
        if t > 0 and (not ends or t > ends[-1]):
            ends.append(t)
    return ends


def snap_schedule(ends: Sequence[int], boundaries: Any) -> list[int]:
    """Move each block end up to the next unit boundary (cumulative unit sizes), so no unit
    (utterance, text) is split between a training prefix and the block it codes.

    ``boundaries`` are the cumulative item counts at the end of each unit, in the order the
    units are coded; the last boundary is the number of items.  Repeated ends are merged.

    >>> snap_schedule([1, 2, 4, 8, 10], [3, 6, 10])
    [3, 6, 10]
    """
    b = np.asarray(boundaries, dtype=np.int64)
    if b.ndim != 1 or b.size == 0 or (np.diff(b) <= 0).any() or b[0] <= 0:
        raise ValueError("boundaries must be strictly increasing positive cumulative unit sizes")
    out: list[int] = []
    for e in ends:
        j = min(int(np.searchsorted(b, int(e), side="left")), b.size - 1)
        t = int(b[j])
        if not out or t > out[-1]:
            out.append(t)
    if out[-1] != int(b[-1]):
        out.append(int(b[-1]))
    return out


@dataclass(frozen=True)
class OnlineCodeResult:
    codelength_bits: float  # online codelength, first block uniform
    uniform_codelength_bits: float  # n * log2 K
    compression: float  # uniform / online
    schedule: list[int]  # cumulative block ends
    block_bits: list[float]  # cost of each block, first (uniform) included

    def as_dict(self) -> dict[str, float]:
        return {
            "codelength_bits": self.codelength_bits,
            "uniform_codelength_bits": self.uniform_codelength_bits,
            "compression": self.compression,
        }


def online_codelength(
    block_losses_bits: Sequence[Any],
    first_block_size: int,
    num_classes: int,
    block_sizes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Online codelength from the per-block costs of blocks 2..S.

    block_losses_bits: one entry per transmitted block after the first; either a 1-D array
        of per-example costs ``-log2 p(y|x)`` (its length is the block size) or a scalar
        total, in which case `block_sizes` gives the sizes.
    Returns ``{"codelength_bits", "uniform_codelength_bits", "compression"}``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if first_block_size < 1:
        raise ValueError(f"first_block_size must be >= 1, got {first_block_size}")
    if block_sizes is not None and len(block_sizes) != len(block_losses_bits):
        raise ValueError(f"{len(block_sizes)} block_sizes for {len(block_losses_bits)} blocks")
    log2k = math.log2(num_classes)
    n = first_block_size
    total = first_block_size * log2k
    for i, block in enumerate(block_losses_bits):
        arr = np.asarray(block, dtype=np.float64)
        if arr.ndim == 1:
            size = arr.size
            if block_sizes is not None and block_sizes[i] != size:
                raise ValueError(f"block {i}: {arr.size} losses but block_sizes says {block_sizes[i]}")
        elif arr.ndim == 0:
            if block_sizes is None:
                raise ValueError(f"block {i} is a scalar total: give block_sizes")
            size = int(block_sizes[i])
        else:
            raise ValueError(f"block {i}: expected a scalar or 1-D array, got shape {arr.shape}")
        if (arr < 0).any():
            raise ValueError(f"block {i}: codelengths must be >= 0 bits")
        n += size
        total += float(arr.sum())
    uniform = n * log2k
    return {
        "codelength_bits": total,
        "uniform_codelength_bits": uniform,
        "compression": uniform / total if total > 0 else math.inf,
    }


def online_code_probe(
    x_train: Any,
    y_train: Any,
    num_classes: int,
    fit_fn: Callable[[Any, np.ndarray], Callable[[Any], Any]],
    schedule: Sequence[int] | None = None,
    seed: int | None = None,
) -> OnlineCodeResult:
    """Run the online code with a caller-supplied probe.

    x_train: ``(n, ...)`` indexable by row (numpy, torch, memmap); y_train: ``(n,)`` ints in
        ``[0, num_classes)``.
    fit_fn: ``fit_fn(x_prefix, y_prefix) -> predict_log_proba``, where
        ``predict_log_proba(x_block)`` returns NATURAL-log class probabilities
        ``(m, num_classes)`` with columns in class order (as scikit-learn's
        ``predict_log_proba`` when every class was seen; the caller must pad classes missing
        from small prefixes). A fresh probe is trained for every block.
    schedule: cumulative block ends (default `mdl_block_schedule(n)`), last == n.
    seed: if given, examples are permuted with ``np.random.default_rng(seed)`` first.
    """
    y = np.asarray(y_train).astype(np.int64)
    n = y.shape[0]
    if len(x_train) != n:
        raise ValueError(f"x_train has {len(x_train)} rows but y_train has {n}")
    if ((y < 0) | (y >= num_classes)).any():
        raise ValueError(f"y_train must hold class indices in [0, {num_classes})")
    if seed is not None:
        order = np.random.default_rng(seed).permutation(n)
        x_train, y = x_train[order], y[order]
    ends = list(mdl_block_schedule(n) if schedule is None else schedule)
    if not ends or ends[-1] != n or any(b <= a for a, b in zip([0, *ends], ends, strict=False)):
        raise ValueError(f"schedule must be strictly increasing positive ends finishing at n={n}, got {ends}")

    block_bits = [ends[0] * math.log2(num_classes)]
    losses = []
    for start, stop in itertools.pairwise(ends):
        predict_log_proba = fit_fn(x_train[:start], y[:start])
        logp = np.asarray(predict_log_proba(x_train[start:stop]), dtype=np.float64)  # (m, K)
        if logp.shape != (stop - start, num_classes):
            raise ValueError(
                f"predict_log_proba returned shape {logp.shape} for a block of {stop - start} "
                f"examples; expected ({stop - start}, {num_classes})"
            )
        # clip: a log-probability above 0 can only be rounding noise
        bits = np.clip(-logp[np.arange(stop - start), y[start:stop]] / math.log(2), 0, None)  # (m,)
        losses.append(bits)
        block_bits.append(float(bits.sum()))
    out = online_codelength(losses, ends[0], num_classes)
    return OnlineCodeResult(
        codelength_bits=out["codelength_bits"],
        uniform_codelength_bits=out["uniform_codelength_bits"],
        compression=out["compression"],
        schedule=ends,
        block_bits=block_bits,
    )
