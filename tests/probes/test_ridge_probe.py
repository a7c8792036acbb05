"""RidgeProbe: classification picks one alpha per layer by validation accuracy; alphas reported per layer/target."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from src.probes.pipeline import SplitArrays, fit_probe
from src.probes.ridge import RidgeProbe

ALPHAS = [0.0, 0.1, 10.0, 100.0, 1000.0, 1e5]


def _arrays(seed=0, n=(40, 400, 300), d=30, c=3):
    """Two layers: layer 0 carries the labels in 3 of 30 noisy features, layer 1 is a noisier copy."""
    g = np.random.default_rng(seed)
    w = np.zeros((d, c))
    w[:3] = g.normal(size=(3, c)) * 2
    out = {}
    for split, m in zip(("train", "val", "test"), n):
        x0 = g.normal(size=(m, d)) * np.linspace(0.5, 3, d)
        y = (x0 @ w + g.normal(size=(m, c))).argmax(-1)
        x1 = x0 + 1.0 * g.normal(size=(m, d))
        x = torch.from_numpy(np.stack([x0, x1], 1).astype(np.float32))
        out[split] = SplitArrays(x, torch.from_numpy(y).long(), np.arange(m), SimpleNamespace(target_names=["phone"]))
    return out


def test_classification_alpha_by_accuracy_equals_sklearn():
    arrays = _arrays()
    probe = fit_probe(functools.partial(RidgeProbe, alphas=ALPHAS), arrays, "classification", 3, None, layer_ids=[4, 7])
    tr, va, te = (arrays[s] for s in ("train", "val", "test"))
    pred = probe.predict_all(te.x).argmax(-1)  # (L, N)
    rows = probe.extra_results()
    assert [(r["layer_index"], r["metric"]) for r in rows] == [(0, "ridge_alpha"), (1, "ridge_alpha")]
    for k in range(2):
        xt, xv, xe = (a.x[:, k].double().numpy() for a in (tr, va, te))
        acc, mse = [], []
        for a in ALPHAS:
            clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=a, solver="svd")).fit(xt, tr.y.numpy())
            acc.append(float((clf.predict(xv) == va.y.numpy()).mean()))
            reg = make_pipeline(StandardScaler(), Ridge(alpha=a, solver="svd")).fit(xt, np.eye(3)[tr.y.numpy()])
            mse.append(float(((reg.predict(xv) - np.eye(3)[va.y.numpy()]) ** 2).mean()))
        best = max(range(len(ALPHAS)), key=lambda i: (acc[i], -mse[i], -i))
        assert acc[best] > acc[0] + 0.02  # alpha matters here, so the check is verifiable
        assert rows[k]["value"] == ALPHAS[best]
        assert probe.best_alpha[k].numel() == 1  # one alpha for every class score
        clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=ALPHAS[best], solver="svd")).fit(xt, tr.y.numpy())
        sk = clf.predict(xe)
        assert (pred[k].numpy() == sk).mean() >= 0.995  # float32 inputs: at most a near-tie may flip
        np.testing.assert_allclose(float((pred[k] == te.y).double().mean()), float((sk == te.y.numpy()).mean()), atol=0.004)


def test_regression_alpha_per_target_rows_with_names():
    g = np.random.default_rng(1)
    arrays = {}
    w = g.normal(size=(8, 2))
    for split, m in (("train", 20), ("val", 200), ("test", 50)):
        x = g.normal(size=(m, 1, 8))
        y = x[:, 0] @ w + np.array([0.1, 3.0]) * g.normal(size=(m, 2))  # target 1 noisy
        arrays[split] = SplitArrays(torch.from_numpy(x).float(), torch.from_numpy(y).float(), np.arange(m),
                                    SimpleNamespace(target_names=["tt_x", "tt_y"]))  # fmt: skip
    probe = fit_probe(functools.partial(RidgeProbe, alphas=ALPHAS), arrays, "regression", 2, None, layer_ids=[3])
    rows = probe.extra_results()
    assert [(r["layer_index"], r["target"], r["metric"]) for r in rows] == [(0, "tt_x", "ridge_alpha"), (0, "tt_y", "ridge_alpha")]
    assert [r["value"] for r in rows] == probe.best_alpha[0].tolist()
    tr, va = arrays["train"], arrays["val"]
    sk_r = np.array([[np.corrcoef(make_pipeline(StandardScaler(), Ridge(alpha=a, solver="svd")).fit(tr.x[:, 0].double(), tr.y.double())
                               .predict(va.x[:, 0].double())[:, j], va.y[:, j].double())[0, 1] for j in range(2)]
                  for a in ALPHAS])  # (A, 2) validation Pearson r per target, scikit-learn  # fmt: skip
    assert [r["value"] for r in rows] == [ALPHAS[i] for i in sk_r.argmax(0)]
    assert rows[0]["value"] != rows[1]["value"]  # the two targets want different penalties here
    shared = fit_probe(functools.partial(RidgeProbe, alphas=ALPHAS, per_target=False), arrays, "regression", 2, None)
    assert [(r["target"], r["metric"]) for r in shared.extra_results()] == [("all", "ridge_alpha")]
