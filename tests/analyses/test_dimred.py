"""Dimensionality reduction analysis: values against scikit-learn run directly, figures, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestCentroid
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.dimred import DimReduction, held_out_split
from tests.analyses.phone_fakes import phone_corpus, prototype_acts

CONF = Path(__file__).resolve().parents[2] / "conf"
PHONES = ["aa", "iy", "s", "m", "t", "z", "uw", "l"]


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return phone_corpus([list(rng.choice(PHONES, size=12)) for _ in range(10)], ["s1", "s2"] * 5)


def _acts(corpus, scale: float, noise: float):
    rng = np.random.default_rng(1)
    protos = {
        p: scale * np.eye(12)[i][None].repeat(3, 0) + rng.standard_normal((3, 12))
        for i, p in enumerate(PHONES)
    }
    return prototype_acts(corpus, protos, noise=noise, seed=2)


def _tokens_by_hand(acts, corpus, layer: int):
    """Every 0.1 s phone is 5 frames at 50 Hz: their mean, in corpus order."""
    x, out, labels = acts.layer(layer), [], []
    for u in range(len(corpus)):
        for k, iv in enumerate(corpus.annotation(u).tiers["phones"]):
            out.append(x[acts.offsets[u] + 5 * k : acts.offsets[u] + 5 * k + 5].mean(0))
            labels.append(iv.label)
    return np.stack(out), np.array(labels)


def _rows(res) -> dict[tuple[int, str, str], float]:
    return {(r["layer"], r["reference"], r["metric"]): r["value"] for r in res.rows}


def test_values_equal_sklearn_run_directly(corpus):
    acts = _acts(corpus, 1.0, 2.0)
    res = DimReduction(methods=["pca", "lda"], layers=None, min_count=1, max_items=None, seed=3).run(
        AnalysisContext(acts, corpus)
    )
    rows = _rows(res)
    for layer in range(3):
        x, labels = _tokens_by_hand(acts, corpus, layer)
        z = StandardScaler().fit_transform(x)
        pca = PCA(2).fit(z)
        assert rows[(layer, "pca", "pca_explained_variance")] == pytest.approx(
            pca.explained_variance_ratio_.sum(), abs=1e-10
        )
        assert rows[(layer, "pca", "silhouette_phone")] == pytest.approx(
            silhouette_score(pca.transform(z), labels), abs=1e-8
        )
        assert rows[(layer, "full", "silhouette_phone")] == pytest.approx(
            silhouette_score(z, labels), abs=1e-10
        )
        test = held_out_split(labels, 0.25, 3)
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(z[~test], labels[~test])
        every = lda.transform(z)
        assert every.shape == (120, 7)  # C - 1 discriminants
        for name, emb in (("lda_centroid_accuracy", every[:, :2]), ("lda_centroid_accuracy_all", every)):
            acc = (NearestCentroid().fit(emb[~test], labels[~test]).predict(emb[test]) == labels[test]).mean()
            assert rows[(layer, "lda", name)] == pytest.approx(acc, abs=1e-12)
            assert 0.2 < acc < 1.0
        assert rows[(layer, "lda", "silhouette_phone")] == pytest.approx(
            silhouette_score(every[:, :2], labels), abs=1e-8
        )
    assert res.meta["lda_test_items"] == int(
        held_out_split(_tokens_by_hand(acts, corpus, 0)[1], 0.25, 3).sum()
    )


def test_held_out_split_is_per_label():
    labels = np.array(["a"] * 8 + ["b"] * 4 + ["c"])
    test = held_out_split(labels, 0.25, 0)
    assert [int(test[labels == c].sum()) for c in "abc"] == [2, 1, 0]


def test_separated_phones_and_figures(corpus, tmp_path):
    acts = _acts(corpus, 20.0, 0.1)
    with threadpool_limits(1):  # t-SNE's OpenMP threads only slow tiny inputs down
        res = DimReduction(methods=["pca", "lda", "tsne", "mds"], layers=["last"], min_count=1).run(
            AnalysisContext(acts, corpus)
        )
    rows = _rows(res)
    for method in ("full", "pca", "lda", "tsne", "mds"):
        assert rows[(2, method, "silhouette_phone")] > 0.9, method
    assert rows[(2, "lda", "lda_centroid_accuracy")] == 1.0
    assert -1 <= rows[(2, "pca", "silhouette_manner")] <= 1
    assert set(res.scatters) == {
        f"{m}_layer02_{a}" for m in ("pca", "lda", "tsne", "mds") for a in ("phone", "manner", "place")
    }
    pts, labels, opts = res.scatters["tsne_layer02_manner"]
    assert (opts["xlabel"], opts["label_name"]) == ("t-SNE 1", "manner")
    assert res.scatters["pca_layer02_phone"][2]["xlabel"].startswith("PC1 (")  # explained variance on the axis
    assert pts.shape == (120, 2) and set(labels) == {"vowel", "fricative", "nasal", "stop", "liquid"}
    pngs = res.save(tmp_path, {"backbone": "fake"})
    assert {f"{m}_layer02_place.png" for m in ("pca", "lda", "tsne", "mds")} <= {p.name for p in pngs}
    assert all(p.stat().st_size > 5000 for p in pngs)


def test_errors(corpus):
    few = phone_corpus([["aa", "iy", "s"]], ["s"])
    a = _acts(few, 1.0, 0.1)
    with pytest.raises(AnalysisError, match="at least 10"):
        DimReduction(min_count=1).run(AnalysisContext(a, few))
    two = phone_corpus([["aa", "iy"] * 6], ["s"])
    with pytest.raises(AnalysisError, match="distinct phone labels: 2 items, the analysis needs at least 3"):
        DimReduction(min_count=1, methods=["pca", "lda"]).run(AnalysisContext(_acts(two, 1.0, 0.1), two))
    with pytest.raises(AnalysisError, match="methods"):
        DimReduction(methods=["isomap"])
    flat = prototype_acts(corpus, {p: np.ones((1, 4)) for p in PHONES})
    with pytest.raises(AnalysisError, match="layer 0 is constant"):
        DimReduction(methods=["pca"], min_count=1).run(AnalysisContext(flat, corpus))


def test_default_config_composes_and_runs(corpus, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("analyze", overrides=["analysis=dimred", "backbone=mfcc", "data=textgrid", f"data.root={tmp_path}",
                                            "logger=none", "analysis.min_count=1"])  # fmt: skip
    with threadpool_limits(1):
        res = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"}).run(
            AnalysisContext(_acts(corpus, 3.0, 1.0), corpus)
        )
    assert {(r["reference"], r["metric"]) for r in res.rows} >= {
        ("tsne", "silhouette_phone"),
        ("lda", "silhouette_manner"),
    }
    assert res.meta["layers"] == [0, 1, 2]


@pytest.mark.slow
def test_umap_runs_seeded(corpus):
    acts = _acts(corpus, 20.0, 0.1)
    runs = [DimReduction(methods=["umap"], layers=["last"], min_count=1, seed=0).run(AnalysisContext(acts, corpus))
            for _ in range(2)]  # fmt: skip
    assert _rows(runs[0])[(2, "umap", "silhouette_phone")] > 0.9
    np.testing.assert_array_equal(
        runs[0].scatters["umap_layer02_phone"][0], runs[1].scatters["umap_layer02_phone"][0]
    )
