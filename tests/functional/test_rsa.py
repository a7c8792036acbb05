"""src/functional/rsa.py against scipy and literal loop references."""

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import pdist, squareform

from src.functional.rsa import (
    class_permutation_test,
    compare_rdms,
    condensed,
    group_permutations,
    permutation_test,
    pooled_class_means,
    rdm,
    square,
)
from tests.reference import rsa as ref


def make_x(n=12, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + 1.0


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "correlation"])
def test_rdm_matches_pdist_and_loop(metric):
    x = make_x()
    got = rdm(torch.from_numpy(x), metric)
    assert got.shape == (66,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), pdist(x, metric), rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.numpy(), ref.rdm_loop(x, metric), rtol=0, atol=1e-10)


def test_square_and_condensed_round_trip():
    v = rdm(make_x(), "euclidean")
    m = square(v)
    np.testing.assert_array_equal(m.numpy(), squareform(v.numpy()))
    np.testing.assert_array_equal(condensed(m).numpy(), v.numpy())
    assert condensed(v) is not None and condensed(v).shape == v.shape


def tied_rdms(seed=0):
    rng = np.random.default_rng(seed)
    a = np.round(rdm(make_x(10, seed=seed)).numpy(), 0)  # coarse values: many ties
    b = np.round(a + rng.normal(scale=1.5, size=a.shape), 0)
    return a, b


def test_spearman_and_pearson_match_scipy_with_ties():
    a, b = tied_rdms()
    assert len(np.unique(a)) < len(a)  # there are ties
    assert compare_rdms(a, b, "spearman").item() == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-10)
    assert compare_rdms(a, b, "pearson").item() == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_tau_a_matches_literal_definition(seed):
    a, b = tied_rdms(seed)
    expected = ref.kendall_tau_a_loop(a, b)
    got = compare_rdms(a, b, "kendall_tau_a").item()
    assert got == pytest.approx(expected, abs=1e-12)
    # with ties, tau-a is not scipy's tau-b (which corrects for ties)
    assert abs(got - stats.kendalltau(a, b).statistic) > 1e-3


def test_kendall_tau_a_equals_tau_b_without_ties():
    a = rdm(make_x(9, seed=3)).numpy()
    b = rdm(make_x(9, seed=4)).numpy()
    assert compare_rdms(a, b, "kendall_tau_a").item() == pytest.approx(
        stats.kendalltau(a, b).statistic, abs=1e-12
    )


def test_kendall_tau_a_of_constant_rdm_is_zero():
    a = np.ones(10)
    b = rdm(make_x(5)).numpy()
    assert compare_rdms(a, b, "kendall_tau_a").item() == 0.0 == ref.kendall_tau_a_loop(a, b)


def test_square_inputs_accepted():
    a, b = tied_rdms()
    assert compare_rdms(squareform(a), b, "spearman").item() == pytest.approx(
        compare_rdms(a, b).item(), abs=1e-15
    )


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall_tau_a"])
def test_permutation_test_matches_loop_reference(method):
    x = make_x(8, seed=5)
    a = rdm(x).numpy()
    b = rdm(x + np.random.default_rng(6).normal(scale=1.0, size=x.shape)).numpy()
    compare = {
        "spearman": lambda u, v: stats.spearmanr(u, v).statistic,
        "pearson": lambda u, v: stats.pearsonr(u, v).statistic,
        "kendall_tau_a": ref.kendall_tau_a_loop,
    }[method]
    obs, p = permutation_test(squareform(a), b, n_perm=60, seed=7, method=method, chunk=16)
    ref_obs, ref_p = ref.permutation_test_loop(a, b, compare, n_perm=60, seed=7)
    assert obs == pytest.approx(ref_obs, abs=1e-10)
    assert p == ref_p
    assert 1 / 61 <= p <= 1.0


def test_permutation_test_p_values():
    x = make_x(15, seed=8)
    a = rdm(x)
    obs, p = permutation_test(a, rdm(x + 0.05 * np.random.default_rng(9).normal(size=x.shape)), n_perm=200)
    assert obs > 0.9 and p == pytest.approx(1 / 201)
    _, p_null = permutation_test(a, rdm(make_x(15, seed=10)), n_perm=200)
    assert p_null > 0.05


def test_pooled_class_means():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    labels = np.array(["b", "a", "c"] * 10)
    classes, means = pooled_class_means(x, labels)
    assert list(classes) == ["a", "b", "c"]
    for c, m in zip(classes, means.numpy()):
        np.testing.assert_allclose(m, x[labels == c].mean(0), rtol=1e-14)


def test_errors():
    with pytest.raises(ValueError, match="metric"):
        rdm(make_x(), "manhattan")
    with pytest.raises(ValueError, match="item 2"):
        rdm(np.array([[1.0, 2.0], [3.0, 1.0], [0.0, 0.0]]), "cosine")
    with pytest.raises(ValueError, match="item 1"):
        rdm(np.array([[1.0, 2.0], [3.0, 3.0]]), "correlation")
    with pytest.raises(ValueError, match="constant RDM"):
        compare_rdms(np.ones(6), np.arange(6.0), "spearman")
    with pytest.raises(ValueError, match="same number of items"):
        compare_rdms(np.arange(6.0), np.arange(10.0))
    with pytest.raises(ValueError, match="n \\(n - 1\\) / 2"):
        compare_rdms(np.arange(5.0), np.arange(5.0))
    with pytest.raises(ValueError, match="at least 3 items"):
        compare_rdms(np.arange(1.0), np.arange(1.0))
    with pytest.raises(ValueError, match="labels must have shape"):
        pooled_class_means(make_x(), ["a"])


