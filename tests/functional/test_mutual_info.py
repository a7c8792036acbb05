"""src/functional/mutual_info.py against scikit-learn, scipy and hand-computed values."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import mutual_info_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from src.functional.mutual_info import (
    conditional_entropy,
    contingency,
    entropy,
    js_divergence,
    mutual_info,
    normalized_mutual_info,
    phone_normalized_mutual_info,
    purity,
    unit_distributions,
)


def make_units(n=3000, k=25, c=8, seed=0):
    rng = np.random.default_rng(seed)
    units = rng.integers(0, k, n)
    labels = (units * c // k + (rng.random(n) < 0.3) * rng.integers(0, c, n)) % c
    return units, labels


def test_contingency_matches_sklearn():
    u, y = make_units()
    uv, yv, counts = contingency(u, y)
    np.testing.assert_array_equal(counts, contingency_matrix(u, y))
    assert counts.sum() == len(u) and list(uv) == sorted(set(u)) and list(yv) == sorted(set(y))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_and_mi_match_sklearn(seed):
    u, y = make_units(seed=seed)
    assert normalized_mutual_info(u, y) == pytest.approx(normalized_mutual_info_score(y, u), abs=1e-12)
    assert mutual_info(u, y, base=math.e) == pytest.approx(mutual_info_score(y, u), abs=1e-12)
    names = np.array([f"ph{v}" for v in y])  # string labels work too
    assert normalized_mutual_info(u, names) == pytest.approx(
        normalized_mutual_info_score(names, u), abs=1e-12
    )


@pytest.mark.parametrize(
    "u, y",
    [([1, 1, 1], [2, 2, 2]), ([1, 1, 1], [1, 2, 3]), ([1, 2, 1, 2], [1, 1, 2, 2]), ([0, 1, 2], [5, 6, 7])],
)
def test_nmi_edge_cases_match_sklearn(u, y):
    assert normalized_mutual_info(u, y) == pytest.approx(normalized_mutual_info_score(y, u), abs=1e-12)


def test_entropies_and_pnmi():
    u, y = make_units()
    h_y = entropy(y)
    assert conditional_entropy(y, u) == pytest.approx(h_y - mutual_info(u, y), abs=1e-12)
    # H(y | u) by its definition: sum_u P(u) H(y | u = u)
    total = 0.0
    for v in np.unique(u):
        _, counts = np.unique(y[u == v], return_counts=True)
        p = counts / counts.sum()
        total += (u == v).mean() * -(p * np.log2(p)).sum()
    assert conditional_entropy(y, u) == pytest.approx(total, abs=1e-12)
    assert phone_normalized_mutual_info(u, y) == pytest.approx(mutual_info(u, y) / h_y, abs=1e-12)
    assert phone_normalized_mutual_info(y, y) == pytest.approx(1.0)
    assert conditional_entropy(y, y) == 0.0
    assert entropy([0, 1, 2, 3]) == pytest.approx(2.0)


def test_purity_hand_example():
    # unit 0: phones a,a,b (3 frames); unit 1: b (1 frame); unit 2: c,c,a,a (4 frames)
    units = [0, 0, 0, 1, 2, 2, 2, 2]
    phones = ["a", "a", "b", "b", "c", "c", "a", "a"]
    phone_purity, cluster_purity = purity(units, phones)
    # phone purity: sum_u max_p P(u, p) = (2 + 1 + 2) / 8 ; cluster purity: sum_p max_u P(u, p) = (2 + 1 + 2) / 8
    assert phone_purity == pytest.approx(5 / 8)
    assert cluster_purity == pytest.approx(5 / 8)
    assert purity([0, 1, 2, 3], ["a", "a", "b", "b"]) == (1.0, 0.5)  # finer units: pure, but spread


def test_js_divergence_matches_scipy():
    rng = np.random.default_rng(1)
    p, q = rng.random(12), rng.random(12)
    q[3] = 0.0
    for base in (2.0, math.e):
        assert js_divergence(p, q, base) == pytest.approx(jensenshannon(p, q, base=base) ** 2, abs=1e-12)
    pp, qq = rng.random((5, 7)), rng.random((5, 7))
    np.testing.assert_allclose(js_divergence(pp, qq), jensenshannon(pp, qq, base=2, axis=1) ** 2, atol=1e-12)
    np.testing.assert_allclose(
        js_divergence(pp, qq, axis=0), jensenshannon(pp, qq, base=2, axis=0) ** 2, atol=1e-12
    )
    assert js_divergence(p, 3 * p) == pytest.approx(0.0, abs=1e-15)  # normalised first
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint supports: 1 bit
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p), abs=1e-15)


def test_unit_distributions():
    classes, dist = unit_distributions([0, 1, 1, 2, 0, 0], ["x", "x", "y", "y", "y", "y"], k=4)
    assert list(classes) == ["x", "y"]
    np.testing.assert_allclose(dist, [[0.5, 0.5, 0, 0], [0.5, 0.25, 0.25, 0]])
    np.testing.assert_allclose(dist.sum(1), 1.0)


def test_errors():
    with pytest.raises(ValueError, match="same length"):
        normalized_mutual_info([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        purity([], [])
    with pytest.raises(ValueError, match="non-negative"):
        js_divergence([0.5, -0.1], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        unit_distributions([0, 3], ["a", "b"], k=3)
    with pytest.raises(ValueError, match="single label"):
        phone_normalized_mutual_info([0, 1], ["a", "a"])
