"""Benchmark: `bootstrap_ci` (one matrix product per statistic) vs a naive per-resample loop.

The naive reference is what a notebook does: for each of the ``n_boot`` resamples, gather
the items of the drawn utterances (``np.concatenate`` of their index ranges), and compute
the statistic from scratch (accuracy = mean of 0/1 correctness; Pearson r per target with
``np.corrcoef``-style centring). It uses the same resample design
(``bootstrap_indices(G, n_boot, seed)``), so both give the same replicates, and the
intervals are compared.

Moved here from tests/functional/test_probing.py (``test_bootstrap_is_fast``): a wall-time
bound fails on a loaded machine, a ratio printed by a benchmark does not.

    .venv/bin/python bench/bootstrap.py                       # 100 utterances, 12 targets, 1000 resamples
    .venv/bin/python bench/bootstrap.py --utterances 400 --n-boot 2000

Last line: ``ratio_accuracy=<naive / ours> ratio_pearson=<naive / ours>
t_accuracy=<s> t_pearson=<s> max_abs_delta=<max |interval difference|>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import best_of, report
from src.functional.intervals import bootstrap_ci, bootstrap_indices


def naive_bootstrap(values, groups, n_boot, seed, alpha=0.05, target=None):
    """Per-resample loop: gather the drawn groups' items, recompute the statistic."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    members = [order[bounds[g] : bounds[g + 1]] for g in range(len(uniq))]  # item indices per group
    idx = bootstrap_indices(len(uniq), n_boot, seed)
    reps = []
    for b in range(n_boot):
        items = np.concatenate([members[g] for g in idx[b]])
        if target is None:
            reps.append(values[items].mean())
        else:
            p, t = values[items], target[items]
            p, t = p - p.mean(0), t - t.mean(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                reps.append((p * t).sum(0) / np.sqrt((p * p).sum(0) * (t * t).sum(0)))
    reps = np.asarray(reps)
    low, high = np.nanquantile(reps, [alpha / 2, 1 - alpha / 2], axis=0)
    return low, high


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=100)
    p.add_argument("--targets", type=int, default=12)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(5)
    lengths = rng.integers(50, 300, size=args.utterances)
    groups = np.repeat(np.arange(args.utterances), lengths)  # (n,)
    pred = rng.normal(size=(groups.size, args.targets))  # (n, k)
    target = pred + rng.normal(size=pred.shape)
    correct = (rng.random(groups.size) < 0.7).astype(float)  # (n,)
    n_boot = args.n_boot
    print(f"items={groups.size} utterances={args.utterances} targets={args.targets} n_boot={n_boot}", flush=True)

    bootstrap_ci(correct, groups, n_boot=10)  # warm-up
    t_acc, ci_acc = best_of(lambda: bootstrap_ci(correct, groups, n_boot=n_boot), args.repeats)
    t_acc_ref, ref_acc = best_of(lambda: naive_bootstrap(correct, groups, n_boot, 0), 1)
    t_r, ci_r = best_of(
        lambda: bootstrap_ci(pred, groups, target=target, statistic="pearson", n_boot=n_boot), args.repeats
    )
    t_r_ref, ref_r = best_of(lambda: naive_bootstrap(pred, groups, n_boot, 0, target=target), 1)
    delta = max(
        abs(ci_acc.low - ref_acc[0]),
        abs(ci_acc.high - ref_acc[1]),
        float(np.abs(ci_r.low - ref_r[0]).max()),
        float(np.abs(ci_r.high - ref_r[1]).max()),
    )
    print(
        f"accuracy: bootstrap_ci {t_acc * 1e3:.1f} ms, naive loop {t_acc_ref * 1e3:.1f} ms; "
        f"pearson: bootstrap_ci {t_r * 1e3:.1f} ms, naive loop {t_r_ref * 1e3:.1f} ms",
        flush=True,
    )
    report(
        ratio_accuracy=t_acc_ref / t_acc,
        ratio_pearson=t_r_ref / t_r,
        t_accuracy=t_acc,
        t_pearson=t_r,
        max_abs_delta=f"{delta:.2e}",
    )


if __name__ == "__main__":
    main()
