"""src/functional/ridge.py against scikit-learn and literal references."""

import doctest
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score as sk_r2
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import src.functional.ridge as ridge_mod
from src.functional.ridge import (
    RidgeStats,
    RidgeWarning,
    moment_scores,
    pearson_r,
    r2_score,
    select_alpha,
)
from tests.reference.probing import explicit_scores, pearson_r_loop


def make_data(n=400, d=12, k=3, seed=0, offset=10.0):
    """Anisotropic, off-centre features; targets linear in x plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.2, 5.0, size=d) + offset * rng.normal(size=d)
    w = rng.normal(size=(d, k))
    y = x @ w + 3.0 * rng.normal(size=(n, k)) + rng.normal(size=k) * 5
    return x, y


def stats_of(x, y, **kw):
    st = RidgeStats(**kw)
    st.update(x, y)
    return st


def test_alpha0_equals_linear_regression_coefficients_and_heldout_r():
    x, y = make_data(n=600)
    xtr, ytr, xte, yte = x[:400], y[:400], x[400:], y[400:]
    w, b = stats_of(xtr, ytr).solve(0.0)
    lr = LinearRegression().fit(xtr, ytr)
    np.testing.assert_allclose(w.numpy(), lr.coef_.T, atol=1e-6, rtol=0)
    np.testing.assert_allclose(b.numpy(), lr.intercept_, atol=1e-6, rtol=0)
    r_ours = pearson_r(xte @ w.numpy() + b.numpy(), yte).numpy()
    r_sk = pearson_r_loop(lr.predict(xte), yte)
    np.testing.assert_allclose(r_ours, r_sk, atol=1e-6, rtol=0)
    assert 0.3 < r_sk.min() < 1.0  # a non-trivial fit


@pytest.mark.parametrize("alpha", [0.1, 10.0, 1000.0])
def test_ridge_equals_sklearn_ridge(alpha):
    x, y = make_data(n=300, seed=1)
    w, b = stats_of(x, y).solve(alpha)
    sk = Ridge(alpha=alpha, fit_intercept=True).fit(x, y)
    np.testing.assert_allclose(w.numpy(), sk.coef_.T, atol=1e-6, rtol=0)
    np.testing.assert_allclose(b.numpy(), sk.intercept_, atol=1e-6, rtol=0)


def test_standardize_equals_scaler_plus_ridge():
    x, y = make_data(n=300, seed=2)
    x[:, 3] = 7.0  # a constant feature: StandardScaler leaves its scale at 1
    w, b = stats_of(x, y).solve(50.0, standardize=True)
    pipe = make_pipeline(StandardScaler(), Ridge(alpha=50.0)).fit(x, y)
    xt = make_data(n=50, seed=3)[0]
    np.testing.assert_allclose(xt @ w.numpy() + b.numpy(), pipe.predict(xt), atol=1e-6, rtol=0)


def test_per_target_alpha_equals_scalar_solves():
    x, y = make_data(n=200, seed=4)
    st = stats_of(x, y)
    alphas = [0.0, 5.0, 500.0]
    w, b = st.solve(torch.tensor(alphas))
    for j, a in enumerate(alphas):
        wj, bj = st.solve(a)
        np.testing.assert_allclose(w[:, j].numpy(), wj[:, j].numpy(), atol=1e-9, rtol=0)
        np.testing.assert_allclose(b[j].item(), bj[j].item(), atol=1e-9)


def test_chunked_float16_memmap_with_mask_equals_one_shot(tmp_path):
    x, y = make_data(n=500, seed=5)
    x16 = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=x.shape)
    x16[:] = x
    x16.flush()
    x16 = np.load(tmp_path / "x.npy", mmap_mode="r")  # read-only memmap, like the cache
    keep = np.random.default_rng(0).random(500) > 0.2
    chunked = RidgeStats()
    for start, stop in [(0, 7), (7, 7), (7, 160), (160, 500)]:
        chunked.update(x16[start:stop], y[start:stop], mask=keep[start:stop])
    one = stats_of(np.asarray(x16, dtype=np.float64)[keep], y[keep])
    assert chunked.n == one.n == keep.sum()
    for a, b in zip(chunked.centered(), one.centered(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-8)
    for alpha in (0.0, 3.0):
        (w1, b1), (w2, b2) = chunked.solve(alpha), one.solve(alpha)
        np.testing.assert_allclose(w1.numpy(), w2.numpy(), atol=1e-9, rtol=0)
        np.testing.assert_allclose(b1.numpy(), b2.numpy(), atol=1e-8, rtol=0)


def test_float32_products_stay_close_despite_large_offset():
    x, y = make_data(n=2000, d=30, seed=6, offset=1000.0)  # mean >> spread
    x = x.astype(np.float32)
    w64, b64 = stats_of(x, y).solve(0.0)
    w32, b32 = stats_of(x, y, compute_dtype=torch.float32).solve(0.0)
    assert (w32 - w64).abs().max().item() < 1e-4 * w64.abs().max().item()
    p64 = x.astype(np.float64) @ w64.numpy() + b64.numpy()
    p32 = x.astype(np.float64) @ w32.numpy() + b32.numpy()
    assert np.abs(p32 - p64).max() < 1e-3 * p64.std()


def test_batched_layers_equal_separate_problems():
    x, y = make_data(n=300, seed=7)
    x2 = make_data(n=300, seed=8)[0]
    st = RidgeStats()
    st.update(np.stack([x[:100], x2[:100]]), y[:100])  # (L, n, d) with shared y (n, k)
    st.update(np.stack([x[100:], x2[100:]]), y[100:])
    w, b = st.solve(2.0)
    assert w.shape == (2, 12, 3) and b.shape == (2, 3)
    for layer, xl in enumerate([x, x2]):
        wl, bl = stats_of(xl, y).solve(2.0)
        np.testing.assert_allclose(w[layer].numpy(), wl.numpy(), atol=1e-10, rtol=0)
        np.testing.assert_allclose(b[layer].numpy(), bl.numpy(), atol=1e-9, rtol=0)


def test_merge_equals_one_shot():
    x, y = make_data(n=300, seed=9)
    a, b = stats_of(x[:50], y[:50]), stats_of(x[50:], y[50:])
    merged, one = a.merge(b), stats_of(x, y)
    assert merged.n == 300 and a.n == 50  # inputs unchanged
    for u, v in zip(merged.centered(), one.centered(), strict=True):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-10, atol=1e-7)
    np.testing.assert_allclose(merged.solve(1.0)[0].numpy(), one.solve(1.0)[0].numpy(), atol=1e-10)


def test_singular_alpha0_warns_and_returns_min_norm_least_squares():
    x, y = make_data(n=200, d=6, seed=10)
    x = np.c_[x, x[:, 0], np.full(200, 4.0)]  # a duplicated and a constant column
    with pytest.warns(RidgeWarning, match="minimum-norm"):
        w, b = stats_of(x, y).solve(0.0)
    lr = LinearRegression().fit(x, y)  # LAPACK gelsd: minimum-norm solution
    np.testing.assert_allclose(w.numpy(), lr.coef_.T, atol=1e-6, rtol=0)
    np.testing.assert_allclose(x @ w.numpy() + b.numpy(), lr.predict(x), atol=1e-6, rtol=0)
    assert abs(w[0, 0].item() - w[6, 0].item()) < 1e-8  # weight split evenly over the copies


def test_more_features_than_rows_alpha0():
    x, y = make_data(n=20, d=40, seed=11)
    with pytest.warns(RidgeWarning):
        w, b = stats_of(x, y).solve(0.0)
    lr = LinearRegression().fit(x, y)
    np.testing.assert_allclose(x @ w.numpy() + b.numpy(), lr.predict(x), atol=1e-6, rtol=0)
    np.testing.assert_allclose(w.numpy(), lr.coef_.T, atol=1e-6, rtol=0)


def test_well_conditioned_solve_does_not_warn():
    x, y = make_data(n=300, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats_of(x, y).solve(0.0)


@pytest.mark.parametrize("metric", ["r", "r2", "mse"])
def test_moment_scores_equal_explicit_predictions(metric):
    x, y = make_data(n=700, seed=13)
    w, b = stats_of(x[:500], y[:500]).solve(4.0)
    val = RidgeStats()
    val.update(x[500:600], y[500:600])
    val.update(x[600:], y[600:])
    ours = moment_scores(val, w, b, metric).numpy()
    ref = explicit_scores(x[500:], y[500:], w.numpy(), b.numpy())[metric]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def _bruteforce(xtr, ytr, xva, yva, alphas, metric, standardize=False):
    scores = []
    for a in alphas:
        model = Ridge(alpha=a) if a > 0 else LinearRegression()
        if standardize:
            model = make_pipeline(StandardScaler(), model)
        pred = model.fit(xtr, ytr).predict(xva)
        if metric == "r":
            scores.append(pearson_r_loop(pred, yva))
        elif metric == "r2":
            scores.append(sk_r2(yva, pred, multioutput="raw_values"))
        else:
            scores.append(((pred - yva) ** 2).mean(0))
    return np.array(scores)  # (A, k)


@pytest.mark.parametrize("metric,standardize", [("r", False), ("r2", False), ("mse", False), ("r", True)])
def test_select_alpha_per_target_equals_sklearn_loop(metric, standardize):
    # few rows per feature so that the best alpha differs between targets
    rng = np.random.default_rng(14)
    n, d = 120, 40
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + 2.0
    w = np.stack([rng.normal(size=d), np.r_[3.0, np.zeros(d - 1)], rng.normal(size=d) * 0.05], axis=1)
    y = x @ w + rng.normal(size=(n, 3)) * np.array([1.0, 1.0, 2.0])
    xtr, ytr, xva, yva = x[:80], y[:80], x[80:], y[80:]
    alphas = [0.0, 0.01, 1.0, 10.0, 100.0, 1e3, 1e4]
    best, scores = select_alpha(
        stats_of(xtr, ytr), stats_of(xva, yva), alphas, metric, standardize=standardize
    )
    ref = _bruteforce(xtr, ytr, xva, yva, alphas, metric, standardize)
    np.testing.assert_allclose(scores.numpy(), ref, rtol=1e-7, atol=1e-7)
    pick = ref.argmin(0) if metric == "mse" else ref.argmax(0)
    np.testing.assert_array_equal(best.numpy(), np.array(alphas)[pick])
    assert len(set(best.tolist())) > 1  # the point of per-target alphas


def test_select_alpha_shared_and_batched():
    x, y = make_data(n=300, seed=15)
    x2 = make_data(n=300, seed=16)[0]
    tr, va = RidgeStats(), RidgeStats()
    tr.update(np.stack([x[:200], x2[:200]]), y[:200])
    va.update(np.stack([x[200:], x2[200:]]), y[200:])
    alphas = [0.0, 1.0, 100.0, 1e4]
    best, scores = select_alpha(tr, va, alphas, "r2", per_target=False)
    assert best.shape == (2,) and scores.shape == (2, 4, 3)
    for layer, xl in enumerate([x, x2]):
        ref = _bruteforce(xl[:200], y[:200], xl[200:], y[200:], alphas, "r2")
        np.testing.assert_allclose(scores[layer].numpy(), ref, rtol=1e-7, atol=1e-7)
        assert best[layer].item() == alphas[int(ref.mean(1).argmax())]


def test_pearson_r_and_r2_score_match_references():
    rng = np.random.default_rng(17)
    t = rng.normal(size=(50, 3))
    p = t + rng.normal(size=(50, 3))
    p[:, 2] = 1.5  # constant prediction
    r = pearson_r(p, t).numpy()
    np.testing.assert_allclose(r[:2], pearson_r_loop(p[:, :2], t[:, :2]), rtol=1e-12)
    assert np.isnan(r[2])
    assert pearson_r(p[:, 0], t[:, 0]).ndim == 0
    t2 = t.copy()
    t2[:, 1] = 2.0  # constant target: sklearn gives 0 (imperfect) or 1 (perfect)
    p2 = p.copy()
    p2[:, 2] = t2[:, 2]
    for tt, pp in [(t2, p2), (t2, np.where(np.arange(3) == 1, 2.0, p2))]:
        np.testing.assert_allclose(
            r2_score(tt, pp).numpy(), sk_r2(tt, pp, multioutput="raw_values"), rtol=1e-12, atol=1e-12
        )


def test_clear_errors():
    st = RidgeStats()
    with pytest.raises(ValueError, match="empty"):
        st.solve(0.0)
    with pytest.raises(ValueError, match="rows"):
        st.update(np.zeros((5, 3)), np.zeros((4, 1)))
    st.update(np.random.default_rng(0).normal(size=(5, 3)), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="d=4"):
        st.update(np.zeros((5, 4)), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="alpha"):
        st.solve(-1.0)
    with pytest.raises(ValueError, match="mask"):
        st.update(np.zeros((5, 3)), np.zeros((5, 1)), mask=np.ones(4, bool))
    with pytest.raises(ValueError, match="metric"):
        select_alpha(st, st, [1.0], metric="acc")


def test_doctests():
    assert doctest.testmod(ridge_mod, raise_on_error=True).attempted > 0


# ---------------------------------------------------------------------- ridge classifier: alpha by accuracy
def _classification_problem(seed=0, n=(40, 400), d=30, c=3):
    """Few training rows, many noisy features: alpha = 0 overfits, a large alpha generalises better."""
    g = np.random.default_rng(seed)
    w = np.zeros((d, c))
    w[:3] = g.normal(size=(3, c)) * 2
    out = []
    for m in n:
        x = g.normal(size=(m, d)) * np.linspace(0.5, 3, d) + 5.0
        y = ((x - 5.0) @ w + g.normal(size=(m, c))).argmax(-1)
        out += [x, y]
    return out


def test_select_alpha_accuracy_equals_sklearn_ridge_classifier_loop():
    from sklearn.linear_model import RidgeClassifier

    xt, yt, xv, yv = _classification_problem()
    alphas = [0.0, 0.1, 10.0, 100.0, 1000.0, 1e5]
    st = RidgeStats()
    st.update(xt, np.eye(3)[yt])
    best, acc = ridge_mod.select_alpha_accuracy(st, xv, yv, alphas, standardize=True)
    sk_acc, sk_mse = [], []
    for a in alphas:
        clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=a, solver="svd")).fit(xt, yt)
        sk_acc.append(float((clf.predict(xv) == yv).mean()))
        reg = make_pipeline(StandardScaler(), Ridge(alpha=a, solver="svd")).fit(xt, np.eye(3)[yt])
        sk_mse.append(float(((reg.predict(xv) - np.eye(3)[yv]) ** 2).mean()))
    np.testing.assert_allclose(acc.numpy(), sk_acc, rtol=0, atol=1e-12)
    expected = max(range(len(alphas)), key=lambda i: (sk_acc[i], -sk_mse[i], -i))
    assert float(best) == alphas[expected]
    assert sk_acc[expected] > sk_acc[0] + 0.05, "the toy must make the choice verifiable (alpha=0 overfits)"
    assert max(sk_acc) == sk_acc[expected] and len(set(sk_acc)) > 2


def test_select_alpha_accuracy_ties_go_to_lower_mse_then_first():
    xt, yt, xv, yv = _classification_problem(1)
    st = RidgeStats()
    st.update(xt, np.eye(3)[yt])
    # a tiny change of alpha gives the same predictions (a tie in accuracy): the lower MSE wins
    best, acc = ridge_mod.select_alpha_accuracy(st, xv, yv, [1000.0, 1000.001], standardize=True)
    assert acc[0] == acc[1]
    _, mse = select_alpha(st, _stats(xv, np.eye(3)[yv]), [1000.0, 1000.001], metric="mse", per_target=False,
                          standardize=True)  # fmt: skip
    assert float(best) == [1000.0, 1000.001][int(mse.mean(-1).argmin())]
    best, _ = ridge_mod.select_alpha_accuracy(st, xv, yv, [5.0, 5.0], standardize=True)
    assert float(best) == 5.0


def _stats(x, y):
    st = RidgeStats()
    st.update(x, y)
    return st


def test_update_refuses_non_finite_rows_with_layer_names():
    x = np.random.default_rng(0).normal(size=(3, 20, 4))  # (L, n, d)
    x[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match=r"layer 6: 1 of 80 values"):
        RidgeStats().update(x, np.ones((20, 1)), layer_ids=[2, 6, 9])
    with pytest.raises(ValueError, match=r"layer 6: 1 of 80"):
        RidgeStats().update(x[1], np.ones(20), layer_ids=6)
    x16 = np.full((20, 4), 60000.0, dtype=np.float16)
    with np.errstate(over="ignore"):
        x16[0, 0] = np.float16(65504) * np.float16(2)  # float16 overflow -> inf
    with pytest.raises(ValueError, match=r"x: 1 of 80"):
        RidgeStats(compute_dtype=torch.float32).update(x16, np.ones(20))