@pytest.mark.parametrize("method", ["spearman", "kendall_tau_a"])
def test_class_permutation_test_matches_loop_reference(method):
    rng = np.random.default_rng(11)
    labels = np.array(list("abcdab" "cdeabe"))  # 12 tokens of 5 classes
    feats = rng.integers(0, 2, size=(5, 4)).astype(float)
    class_rdm = pdist(feats, "hamming")
    x = rdm(feats[np.unique(labels, return_inverse=True)[1]] + rng.normal(size=(12, 4))).numpy()
    compare = {"spearman": lambda u, v: stats.spearmanr(u, v).statistic, "kendall_tau_a": ref.kendall_tau_a_loop}[method]
    obs, p = class_permutation_test(x, class_rdm, labels, n_perm=40, seed=3, method=method)
    ref_obs, ref_p = ref.class_permutation_test_loop(x, class_rdm, labels, compare, n_perm=40, seed=3)
    assert obs == pytest.approx(ref_obs, abs=1e-10) and p == ref_p
    # the observed value is the RSA against the token-level reference RDM
    assert obs == pytest.approx(float(compare_rdms(x, pdist(feats[np.unique(labels, return_inverse=True)[1]],
                                                             "hamming"), method)), abs=1e-12)  # fmt: skip


def test_group_permutations_move_whole_groups():
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4])  # sizes 3, 3, 2, 2, 1
    perms = group_permutations(groups, 50, np.random.default_rng(0))
    assert perms.shape == (50, 11)
    members = {g: np.flatnonzero(groups == g) for g in range(5)}
    moved = set()
    for perm in perms:
        assert sorted(perm.tolist()) == list(range(11))  # a permutation
        for g, m in members.items():
            target = groups[perm[m]]
            assert len(set(target.tolist())) == 1  # a group goes to one group ...
            h = int(target[0])
            assert len(members[h]) == len(m) and (perm[m] == members[h]).all()  # ... of its size, in order
            moved.add((g, h))
    assert {(0, 1), (1, 0), (2, 3), (3, 2)} <= moved and (4, 4) in moved and not any(
        g == 4 and h != 4 for g, h in moved
    )


def _false_positive_rate(simulate, n_datasets: int = 200, alpha: float = 0.05) -> tuple[float, float]:
    """Share of datasets (each simulated under the null) with p <= alpha: (token permutation, unit permutation)."""
    tok = unit = 0
    for s in range(n_datasets):
        p_tok, p_unit = simulate(np.random.default_rng(1000 + s), s)
        tok += p_tok <= alpha
        unit += p_unit <= alpha
    return tok / n_datasets, unit / n_datasets


def test_token_permutation_is_anticonservative_class_permutation_is_nominal():
    """Tokens of a class share a random effect (their utterances, their neighbours) that has nothing
    to do with the reference's phonological features: the null is true. Permuting tokens breaks the
    within-class similarity that model and reference share (both have small within-class
    distances) and calls most datasets significant; permuting class labels does not."""
    C, per, D, F = 6, 5, 8, 5

    def simulate(rng, s):
        feats = rng.integers(0, 2, size=(C, F)).astype(float)  # reference: random binary features per class
        labels = np.repeat(np.arange(C), per)
        x = rng.standard_normal((C, D))[labels] + 0.7 * rng.standard_normal((C * per, D))  # class effect only
        model = pdist(x, "euclidean")
        _, p_tok = permutation_test(model, pdist(feats[labels], "hamming"), n_perm=49, seed=s)
        _, p_cls = class_permutation_test(model, pdist(feats, "hamming"), labels, n_perm=49, seed=s,
                                          method="spearman")  # fmt: skip
        return p_tok, p_cls

    fpr_tok, fpr_cls = _false_positive_rate(simulate)
    print(f"FPR token permutation {fpr_tok:.3f}, class permutation {fpr_cls:.3f}")
    assert fpr_tok > 0.5  # measured 0.91
    assert 0.01 <= fpr_cls <= 0.10  # measured 0.045


def test_token_permutation_is_anticonservative_utterance_permutation_is_nominal():
    """Model and reference (e.g. MFCC) both carry an utterance effect (speaker, channel), independent
    of each other: the null is true, but tokens of one utterance are alike in both. Token
    permutations find them "similar"; permuting whole utterances keeps the nominal rate."""
    U, per, D = 10, 3, 6

    def simulate(rng, s):
        utt = np.repeat(np.arange(U), per)
        x = rng.standard_normal((U, D))[utt] + 0.5 * rng.standard_normal((U * per, D))
        y = rng.standard_normal((U, D))[utt] + 0.5 * rng.standard_normal((U * per, D))
        a, b = pdist(x), pdist(y)
        _, p_tok = permutation_test(a, b, n_perm=49, seed=s)
        _, p_utt = permutation_test(a, b, n_perm=49, seed=s, groups=utt)
        return p_tok, p_utt

    fpr_tok, fpr_utt = _false_positive_rate(simulate)
    print(f"FPR token permutation {fpr_tok:.3f}, utterance permutation {fpr_utt:.3f}")
    assert fpr_tok > 0.3  # measured 0.58
    assert 0.01 <= fpr_utt <= 0.10  # measured 0.035
