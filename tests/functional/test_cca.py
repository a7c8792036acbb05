"""src/functional/cca.py against the literal eigenproblem reference and scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import CCA as SkCCA

from src.functional.cca import CCAProjection, cca, cca_fit, cca_transform_corr, pwcca, svcca
from tests.reference import cca as ref


def make_views(n=300, seed=0, dx=6, dy=5, shared=3, noise=0.6):
    """Two views sharing `shared` latent dimensions, mixed and shifted."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    x = np.c_[z, rng.normal(size=(n, dx - shared))] @ rng.normal(size=(dx, dx)) + 4.0
    y = np.c_[z + noise * rng.normal(size=(n, shared)), rng.normal(size=(n, dy - shared))] @ rng.normal(
        size=(dy, dy)
    )
    return x, y


@pytest.mark.parametrize("epsilon", [0.0, 1e-3, 0.5])
def test_matches_literal_eigenproblem(epsilon):
    x, y = make_views()
    got = cca(torch.from_numpy(x), y, epsilon=epsilon)
    assert got.dtype == torch.float64 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), ref.canonical_correlations(x, y, epsilon), rtol=0, atol=1e-8)
    assert np.all(np.diff(got.numpy()) <= 1e-12)  # decreasing


def test_matches_sklearn_first_components():
    x, y = make_views()
    sk = SkCCA(n_components=2, max_iter=5000, tol=1e-14).fit(x, y)
    xs, ys = sk.transform(x, y)
    sk_corr = [np.corrcoef(xs[:, i], ys[:, i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(cca(x, y).numpy()[:2], sk_corr, atol=1e-6)


def test_invariant_to_invertible_linear_maps():
    x, y = make_views()
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(5, 5))
    base = cca(x, y).numpy()
    np.testing.assert_allclose(cca(x @ a - 7.0, y @ b + 2.0).numpy(), base, atol=1e-8)


def test_perfect_correlation_for_linear_function():
    x, _ = make_views()
    y = x @ np.random.default_rng(2).normal(size=(6, 4))
    np.testing.assert_allclose(cca(x, y).numpy(), np.ones(4), atol=1e-10)


def test_one_hot_labels_rank_deficient():
    x, _ = make_views(n=400)
    rng = np.random.default_rng(3)
    labels = (x[:, 0] > 4.0).astype(int) + 2 * (rng.random(400) < 0.3)  # 4 classes, related to x
    onehot = np.eye(4)[labels]
    got = cca(x, onehot)
    assert got.shape == (3,)  # the centred one-hot spans C - 1 dimensions
    # same subspace as the full-rank view that drops one column
    np.testing.assert_allclose(got.numpy(), ref.canonical_correlations(x, onehot[:, :3]), atol=1e-8)
    assert got[0] > 0.5
    reg = cca(x, onehot, epsilon=1e-2)
    np.testing.assert_allclose(reg.numpy(), ref.canonical_correlations(x, onehot, 1e-2)[:3], atol=1e-8)
    assert np.all(reg.numpy() <= got.numpy() + 1e-12)  # ridge shrinks


def test_constant_feature_is_dropped():
    x, y = make_views()
    x_const = np.c_[x, np.full(len(x), 3.0)]
    np.testing.assert_allclose(cca(x_const, y).numpy(), cca(x, y).numpy(), atol=1e-10)


def test_svcca_int_and_variance_fraction():
    x, y = make_views(dx=6, dy=6)

    # keep_dims=k: CCA of the top-k principal component scores
    def pcs(a, k):
        ac = a - a.mean(0)
        u, s, _ = np.linalg.svd(ac, full_matrices=False)
        return u[:, :k] * s[:k]

    expected = ref.canonical_correlations(pcs(x, 3), pcs(y, 4)).mean()
    got_int = svcca(x, y, keep_dims=3).item()  # (3 and 3)
    assert got_int == pytest.approx(ref.canonical_correlations(pcs(x, 3), pcs(y, 3)).mean(), abs=1e-8)
    # variance fraction: the smallest k reaching the fraction
    sx = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    sy = np.linalg.svd(y - y.mean(0), compute_uv=False) ** 2
    kx = int(np.searchsorted(np.cumsum(sx) / sx.sum(), 0.9)) + 1
    ky = int(np.searchsorted(np.cumsum(sy) / sy.sum(), 0.9)) + 1
    expected = ref.canonical_correlations(pcs(x, kx), pcs(y, ky))
    np.testing.assert_allclose(svcca(x, y, 0.9, return_all=True).numpy(), expected, atol=1e-8)
    assert svcca(x, y, 1.0).item() == pytest.approx(cca(x, y).mean().item(), abs=1e-8)


def test_pwcca_matches_reference_and_properties():
    x, y = make_views()
    value, alpha, rho = pwcca(x, y, return_weights=True)
    assert value.item() == pytest.approx(ref.pwcca_loop(x, y), abs=1e-8)
    assert alpha.sum().item() == pytest.approx(1.0, abs=1e-12) and bool((alpha >= 0).all())
    assert rho.numpy().min() <= value.item() <= rho.numpy().max()
    assert pwcca(x, x).item() == pytest.approx(1.0, abs=1e-10)


def test_held_out_projection():
    x, y = make_views(n=400, noise=0.3)
    proj = cca_fit(x[:300], y[:300])
    assert isinstance(proj, CCAProjection) and proj.wx.shape == (6, 5)
    # on the training data the variates' correlations are the canonical correlations
    np.testing.assert_allclose(
        cca_transform_corr(proj, x[:300], y[:300]).numpy(), proj.correlations.numpy(), atol=1e-10
    )
    held = cca_transform_corr(proj, x[300:], y[300:]).numpy()
    assert np.all(held[:3] > 0.8)  # shared directions generalise
    assert np.all(np.abs(held[3:]) < 0.35)  # noise directions: chance level for 100 held-out rows
    # unrelated views: CCA overfits the training rows, held-out correlations stay near 0
    rng = np.random.default_rng(4)
    xn, yn = rng.normal(size=(500, 10)), rng.normal(size=(500, 8))
    proj_n = cca_fit(xn[:60], yn[:60])
    assert proj_n.correlations[0] > 0.5
    assert np.abs(cca_transform_corr(proj_n, xn[60:], yn[60:]).numpy()).max() < 0.2
    with pytest.raises(ValueError, match="feature sizes"):
        cca_transform_corr(proj, x[300:, :5], y[300:])


def test_errors():
    x, y = make_views(n=20)
    with pytest.raises(ValueError, match="same number of rows"):
        cca(x, y[:19])
    with pytest.raises(ValueError, match="at least 2"):
        cca(x[:1], y[:1])
    with pytest.raises(ValueError, match="constant features"):
        cca(np.ones((20, 3)), y)
    with pytest.raises(ValueError, match="epsilon"):
        cca(x, y, epsilon=-1.0)
    with pytest.raises(ValueError, match="keep_dims"):
        svcca(x, y, keep_dims=1.5)


def _scaled_views(n=400, seed=3):
    """Views whose feature variances span four orders of magnitude (outlier dimensions)."""
    x, y = make_views(n=n, seed=seed)
    x = x * np.array([30.0, 1.0, 0.3, 1.0, 5.0, 0.8])  # variances ~1e3 .. ~0.1
    y = y * np.array([1.0, 20.0, 0.5, 1.0, 2.0])
    return x, y


@pytest.mark.parametrize("epsilon", [1e-4, 1e-2, 0.1])
def test_relative_epsilon_matches_svcca_reference_scaling(epsilon):
    x, y = _scaled_views()
    got = cca(x, y, epsilon=epsilon, epsilon_mode="relative").numpy()
    want = ref.svcca_reference_correlations(x, y, epsilon)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_relative_epsilon_removes_small_variance_neurons_like_the_reference():
    x, y = _scaled_views()
    x = np.c_[x, 1e-3 * np.random.default_rng(9).normal(size=len(x))]  # a neuron of variance ~1e-6
    vmax = (x - x.mean(0)).var(0, ddof=1).max()
    eps = 1e-5  # scaled variance of the tiny neuron ~1e-6 / vmax << eps: removed
    assert (x[:, -1].var(ddof=1) / vmax) < eps
    got = cca(x, y, epsilon=eps, epsilon_mode="relative").numpy()
    want = ref.svcca_reference_correlations(x, y, eps)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # without removal the tiny neuron would take part: the absolute mode with the same ridge differs
    other = cca(x, y, epsilon=eps * vmax).numpy()
    assert got.shape == other.shape and np.abs(got - other).max() > 1e-6


def test_relative_and_absolute_epsilon_differ_by_the_largest_variance():
    """Absolute epsilon = relative epsilon x max variance when no neuron is removed (per view:
    here both views get the same largest variance)."""
    x, y = _scaled_views()
    y = y / np.sqrt((y - y.mean(0)).var(0, ddof=1).max()) * np.sqrt((x - x.mean(0)).var(0, ddof=1).max())
    var = np.r_[(x - x.mean(0)).var(0, ddof=1), (y - y.mean(0)).var(0, ddof=1)]
    vmax = var.max()
    eps = 0.5 * var.min() / vmax  # small enough that no neuron is removed
    rel = cca(x, y, epsilon=eps, epsilon_mode="relative").numpy()
    np.testing.assert_allclose(rel, ref.canonical_correlations(x, y, eps * vmax), atol=1e-8)
    assert np.abs(rel - cca(x, y, epsilon=eps).numpy()).max() > 1e-4  # the same number means something else
    with pytest.raises(ValueError, match="epsilon_mode"):
        cca(x, y, epsilon=eps, epsilon_mode="scaled")
