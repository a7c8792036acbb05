"""src/functional/faithfulness.py against the literal reference (tests/reference/faithfulness.py), a toy
model whose true attribution is known, ferret's conventions on hand cases, and the random-ranking summary."""

import math

import numpy as np
import pytest
import torch

from src.functional import faithfulness as F
from tests.reference import faithfulness as ref

TOL = 1e-12
N_SEG, SEG_LEN = 7, 4  # 7 segments of 4 elements; 0 and 6 are "silences", 1..5 the ranked units
UNITS = [1, 2, 3, 4, 5]


def layout(seed=0):
    """x0 (1, 28) float64, a noise baseline, the segment mask (segment 3 split in two runs, one element
    of no segment), as flat lists too for the reference."""
    rng = np.random.default_rng(seed)
    mask = np.repeat(np.arange(N_SEG), SEG_LEN)
    mask[[13, 14]] = mask[[20, 21]]  # segments need not be contiguous
    mask[27] = -1  # an element of no segment: never replaced
    x0 = rng.normal(size=N_SEG * SEG_LEN)
    base = 0.1 * rng.normal(size=N_SEG * SEG_LEN)
    return x0, base, mask


W = np.random.default_rng(42).normal(size=N_SEG * SEG_LEN)


def f_list(x):
    """A nonlinear model with interactions between segments (reference: one list at a time)."""
    lin = sum(W[i] * x[i] for i in range(len(x)))
    s1 = sum(x[4:8])
    s3 = sum(x[12:16])
    return math.tanh(lin) + 0.3 * s1 * s3 + math.sin(x[9])


def f_torch(x):
    w = torch.as_tensor(W)
    return torch.tanh(x @ w) + 0.3 * x[:, 4:8].sum(1) * x[:, 12:16].sum(1) + torch.sin(x[:, 9])


def scorer_for(x0, base, mask, batch_size=4, f=f_torch):
    t = lambda a: torch.as_tensor(a)[None]  # noqa: E731
    return F.PerturbationScorer(f, t(x0), t(base), torch.as_tensor(mask)[None], N_SEG, batch_size=batch_size)


SCORES = [
    np.array([9.0, 0.5, -0.2, 0.3, 0.3, -0.1, 9.0]),  # ties, negatives; silences scored high (not ranked)
    np.array([0.0, 2.0, 1.0, 3.0, -1.0, 0.5, 0.0]),
    np.array([0.0, -1.0, -2.0, -0.5, -0.1, -3.0, 0.0]),  # nothing positive
]


@pytest.mark.parametrize("scores", SCORES)
def test_measures_equal_the_literal_reference(scores):
    x0, base, mask = layout()
    sc = scorer_for(x0, base, mask)
    xl, bl, ml = x0.tolist(), base.tolist(), mask.tolist()
    order = F.ranking(scores, UNITS)
    assert order.tolist() == ref.rank_units(scores, UNITS)
    c = F.curves(sc, order, UNITS)
    np.testing.assert_allclose(c.deletion, ref.deletion_curve(f_list, xl, bl, ml, scores, UNITS), atol=TOL, rtol=0)
    np.testing.assert_allclose(c.insertion, ref.insertion_curve(f_list, xl, bl, ml, scores, UNITS), atol=TOL, rtol=0)
    for k in range(len(UNITS) + 1):
        assert F.comprehensiveness(c, k) == pytest.approx(ref.comprehensiveness(f_list, xl, bl, ml, scores, UNITS, k), abs=TOL)
        assert F.sufficiency(c, k) == pytest.approx(ref.sufficiency(f_list, xl, bl, ml, scores, UNITS, k), abs=TOL)
    vals = F.aopc_from_curves(c, scores[order])
    for measure in ("comprehensiveness", "sufficiency"):
        for variant, fn in (("eraser", ref.aopc_eraser), ("all_k", ref.aopc_all_k), ("ferret", ref.aopc_ferret)):
            expect = fn(f_list, xl, bl, ml, scores, UNITS, measure)
            assert vals[(f"{measure}_aopc", variant)] == pytest.approx(expect, abs=TOL), (measure, variant)
    assert vals[("deletion_auc", "trapezoid")] == pytest.approx(ref.trapezoid(list(c.deletion)), abs=TOL)
    assert vals[("insertion_auc", "trapezoid")] == pytest.approx(ref.trapezoid(list(c.insertion)), abs=TOL)
    # the full input and the curves' ends
    assert sc.full == pytest.approx(f_list(xl), abs=TOL)
    assert c.deletion[0] == c.insertion[-1] == sc.full
    assert c.deletion[-1] == c.insertion[0]


