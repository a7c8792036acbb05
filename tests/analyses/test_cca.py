"""CCA analysis: identities, label one-hots, literal PWCCA, held-out vs in-sample, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.cca import CCA, one_hot
from src.datamodules.alignment import frame_items
from tests.analyses.phone_fakes import FakeActs, phone_corpus, prototype_acts
from tests.reference.cca import canonical_correlations, pwcca_loop

CONF = Path(__file__).resolve().parents[2] / "conf"
PHONES = ["aa", "iy", "s", "m", "t"]


def _noise(n_utts: int = 40, t: int = 20, d: int = 16, layers: int = 2, seed: int = 0) -> FakeActs:
    rng = np.random.default_rng(seed)
    frames = [rng.standard_normal((layers, t, d)) for _ in range(n_utts)]
    return FakeActs([f"u{i:02d}" for i in range(n_utts)], ["s"] * n_utts, frames)


def _value(res, measure, layer, layer_b="any"):
    vals = [r["value"] for r in res.rows if r["metric"] == measure and r["layer"] == layer
            and (layer_b == "any" or r["layer_b"] == layer_b)]  # fmt: skip
    assert len(vals) == 1, vals
    return vals[0]


def _all(acts, layer):
    return np.asarray(acts.layer(layer), dtype=np.float32).astype(np.float64)  # the analysis reads float32


def test_layer_against_itself_is_one():
    acts = _noise()
    for method in ("pwcca", "svcca", "cca"):
        res = CCA(method=method, pairs="all", held_out=False).run(AnalysisContext(acts, None))
        measure = "cca_mean" if method == "cca" else method
        m = res.matrices[f"{measure}_self"].values
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
        assert m.shape == (2, 2) and 0.0 < m[0, 1] < 0.3  # independent noise: small (in-sample overfit only)
    res = CCA(compare="reference", reference="copy", null_permutations=0).run(
        AnalysisContext(acts, None, lambda name: acts)
    )
    assert _value(res, "pwcca", 1, 1) == pytest.approx(1.0, abs=1e-9)
    assert set(res.matrices) == {"pwcca_copy", "cca_mean_copy"}
    res = CCA(compare="reference", reference="copy").run(AnalysisContext(acts, None, lambda name: acts))
    assert set(res.matrices) == {"pwcca_copy", "cca_mean_copy", "pwcca_null_copy", "cca_mean_null_copy"}
    assert abs(_value(res, "pwcca_null", 1, 1)) < 0.1  # a layer vs itself with its frames shuffled


def test_in_sample_values_match_literal(tmp_path):
    acts = _noise(n_utts=10, d=6)
    x, y = _all(acts, 0), _all(acts, 1)
    res = CCA(held_out=False).run(AnalysisContext(acts, None))  # adjacent pairs: layer 0 vs 1
    assert _value(res, "pwcca", 0, 1) == pytest.approx(pwcca_loop(x, y), rel=1e-9)
    assert _value(res, "cca_mean", 0, 1) == pytest.approx(canonical_correlations(x, y).mean(), rel=1e-9)
    assert res.rows[0]["evaluation"] == "in_sample"
    assert not [p for p in res.figures(tmp_path) if "adjacent" in p.name]  # one pair only: nothing over layers


def test_held_out_below_in_sample_on_noise():
    acts = _noise()
    for method in ("pwcca", "svcca", "cca"):
        measure = "cca_mean" if method == "cca" else method
        fit = _value(CCA(method=method, held_out=False).run(AnalysisContext(acts, None)), measure, 0)
        res = CCA(method=method, test_fraction=0.5).run(AnalysisContext(acts, None))
        held = _value(res, measure, 0)
        assert fit > 0.08 and abs(held) < 0.05 and held < fit - 0.05
        assert res.meta["utterances_held_out"] == 20 and res.meta["frames_held_out"] == 400
        assert res.rows[0]["evaluation"] == "held_out"


@pytest.fixture(scope="module")
def phone_data():
    rng = np.random.default_rng(0)
    corpus = phone_corpus([list(rng.choice(PHONES, size=10)) for _ in range(12)], ["a", "b"] * 6)
    protos = {p: rng.standard_normal((1, 8)) for p in PHONES}
    acts = prototype_acts(corpus, protos, noise=0.3, seed=1)
    return corpus, acts


def test_labels_against_one_hot_layer_is_one(phone_data):
    corpus, acts = phone_data
    fi = frame_items(acts, corpus, "phones")
    onehot, names = one_hot(fi.labels)
    assert names == sorted(PHONES)
    layer = np.asarray(acts.layer(0)).copy()  # (N, 8): columns 0-4 become the one-hot labels
    layer[fi.rows, :5] = onehot
    layer[fi.rows, 5:] = 0.0
    frames = [
        np.stack([layer[a : a + n], acts.layer(0)[a : a + n]]) for a, n in zip(acts.offsets, acts.lengths)
    ]
    fake = FakeActs(acts.ids, acts.speakers, frames)
    for held in (False, True):
        res = CCA(compare="labels", held_out=held).run(AnalysisContext(fake, corpus))
        assert _value(res, "pwcca", 0) == pytest.approx(1.0, abs=1e-9)
        assert _value(res, "cca_mean", 0) == pytest.approx(1.0, abs=1e-9)
        assert 0.5 < _value(res, "pwcca", 1) < 1.0 - 1e-3  # prototypes + noise: high, not perfect
        assert _value(res, "pwcca_null", 1) < 0.3  # labels shuffled against the frames: far below
    assert res.meta["labels"] == 5 and res.line_plots == ["cca_mean", "cca_mean_null", "pwcca", "pwcca_null"]
    assert all(r["reference"] == "labels:phones" and r["layer_b"] is None for r in res.rows)
    nulls = [r for r in res.rows if r["metric"].endswith("_null")]
    assert len(nulls) == len(res.rows) / 2 and all(r["null"] == "frames of one view shuffled" for r in nulls)


def test_results_save(tmp_path):
    acts = _noise(layers=3)
    res = CCA().run(AnalysisContext(acts, None))
    res.save(tmp_path, {"backbone": "noise"})
    assert (tmp_path / "pwcca_adjacent_layers.png").exists() and (tmp_path / "results.csv").exists()


def test_bad_input(phone_data):
    corpus, acts = phone_data
    with pytest.raises(AnalysisError, match="method"):
        CCA(method="kcca")
    with pytest.raises(AnalysisError, match="test_fraction"):
        CCA(held_out=True, test_fraction=1.0)
    with pytest.raises(AnalysisError, match="tier 'words'"):
        CCA(compare="labels", tier="words").run(AnalysisContext(acts, corpus))
    with pytest.raises(AnalysisError, match="at least 2"):
        CCA(held_out=True).run(AnalysisContext(_noise(n_utts=1), None))
    with pytest.raises(AnalysisError, match="at least 2"):
        CCA().run(AnalysisContext(acts, None))  # one layer: no adjacent pair
    with pytest.raises(AnalysisError, match="epsilon_mode"):
        CCA(epsilon_mode="scaled")
    const = FakeActs(["a", "b"], ["s", "s"], [np.ones((2, 6, 3)), np.ones((2, 6, 3))])
    with pytest.raises(AnalysisError, match="constant"):
        CCA().run(AnalysisContext(const, None))


def test_config_composes_and_runs():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("analyze", overrides=["analysis=cca", "logger=none"])
    assert cfg.analysis.held_out is True and cfg.analysis.null_permutations == 1  # honest defaults
    analysis = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"})
    res = analysis.run(AnalysisContext(_noise(), None))
    assert {r["metric"] for r in res.rows} == {"pwcca", "cca_mean", "pwcca_null", "cca_mean_null"}
    assert abs(_value(res, "pwcca", 0)) < 0.05 and res.rows[0]["evaluation"] == "held_out"


def _views(n_utts: int, t: int, d: int, shared: float, seed: int) -> FakeActs:
    """Two layers: independent Gaussian frames (shared=0) or with `shared` of the variance of a
    few directions in common (dependent views)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_utts):
        x = rng.standard_normal((t, d))
        y = rng.standard_normal((t, d))
        y[:, :12] = np.sqrt(shared) * x[:, :12] + np.sqrt(1 - shared) * y[:, :12]
        frames.append(np.stack([x, y]))
    return FakeActs([f"u{i:03d}" for i in range(n_utts)], ["s"] * n_utts, frames)


