"""src/functional/agreement.py against scipy and the literal reference, plus a bootstrap coverage check
in a simulation whose answer is known (Moran's expectation of Spearman's rho for a bivariate normal)."""

import math

import numpy as np
import pytest
from scipy import stats

from src.functional import agreement as A
from tests.reference import faithfulness as ref

CASES = [
    ([0.3, 0.1, 0.5, 0.2, 0.9], [0.2, 0.0, 0.7, 0.1, 0.4]),
    ([1.0, 1.0, 2.0, 3.0, 3.0, 0.5], [2.0, 1.0, 1.0, 3.0, 4.0, 0.0]),  # ties in both
    ([5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]),  # reversed
    ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0]),
]


@pytest.mark.parametrize("a,b", CASES)
def test_correlations_equal_scipy_and_the_loops(a, b):
    assert A.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert A.spearman(a, b) == pytest.approx(ref.spearman(a, b), abs=1e-12)
    assert A.kendall(a, b) == pytest.approx(stats.kendalltau(a, b, variant="b").statistic, abs=1e-12)
    assert A.kendall(a, b) == pytest.approx(ref.kendall_tau_b(a, b), abs=1e-12)
    for k in (1, 2, 3, 10):
        assert A.top_k_overlap(a, b, k) == pytest.approx(ref.top_k_overlap(a, b, k), abs=1e-12)


def test_tau_b_not_tau_a_and_edge_cases():
    a = [1.0, 1.0, 2.0, 3.0]
    assert A.kendall(a, a) == pytest.approx(1.0)  # tau-a would give 5/6 with the tie
    assert A.spearman(a, a) == pytest.approx(1.0)
    assert math.isnan(A.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(A.kendall([1.0], [2.0]))
    assert A.top_k_overlap([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], 1) == 0.0
    assert A.top_k_overlap([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], 2) == 0.5
    assert A.top_k_overlap([1.0, 1.0, 0.0], [0.0, 1.0, 1.0], 1) == 0.0  # ties: lower index first
    with pytest.raises(A.AgreementError, match="lengths"):
        A.spearman([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(A.AgreementError, match="measure"):
        A.agreement([1.0, 2.0], [1.0, 2.0], "pearson")
    with pytest.raises(A.AgreementError, match="utt2"):
        A.per_item_agreement({"utt1": [1, 2], "utt2": [1, 2]}, {"utt1": [2, 1], "utt2": [1]}, "spearman")


def test_matrix_over_sources():
    rng = np.random.default_rng(0)
    utts = [f"u{i}" for i in range(12)]
    base = {u: rng.normal(size=6) for u in utts}
    sources = {
        "a": base,
        "b": {u: v + 0.3 * rng.normal(size=6) for u, v in base.items()},
        "c": {u: rng.normal(size=6) for u in utts[:9]},  # fewer utterances
        "flat": {u: np.ones(6) if i < 3 else rng.normal(size=6) for i, u in enumerate(utts)},  # 3 constant
    }
    m = A.agreement_matrix(sources, "spearman", n_boot=300, seed=2)
    assert m.names == ["a", "b", "c", "flat"]
    np.testing.assert_allclose(m.value, m.value.T)
    np.testing.assert_allclose(np.diag(m.value), 1.0)
    per = [stats.spearmanr(sources["a"][u], sources["b"][u]).statistic for u in utts]
    assert m.value[0, 1] == pytest.approx(np.mean(per), abs=1e-12)
    assert m.ci_low[0, 1] <= m.value[0, 1] <= m.ci_high[0, 1]
    assert m.n[0, 2] == 9 and m.n[0, 3] == 9 and m.n[2, 3] == 6  # constant vectors left out
    rows = m.rows(group="method")
    assert len(rows) == 10 and {r["group"] for r in rows} == {"method"}
    top = A.agreement_matrix(sources, "top_k", k=2, n_boot=100)
    assert top.rows()[0]["k"] == 2
    # items (utterance, head) pooled per utterance before the bootstrap
    two = {name: {(u, h): v + h for u, v in src.items() for h in (0, 1)} for name, src in sources.items()}
    pooled = A.agreement_matrix(two, "spearman", n_boot=300, seed=2, unit_of=lambda key: key[0])
    assert pooled.n[0, 1] == 12 and pooled.value[0, 1] == pytest.approx(m.value[0, 1], abs=1e-12)
    assert A.unit_means({("u", 0): 1.0, ("u", 1): 0.0, ("v", 0): float("nan")}, lambda key: key[0]) == [0.5]


def test_bootstrap_interval_covers_a_known_mean():
    """Per utterance, scores a and b of n words are bivariate normal with correlation rho: the expected
    Spearman rho is (6 / pi) (arcsin(rho) + (n - 2) arcsin(rho / 2)) / (n + 1) (Moran 1948). The 95 %
    interval over 25 utterances must cover it in about 95 % of 200 simulated studies."""
    n, rho, n_utt, n_sim = 8, 0.6, 25, 200
    truth = 6 / math.pi * (math.asin(rho) + (n - 2) * math.asin(rho / 2)) / (n + 1)
    rng = np.random.default_rng(123)
    covered, means = 0, []
    for sim in range(n_sim):
        z = rng.standard_normal((n_utt, n, 2))
        a, b = z[..., 0], rho * z[..., 0] + math.sqrt(1 - rho**2) * z[..., 1]
        per = [A.spearman(a[u], b[u]) for u in range(n_utt)]
        s = A.mean_with_interval(per, n_boot=400, seed=sim)
        covered += s["ci_low"] <= truth <= s["ci_high"]
        means.append(s["value"])
    assert abs(np.mean(means) - truth) < 0.02  # unbiased
    # binomial(200, 0.95): sd 1.5 %; the percentile bootstrap undercovers slightly at 25 units
    assert 0.88 <= covered / n_sim <= 0.99, covered / n_sim