def test_replacement_keeps_length_and_only_touches_the_segment():
    x0, base, mask = layout()
    rep = np.zeros((2, N_SEG), dtype=bool)
    rep[1, 3] = True
    x = F.replace_segments(torch.as_tensor(x0)[None], torch.as_tensor(base)[None], torch.as_tensor(mask)[None], rep)
    assert x.shape == (2, N_SEG * SEG_LEN)
    np.testing.assert_array_equal(x[0].numpy(), x0)
    np.testing.assert_array_equal(x[1].numpy(), ref.perturb(x0.tolist(), base.tolist(), mask.tolist(), {3}))
    assert (x[1].numpy() != x0).sum() == (mask == 3).sum()
    # every segment replaced still leaves the element of no segment
    allrep = np.ones((1, N_SEG), dtype=bool)
    y = F.replace_segments(torch.as_tensor(x0)[None], torch.as_tensor(base)[None], torch.as_tensor(mask)[None], allrep)
    assert y[0, 27] == x0[27] and np.all(y[0, :27].numpy() == base[:27])


def test_batching_and_memoisation_do_not_change_values():
    x0, base, mask = layout(1)
    calls = []

    def f(x):
        calls.append(len(x))
        return f_torch(x)

    s1 = scorer_for(x0, base, mask, batch_size=1)
    s5 = scorer_for(x0, base, mask, batch_size=5, f=f)
    it1 = F.item_measures(s1, SCORES[1], UNITS, n_random=6, seed=3)
    it5 = F.item_measures(s5, SCORES[1], UNITS, n_random=6, seed=3)
    for k in it1.values:
        assert it1.values[k] == pytest.approx(it5.values[k], abs=TOL)
        np.testing.assert_allclose(it1.random[k], it5.random[k], atol=TOL, rtol=0)
    assert max(calls) <= 5
    # never more evaluations than distinct replacement sets: 2^m subsets of the m units at most
    assert s5.n_evals == sum(calls) <= 2 ** len(UNITS)
    assert s5.n_evals == len(s5.cache)


def test_multi_output_scorer_shares_evaluations():
    x0, base, mask = layout()
    t = lambda a: torch.as_tensor(a)[None]  # noqa: E731
    calls = []

    def f2(x):
        calls.append(len(x))
        return torch.stack([f_torch(x), 2.0 * f_torch(x) - 1.0], dim=1)  # (B, 2)

    multi = F.PerturbationScorer(f2, t(x0), t(base), t(mask), N_SEG, batch_size=8)
    one = scorer_for(x0, base, mask)
    a = F.item_measures(multi.output(0), SCORES[1], UNITS, n_random=3, seed=0)
    n_after_first = multi.n_evals
    b = F.item_measures(multi.output(1), SCORES[1], UNITS, n_random=3, seed=0)
    assert multi.n_evals == n_after_first == sum(calls)  # the second target cost no model call
    ref_a = F.item_measures(one, SCORES[1], UNITS, n_random=3, seed=0)
    for k in a.values:
        assert a.values[k] == pytest.approx(ref_a.values[k], abs=TOL)
    key = ("comprehensiveness_aopc", "all_k")
    assert b.values[key] == pytest.approx(2.0 * a.values[key], abs=1e-9)  # differences scale by 2
    with pytest.raises(F.FaithfulnessError, match="output 2"):
        multi.output(2)