def test_null_floor_independent_views_held_out_near_zero_in_sample_floor():
    acts = _views(n_utts=40, t=25, d=48, shared=0.0, seed=3)  # 1000 frames, 48 + 48 dims
    held = CCA().run(AnalysisContext(acts, None))
    value, null = _value(held, "pwcca", 0), _value(held, "pwcca_null", 0)
    assert abs(value) < 0.05 and abs(null) < 0.05 and abs(value - null) < 0.05
    # in sample: the value is an overfitting floor, and the shuffled null reproduces it
    fit = CCA(held_out=False).run(AnalysisContext(acts, None))
    value, null = _value(fit, "pwcca", 0), _value(fit, "pwcca_null", 0)
    assert value > 0.12 and null > 0.12 and abs(value - null) < 0.03
    # the floor grows with the width: twice the dimensions, a higher floor
    wide = CCA(held_out=False).run(AnalysisContext(_views(40, 25, 96, 0.0, seed=4), None))
    assert _value(wide, "pwcca_null", 0) > null + 0.05


def test_null_floor_dependent_views_value_exceeds_null():
    acts = _views(n_utts=40, t=25, d=48, shared=0.8, seed=5)
    for held_out in (True, False):
        res = CCA(method="cca", held_out=held_out).run(AnalysisContext(acts, None))
        value, null = _value(res, "cca_mean", 0), _value(res, "cca_mean_null", 0)
        # 12 of 48 directions correlate at sqrt(0.8): mean CCA gains about 12 x 0.89 / 48 = .22 over the null
        assert value > null + 0.15
    res = CCA(method="pwcca").run(AnalysisContext(acts, None))
    assert _value(res, "pwcca", 0) > _value(res, "pwcca_null", 0) + 0.15


