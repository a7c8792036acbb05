"""Mutual-information analysis: values against scikit-learn and literal counts on the same units."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import normalized_mutual_info_score

from src.analyses.base import AnalysisContext, AnalysisError, subsample
from src.analyses.mutual_info import MutualInfo
from src.datamodules.alignment import frame_items, gather
from src.datamodules.phones import phone_classes
from tests.analyses.phone_fakes import phone_corpus, prototype_acts

CONF = Path(__file__).resolve().parents[2] / "conf"
PHONES = ["aa", "iy", "s", "m", "t", "z", "uw", "l"]  # manners: vowel fricative nasal stop liquid


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return phone_corpus([list(rng.choice(PHONES, size=12)) for _ in range(10)], ["s1", "s2"] * 5)


def _protos(scale: float, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        p: scale * np.eye(16)[i][None].repeat(2, 0) + 0.3 * rng.standard_normal((2, 16))
        for i, p in enumerate(PHONES)
    }


def _by_layer(res, measure: str, k: int) -> dict[int, float]:
    return {r["layer"]: r["value"] for r in res.rows if r["metric"] == measure and r["k"] == k}


def test_separated_phones_give_perfect_units(corpus):
    acts = prototype_acts(corpus, _protos(10.0), noise=0.05, seed=2)
    res = MutualInfo(ks=[8], algorithm="kmeans", seed=0).run(AnalysisContext(acts, corpus))
    for layer in (0, 1):
        assert _by_layer(res, "nmi", 8)[layer] == pytest.approx(1.0)
        assert _by_layer(res, "pnmi", 8)[layer] == pytest.approx(1.0)
        assert _by_layer(res, "phone_purity", 8)[layer] == pytest.approx(1.0)
        assert _by_layer(res, "cluster_purity", 8)[layer] == pytest.approx(1.0)
        assert _by_layer(res, "h_phone_given_unit", 8)[layer] == pytest.approx(0.0, abs=1e-12)
        assert _by_layer(res, "jsd_mean", 8)[layer] == pytest.approx(1.0)  # classes use disjoint units
    ((name, m),) = res.matrices.items()
    assert name == "jsd_manner_k8_layer00"  # ties in NMI: the first layer
    assert m.row_labels == ["fricative", "liquid", "nasal", "stop", "vowel"]
    np.testing.assert_allclose(m.values, 1.0 - np.eye(5), atol=1e-12)


@pytest.mark.parametrize("algorithm", ["kmeans", "minibatch"])
def test_values_equal_sklearn_and_literal_counts_on_the_same_units(corpus, algorithm):
    acts = prototype_acts(corpus, _protos(1.0), noise=1.0, seed=3)
    k, seed = 6, 5
    res = MutualInfo(ks=[k], algorithm=algorithm, max_frames=300, layers=[1], seed=seed).run(
        AnalysisContext(acts, corpus)
    )
    # the same units, by hand: scikit-learn on the same fitting frames, predicting every frame
    frames = frame_items(acts, corpus, "phones")
    x = gather(acts.layer(1), frames.rows)
    fit = x[subsample(len(x), 300, seed)]
    km = KMeans(k, n_init=1, random_state=seed) if algorithm == "kmeans" else MiniBatchKMeans(
        k, batch_size=4096, n_init=3, random_state=seed)  # fmt: skip
    units = km.fit(fit).predict(x)
    labels = frames.labels
    assert _by_layer(res, "nmi", k)[1] == pytest.approx(
        normalized_mutual_info_score(labels, units), abs=1e-12
    )
    n = len(units)
    joint = Counter(zip(units.tolist(), labels.tolist()))
    phone_purity = sum(max(joint[(u, y)] for y in PHONES) for u in set(units.tolist())) / n
    cluster_purity = sum(max(joint[(u, y)] for u in range(k)) for y in PHONES) / n
    unit_count = Counter(units.tolist())
    h = -sum(c / n * math.log2(c / unit_count[u]) for (u, y), c in joint.items())
    assert _by_layer(res, "phone_purity", k)[1] == pytest.approx(phone_purity, abs=1e-12)
    assert _by_layer(res, "cluster_purity", k)[1] == pytest.approx(cluster_purity, abs=1e-12)
    assert _by_layer(res, "h_phone_given_unit", k)[1] == pytest.approx(h, abs=1e-12)
    assert 0.1 < phone_purity < 0.99  # a non-trivial case
    # JSD between manner classes' unit distributions, with scipy
    manners = np.array(phone_classes(list(labels), "manner"))
    names = sorted(set(manners))
    dist = np.array([[np.sum((manners == c) & (units == u)) for u in range(k)] for c in names], dtype=float)
    js = np.array([[jensenshannon(p, q, base=2) ** 2 for q in dist] for p in dist])
    (m,) = res.matrices.values()
    np.testing.assert_allclose(m.values, js, atol=1e-12)
    np.testing.assert_allclose(m.values, m.values.T, atol=0)
    assert np.diag(m.values).max() == 0.0
    assert _by_layer(res, "jsd_mean", k)[1] == pytest.approx(
        js[np.triu_indices(len(names), 1)].mean(), abs=1e-12
    )


def test_errors_and_skipped_jsd(corpus):
    acts = prototype_acts(corpus, _protos(1.0), noise=1.0)
    with pytest.raises(AnalysisError, match="needs at least 1000"):
        MutualInfo(ks=[1000]).run(AnalysisContext(acts, corpus))
    with pytest.raises(AnalysisError, match="layer 0 is constant"):
        flat = prototype_acts(corpus, {p: np.ones((1, 4)) for p in PHONES})
        MutualInfo(ks=[4]).run(AnalysisContext(flat, corpus))
    odd = phone_corpus([["xa", "xb", "xc"] * 4] * 3, ["s"] * 3)  # labels outside the phone table (no digits:
    # the label normalisation strips stress digits from phones)
    a = prototype_acts(odd, {p: np.eye(3)[[i]] for i, p in enumerate(["xa", "xb", "xc"])}, noise=0.1)
    res = MutualInfo(ks=[3], algorithm="kmeans").run(AnalysisContext(a, odd))
    assert "jsd" in res.meta["notes"] and not res.matrices
    assert {r["metric"] for r in res.rows} == {
        "nmi",
        "pnmi",
        "phone_purity",
        "cluster_purity",
        "h_phone_given_unit",
    }


def test_config_composes_runs_and_saves(corpus, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    acts = prototype_acts(corpus, _protos(3.0), noise=0.5)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("analyze", overrides=["analysis=mutual_info", "backbone=mfcc", "data=textgrid",
                                            f"data.root={tmp_path}", "logger=none", "analysis.ks=[4,8]"])  # fmt: skip
    res = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"}).run(
        AnalysisContext(acts, corpus)
    )
    assert {r["reference"] for r in res.rows} == {"k=4", "k=8"}
    assert len(res.rows) == 2 * 2 * 6  # layers x ks x measures
    pngs = {p.name for p in res.save(tmp_path / "out", {"backbone": "fake"})}
    assert {"nmi_over_layers.png", "jsd_mean_over_layers.png"} <= pngs
    assert any(n.startswith("jsd_manner_k8_layer") for n in pngs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_plusplus_picks_sklearns_centres(dtype):
    """The project's k-means++ seeding (no repeated float64 upcasts) = scikit-learn's own, draw for draw."""
    from sklearn.cluster._kmeans import _kmeans_plusplus
    from sklearn.utils.extmath import row_norms

    from src.analyses.mutual_info import kmeans_plusplus

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((900, 24)) * rng.uniform(0.1, 30.0, 24) + rng.standard_normal(24) * 50).astype(dtype)
    for seed, k in [(0, 7), (3, 40)]:
        want, _ = _kmeans_plusplus(x, k, x_squared_norms=row_norms(x, squared=True), sample_weight=np.ones(len(x), dtype),
                                   random_state=np.random.RandomState(seed))  # fmt: skip
        got = kmeans_plusplus(x, k, np.random.RandomState(seed))
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, want)