def test_random_rankings_are_seeded_permutations_of_the_scores():
    x0, base, mask = layout()
    sc = scorer_for(x0, base, mask)
    s = SCORES[1]
    it = F.item_measures(sc, s, UNITS, n_random=4, seed=11)
    perms = F.random_rankings(len(UNITS), 4, 11)
    rng = np.random.default_rng(11)
    desc = np.sort(s[UNITS])[::-1]
    for r in range(4):
        np.testing.assert_array_equal(perms[r], rng.permutation(len(UNITS)))
        rs = s.copy()
        rs[np.asarray(UNITS)[perms[r]]] = desc  # ranking units[perm], the method's sorted scores along it
        assert F.ranking(rs, UNITS).tolist() == np.asarray(UNITS)[perms[r]].tolist()
        xl, bl, ml = x0.tolist(), base.tolist(), mask.tolist()
        expect = ref.aopc_ferret(f_list, xl, bl, ml, rs, UNITS, "comprehensiveness")
        assert it.random[("comprehensiveness_aopc", "ferret")][r] == pytest.approx(expect, abs=TOL)
        d = ref.deletion_curve(f_list, xl, bl, ml, rs, UNITS)
        np.testing.assert_allclose(it.random_curves[r, 0], d, atol=TOL, rtol=0)
    # same seed -> identical numbers; another seed -> other rankings
    it2 = F.item_measures(scorer_for(x0, base, mask), s, UNITS, n_random=4, seed=11)
    np.testing.assert_array_equal(it.random[("deletion_auc", "trapezoid")], it2.random[("deletion_auc", "trapezoid")])
    assert not np.array_equal(F.random_rankings(5, 4, 12), perms)
    # the random rankings do not depend on the method's scores: another method, the same random curves
    it3 = F.item_measures(scorer_for(x0, base, mask), SCORES[0], UNITS, n_random=4, seed=11)
    np.testing.assert_allclose(it.random_curves, it3.random_curves, atol=TOL, rtol=0)


def test_toy_model_that_reads_one_segment():
    """f reads segment 2 only: its comprehensiveness is maximal, random rankings score lower, and its
    sufficiency is exactly 0 (keeping it keeps everything f sees)."""
    x0, _, mask = layout()
    base = np.zeros_like(x0)
    read = torch.as_tensor((mask == 2).astype(np.float64))

    def f(x):
        return (x * read).sum(1) ** 2 + 1.0  # f(baseline) = 1: removing segment 2 drops f by f(x) - 1

    sc = scorer_for(x0, base, mask, f=f)
    true = np.zeros(N_SEG)
    true[2] = 1.0
    true[[1, 3, 4, 5]] = [0.4, 0.3, 0.2, 0.1]
    it = F.item_measures(sc, true, UNITS, n_random=30, seed=0)
    drop = sc.full - 1.0
    assert drop > 0
    c = it.curves
    assert F.comprehensiveness(c, 1) == pytest.approx(drop, abs=TOL)
    for seg in (1, 3, 4, 5):  # removing any other single segment changes nothing
        other = np.zeros(N_SEG)
        other[seg] = 1.0
        assert F.comprehensiveness(F.curves(sc, F.ranking(other, UNITS), UNITS), 1) == pytest.approx(0.0, abs=TOL)
    assert F.sufficiency(c, 1) == pytest.approx(0.0, abs=TOL)
    for variant in ("eraser", "all_k", "ferret"):
        v = it.values[("comprehensiveness_aopc", variant)]
        assert v == pytest.approx(drop, abs=TOL)  # every k removes segment 2: the maximum possible
        rnd = it.random[("comprehensiveness_aopc", variant)]
        assert rnd.max() <= v + TOL and rnd.mean() < v - 0.2 * drop
        assert it.values[("sufficiency_aopc", variant)] == pytest.approx(0.0, abs=TOL)
        assert it.random[("sufficiency_aopc", variant)].mean() > 0.2 * drop
    assert it.values[("deletion_auc", "trapezoid")] < it.random[("deletion_auc", "trapezoid")].mean()
    assert it.values[("insertion_auc", "trapezoid")] > it.random[("insertion_auc", "trapezoid")].mean()