@pytest.mark.parametrize("method,pairs", [("pwcca", "adjacent"), ("cca", "all")])
def test_held_out_reuses_whitening_with_the_same_numbers(method, pairs):
    """Each layer's fitting frames are whitened once and reused across pairs and the null: the values equal a fit
    per pair and per shuffle from scratch (cca_fit, and pwcca's own second fit for the weights) exactly."""
    from src.functional.cca import cca_fit, cca_transform_corr, pwcca

    rng = np.random.default_rng(8)
    frames = []
    for _ in range(30):  # three layers, each partly the previous one
        a = rng.standard_normal((20, 12))
        b = 0.7 * a + 0.7 * rng.standard_normal((20, 12))
        frames.append(np.stack([a, b, 0.7 * b + 0.7 * rng.standard_normal((20, 12))]))
    acts = FakeActs([f"u{i:02d}" for i in range(30)], ["s"] * 30, frames)
    cfg = CCA(method=method, pairs=pairs, null_permutations=2, max_frames=400)
    res = cfg.run(AnalysisContext(acts, None))
    fp = cfg._frames(AnalysisContext(acts, None), [0, 1, 2])
    train, test, _ = cfg._split(fp, 0)
    rng = np.random.default_rng([0, 7211])
    shuffles = [(rng.permutation(len(train)), rng.permutation(len(test))) for _ in range(2)]
    x = {k: _all(acts, k)[fp.rows] for k in range(3)}

    def score(xt, yt, xe, ye):
        rho = cca_transform_corr(cca_fit(xt, yt), xe, ye)
        if method == "pwcca":
            _, alpha, _ = pwcca(xt, yt, return_weights=True)
            return float((alpha * rho).sum())
        return float(rho.mean())

    pairs_ = [(0, 1), (1, 2)] if pairs == "adjacent" else [(i, j) for i in range(3) for j in range(3)]
    measure = "pwcca" if method == "pwcca" else "cca_mean"
    for i, j in pairs_:
        want = score(x[i][train], x[j][train], x[i][test], x[j][test])
        null = np.mean([score(x[i][train], x[j][train][p], x[i][test], x[j][test][q]) for p, q in shuffles])
        assert _value(res, measure, i, j) == pytest.approx(want, abs=1e-12)
        assert _value(res, f"{measure}_null", i, j) == pytest.approx(null, abs=1e-12)
