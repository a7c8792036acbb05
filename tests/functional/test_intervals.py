"""src/functional/intervals.py: the ratio-of-sums interval against a literal per-resample loop.

The reference below is written out by hand (a Python loop over resamples and over the drawn
groups, plain sums, ``np.nanquantile``); it shares only the documented resample design
(``np.random.default_rng(seed).integers(0, G, size=(n_boot, G))``, groups in ``np.unique`` order)
with the code under test. The three former wrappers (CTC head PER, CTC lens, decoder/logit lens)
are the three parametrisations: a floored denominator, several ratios at once, every item its own group.
"""

import numpy as np
import pytest

from src.functional.intervals import ratio_of_sums_ci


def ratio_loop(num, den, groups, n_boot, alpha, seed, min_denominator=None):
    """(estimate, low, high) of sum(num) / sum(den) by an explicit loop; num/den (n,) or (n, L)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    groups = np.arange(len(num)) if groups is None else np.asarray(groups)
    names = sorted(set(groups.tolist()))
    members = {g: [i for i in range(len(groups)) if groups[i] == g] for g in names}

    def ratio(rows):
        sn = sum((num[i] for i in rows), np.zeros(num.shape[1:]))
        sd = sum((den[i] for i in rows), np.zeros(den.shape[1:]))
        if min_denominator is not None:
            sd = np.maximum(sd, min_denominator)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sn / sd

    idx = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))
    reps = []
    for b in range(n_boot):
        rows = []
        for j in idx[b]:
            rows.extend(members[names[j]])
        reps.append(ratio(rows))
    reps = np.array(reps)
    low, high = np.nanquantile(reps, [alpha / 2, 1 - alpha / 2], axis=0)
    return ratio(range(len(num))), low, high


def test_ratio_of_sums_floored_denominator_with_groups():
    # CTC head PER: edits / max(reference phones, 1), text groups, alpha 0.05
    rng = np.random.default_rng(0)
    e, n = rng.integers(0, 9, 30), rng.integers(0, 4, 30)
    n[:5] = 0  # some empty references, so a resample may sum to 0
    groups = rng.choice(["a", "b", "c", "d", "e", "f", "g"], 30)
    ci = ratio_of_sums_ci(e, n, groups, n_boot=300, seed=3, min_denominator=1)
    est, low, high = ratio_loop(e, n, groups, 300, 0.05, 3, min_denominator=1)
    assert ci.n_groups == 7
    assert ci.samples.shape == (300,)
    assert (ci.estimate, ci.low, ci.high) == pytest.approx((est, low, high), rel=1e-12)


def test_ratio_of_sums_per_layer_with_undefined_ratios():
    # CTC lens: (n, L) numerators and denominators, a layer with no denominator anywhere (all NaN)
    rng = np.random.default_rng(1)
    num, den = rng.random((25, 4)), rng.random((25, 4))
    den[:, 2] = 0.0
    num[:, 2] = 0.0
    den[:6, 3] = 0.0
    groups = rng.integers(0, 9, 25)
    ci = ratio_of_sums_ci(num, den, groups, n_boot=200, alpha=0.1, seed=11)
    est, low, high = ratio_loop(num, den, groups, 200, 0.1, 11)
    assert ci.estimate.shape == ci.low.shape == ci.high.shape == (4,)
    for got, want in ((ci.estimate, est), (ci.low, low), (ci.high, high)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12)
    assert np.isnan(ci.estimate[2]) and np.isnan(ci.low[2])


def test_ratio_of_sums_every_item_its_own_group():
    # decoder/logit lens rows: groups=None -> each utterance is resampled alone
    rng = np.random.default_rng(2)
    stats = rng.integers(0, 7, (15, 2)).astype(float) + [0, 1]
    ci = ratio_of_sums_ci(stats[:, 0], stats[:, 1], n_boot=250, alpha=0.05, seed=7)
    est, low, high = ratio_loop(stats[:, 0], stats[:, 1], None, 250, 0.05, 7)
    assert ci.n_groups == 15
    assert (ci.estimate, ci.low, ci.high) == pytest.approx((est, low, high), rel=1e-12)
    # the estimate is the pooled ratio, not a mean of per-item ratios
    assert ci.estimate == pytest.approx(stats[:, 0].sum() / stats[:, 1].sum())


def test_ratio_of_sums_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="numerators"):
        ratio_of_sums_ci(np.ones(4), np.ones(5))
    with pytest.raises(ValueError, match="numerators"):
        ratio_of_sums_ci(np.ones((2, 2, 2)), np.ones((2, 2, 2)))