def test_ferret_conventions_on_hand_cases():
    # 4 words: v = int(p * 4) over p = 0.1..1.0 is 0,0,1,1,2,2,2,3,3,4; top-v filtered to positive scores
    s = np.array([0.5, -0.2, 0.3, -0.1])
    # v=1 -> [0]; v=2 -> [0, 2]; v=3 -> [0, 2] (word 3 is negative: duplicate, skipped); v=4 -> duplicate
    assert F.ferret_rationales(s) == [[0], [0, 2]]
    # nothing positive: one empty rationale is evaluated (ferret compares id_top, [] is not None)
    assert F.ferret_rationales(-np.abs(s) - 0.1) == [[]]
    # fewer than 10 words: p with int(p * n) == 0 are skipped; 1 word: only p = 1.0 counts
    assert F.ferret_rationales(np.array([2.0])) == [[0]]
    assert F.ferret_rationales(np.array([])) == []
    # without only_pos every distinct top-v counts
    assert F.ferret_rationales(s, only_pos=False) == [[0], [0, 2], [0, 2, 3], [0, 2, 3, 1]]
    # AOPC on hand-made curves: comp(k) = full - D[k]
    c = F.Curves(full=1.0, order=np.array([0, 2, 3, 1]), deletion=np.array([1.0, 0.6, 0.2, 0.1, 0.0]),
                 insertion=np.array([0.0, 0.5, 0.9, 0.95, 1.0]))  # fmt: skip
    us = s[c.order]
    assert F.aopc(c, "comprehensiveness", "ferret", us) == pytest.approx(((1 - 0.6) + (1 - 0.2)) / 2, abs=TOL)
    assert F.aopc(c, "sufficiency", "ferret", us) == pytest.approx(((1 - 0.5) + (1 - 0.9)) / 2, abs=TOL)
    neg = -np.abs(us) - 0.1
    assert F.aopc(c, "comprehensiveness", "ferret", neg) == 0.0  # the empty rationale removes nothing
    assert F.aopc(c, "sufficiency", "ferret", neg) == pytest.approx(1.0 - 0.0, abs=TOL)  # ... and keeps nothing
    empty = F.Curves(1.0, np.zeros(0, np.int64), np.array([1.0]), np.array([1.0]))
    assert F.aopc(empty, "comprehensiveness", "ferret", np.zeros(0)) == 0.0  # nothing to remove -> 0
    # the variants are distinct numbers and distinct names
    vals = F.aopc_from_curves(c, us)
    comp = [vals[("comprehensiveness_aopc", v)] for v in F.AOPC_VARIANTS]
    assert len(set(np.round(comp, 12))) == 3
    assert comp[0] == pytest.approx((4 * (1 - 0.6) + (1 - 0.2)) / 5, abs=TOL)  # eraser at m = 4: k = 1,1,1,1,2
    assert len(vals) == len(set(vals)) == 2 * len(F.AOPC_VARIANTS) + 2


def test_eraser_k_and_areas_by_hand():
    assert F.eraser_ks(30) == [1, 2, 3, 6, 15]  # 0.1 * 30 is 3 (not 4, the float 3.0000000000000004)
    assert F.eraser_ks(4) == [1, 1, 1, 1, 2]
    assert F.eraser_ks(1) == [1] * 5
    assert F.eraser_ks(200) == [2, 10, 20, 40, 100]
    for m in range(1, 60):
        assert F.eraser_ks(m) == [max(1, min(m, -(-(p * m) // 100))) for p in (1, 5, 10, 20, 50)]
    assert F.curve_area([1.0, 0.0]) == 0.5
    assert F.curve_area([1.0, 1.0, 0.0, 0.0]) == pytest.approx((1 + 0.5 + 0) / 3)
    c = F.Curves(1.0, np.array([0, 1, 2, 3]), np.array([1.0, 0.6, 0.2, 0.1, 0.0]), np.zeros(5))
    assert F.aopc(c, "comprehensiveness", "eraser") == pytest.approx((4 * 0.4 + 0.8) / 5, abs=TOL)
    assert F.aopc(c, "comprehensiveness", "all_k") == pytest.approx((0.4 + 0.8 + 0.9 + 1.0) / 4, abs=TOL)


def test_summary_over_items_by_hand():
    v = np.array([0.9, 0.7, 0.8, np.nan])
    r = np.array([[0.1, 0.3], [0.2, 0.4], [0.3, 0.2], [0.5, 0.5]])
    out = F.summarize_over_items(v, r, higher_is_better=True, n_boot=200, seed=1)
    assert out["n_units"] == 3 and out["n_random"] == 2
    assert out["value"] == pytest.approx(0.8)
    assert out["random_mean"] == pytest.approx(np.mean([0.1, 0.3, 0.2, 0.4, 0.3, 0.2]))
    per_r = np.array([0.2, 0.3])  # each ranking's mean over the 3 items
    lo, hi = np.quantile(per_r, [0.025, 0.975])
    assert (out["random_low"], out["random_high"]) == pytest.approx((lo, hi))
    assert out["difference"] == pytest.approx(np.mean([0.9 - 0.2, 0.7 - 0.3, 0.8 - 0.25]))
    assert out["p_random"] == pytest.approx(1 / 3)  # no random ranking does as well
    from src.functional.intervals import bootstrap_ci

    ci = bootstrap_ci(v[:3], statistic="mean", n_boot=200, seed=1)
    assert (out["ci_low"], out["ci_high"]) == (ci.low, ci.high)
    low = F.summarize_over_items(v, r, higher_is_better=False, n_boot=50)
    assert low["p_random"] == pytest.approx(1.0)  # lower is better: both random rankings "do as well"


def test_deletion_wer_curve_with_a_fake_decoder():
    x0, base, mask = layout()
    base = np.zeros_like(x0)
    words = {1: "turn", 2: "on", 3: "the", 4: "kitchen", 5: "lights"}

    def decode(x):  # a word is heard while its segment is not silenced
        out = []
        for row in x.numpy():
            out.append(" ".join(w for s, w in words.items() if np.any(row[mask == s] != 0)))
        return out

    order = [4, 5, 1, 2, 3]
    wer = F.deletion_wer_curve(decode, torch.as_tensor(x0)[None], torch.as_tensor(base)[None],
                               torch.as_tensor(mask)[None], order, "turn on the kitchen lights", N_SEG, batch_size=2)  # fmt: skip
    np.testing.assert_allclose(wer, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_bad_input_is_named():
    x0, base, mask = layout()
    t = lambda a: torch.as_tensor(a)[None]  # noqa: E731
    with pytest.raises(F.FaithfulnessError, match="baseline shape"):
        F.PerturbationScorer(f_torch, t(x0), t(base[:-1]), t(mask), N_SEG)
    with pytest.raises(F.FaithfulnessError, match="segment index 6"):
        F.PerturbationScorer(f_torch, t(x0), t(base), t(mask), 6)
    with pytest.raises(F.FaithfulnessError, match="integer"):
        F.PerturbationScorer(f_torch, t(x0), t(base), t(mask.astype(float)), N_SEG)
    with pytest.raises(F.FaithfulnessError, match="must map"):
        F.PerturbationScorer(lambda x: torch.zeros(len(x) + 1), t(x0), t(base), t(mask), N_SEG)
    sc = scorer_for(x0, base, mask)
    with pytest.raises(F.FaithfulnessError, match="variant"):
        F.aopc(F.curves(sc, [1, 2]), "comprehensiveness", "eraser_v2")
    with pytest.raises(F.FaithfulnessError, match="non-finite"):
        F.ranking(np.array([0.0, np.nan]), [0, 1])
    with pytest.raises(F.FaithfulnessError, match="no units"):
        F.item_measures(sc, np.zeros(N_SEG), [], n_random=1)
    with pytest.raises(F.FaithfulnessError, match="not a ranking"):
        F.curves(sc, [1, 1, 2], [1, 2])
