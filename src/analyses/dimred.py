"""Dimensionality reduction of phone tokens per layer: PCA, LDA, MDS, t-SNE, UMAP.

Items are the segments of a tier (default ``phones``, silences left out), mean-pooled
(alignment conventions), of labels with at least ``min_count`` tokens, a seeded
subsample of at most ``max_items``. Features are standardised per dimension
(``standardize``) before every method. All methods are scikit-learn's (UMAP:
umap-learn), seeded:

- ``pca``: ``PCA(2)``; measure ``pca_explained_variance`` = the variance ratio of the
  first two components (of the standardised features).
- ``lda``: ``LinearDiscriminantAnalysis`` fit on phone labels of a training split
  (``lda_test_fraction`` of each label's tokens held out, seeded); the scatter shows all
  tokens on the first two discriminants; measure ``lda_centroid_accuracy`` = accuracy of
  a nearest-centroid classifier (centroids of the training tokens in that 2-D space) on
  the held-out tokens, ``lda_centroid_accuracy_all`` the same in all ``C - 1``
  discriminants (two dimensions are a hard bottleneck for 40 phones); the majority-label
  rate is in ``meta``.
- ``mds`` (metric, SMACOF from classical-MDS init), ``tsne`` (Barnes-Hut, PCA init),
  ``umap`` (``n_jobs=1`` for reproducibility; umap-learn compiles with numba on its first
  call in a process, about 30 s).

Measures per layer (``reference`` = the method, or ``full`` for the standardised
D-dimensional space): ``silhouette_<attribute>`` (``sklearn.metrics.silhouette_score``,
euclidean) of the embedding for each attribute of ``silhouette_by`` (``phone`` or a
phone class attribute of :mod:`src.datamodules.phones` such as ``manner``, ``place``).
Scatter PNGs: ``<method>_layer<LL>_<attribute>`` for each attribute of ``colour_by``.
Phone class attributes need labels of the phone table; with other labels (e.g. your own
corpus' phone set) they are skipped and listed in ``meta``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from src.analyses.base import (
    AnalysisContext,
    AnalysisError,
    AnalysisResult,
    analysis_layers,
    phone_tokens,
    pool_segments,
    require,
    subsample,
    take,
)
from src.datamodules.phones import UnknownPhoneError, phone_classes
from src.progress import progress

log = logging.getLogger(__name__)

METHODS = ("pca", "lda", "mds", "tsne", "umap")
AXIS_NAMES = {"pca": "PC", "lda": "LD", "mds": "MDS ", "tsne": "t-SNE ", "umap": "UMAP "}
METHOD_NAMES = {"pca": "PCA", "lda": "LDA", "mds": "MDS", "tsne": "t-SNE", "umap": "UMAP"}


def axis_labels(method: str, emb: np.ndarray, x: np.ndarray) -> dict:
    """Scatter axis labels of a 2-D embedding ``emb`` of ``x``: for PCA with the share of the total variance of
    ``x`` each component explains (equal to scikit-learn's ``explained_variance_ratio_``)."""
    name = AXIS_NAMES.get(method, f"{method} ")
    if method != "pca":
        return {"xlabel": f"{name}1", "ylabel": f"{name}2"}
    share = np.var(emb, axis=0) / np.var(x, axis=0).sum()  # (2,) variance ratios
    return {"xlabel": f"PC1 ({100 * share[0]:.1f}% of variance)", "ylabel": f"PC2 ({100 * share[1]:.1f}% of variance)"}


class DimredResult(AnalysisResult):
    """Scatters per method x layer x labelling, and one figure per measure over the measured layers with chance
    lines for the LDA accuracies (:func:`src.reporting.figures_analyses.plot_dimred_measure`)."""

    def figures(self, out_dir, title_prefix: str = "") -> list:
        from pathlib import Path

        from src.reporting.figures_analyses import plot_dimred_measure

        pngs = self.matrix_figures(out_dir, title_prefix)  # the scatters
        chance = {}
        if self.meta.get("num_labels"):
            chance["uniform guess (1 / #phones)"] = 1.0 / int(self.meta["num_labels"])
        if self.meta.get("lda_majority_rate") is not None:
            chance["majority phone (held-out)"] = float(self.meta["lda_majority_rate"])
        for measure in self.line_plots if self.line_plots is not None else sorted({r["metric"] for r in self.rows}):
            pngs.append(plot_dimred_measure(self.rows, Path(out_dir) / f"{measure}_over_layers.png", measure,
                                            title_prefix, chance=chance if measure.startswith("lda_") else None))  # fmt: skip
        return pngs


def held_out_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask holding out ``floor(fraction * count)`` random tokens of each label.

    By hand rather than ``train_test_split(stratify=...)``, which refuses labels with a
    single token (those stay in training here)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        k = int(np.floor(fraction * len(idx)))
        if k:
            test[rng.choice(idx, size=k, replace=False)] = True
    return test


class DimReduction:
    """2-D embeddings of phone tokens per layer, their scatter plots and cluster measures.

    Args:
        methods: any of ``pca``, ``lda``, ``mds``, ``tsne``, ``umap``.
        layers: a layer spec (:func:`src.layers.resolve_layers`: ints, negatives, ``first``/``middle``/``last``,
            ranges, ``final_norm``); ``None``: every residual state.
        tier, pooling: the items (segments of ``tier``, ``mean`` | ``center`` pooled).
        min_count: labels with fewer tokens (in the whole corpus) are left out.
        max_items: seeded subsample of tokens (t-SNE/MDS/UMAP and silhouettes are quadratic-ish).
        standardize: z-score every feature (over the items) before reducing.
        colour_by: scatter colourings: ``phone`` and/or phone class attributes.
        silhouette_by: labellings whose silhouette is measured.
        perplexity: t-SNE perplexity (capped at (n - 1) / 3).
        n_neighbors: UMAP neighbours.
        lda_test_fraction: held-out share of each label's tokens for the LDA accuracy.
        lda_shrinkage: ``auto`` (Ledoit-Wolf, eigen solver) | a float in [0, 1] | ``None`` (svd solver).
        seed: subsampling and every method (``None``: the run's seed).
    """

    def __init__(
        self,
        methods: Sequence[str] = ("pca", "lda", "tsne"),
        layers: Sequence[int | str] | None = ("first", "middle", "last"),
        tier: str = "phones",
        pooling: str = "mean",
        min_count: int = 10,
        max_items: int | None = 2000,
        standardize: bool = True,
        colour_by: Sequence[str] = ("phone", "manner", "place"),
        silhouette_by: Sequence[str] = ("phone", "manner"),
        perplexity: float = 30.0,
        n_neighbors: int = 15,
        lda_test_fraction: float = 0.25,
        lda_shrinkage: str | float | None = "auto",
        seed: int | None = None,
    ) -> None:
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise AnalysisError(f"dimred.methods must be a non-empty list of {METHODS}, got {list(methods)}")
        if not 0 <= lda_test_fraction < 1:
            raise AnalysisError(f"dimred.lda_test_fraction must be in [0, 1), got {lda_test_fraction}")
        self.methods, self.layers, self.tier, self.pooling = list(methods), layers, tier, pooling
        self.min_count, self.max_items, self.standardize = min_count, max_items, standardize
        self.colour_by, self.silhouette_by = list(colour_by), list(silhouette_by)
        self.perplexity, self.n_neighbors = perplexity, n_neighbors
        self.lda_test_fraction, self.lda_shrinkage, self.seed = lda_test_fraction, lda_shrinkage, seed

    def _labellings(self, phones: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
        out, skipped = {"phone": phones}, []
        for attr in dict.fromkeys(self.colour_by + self.silhouette_by):
            if attr == "phone":
                continue
            try:
                out[attr] = np.array(phone_classes(list(phones), attr))
            except UnknownPhoneError as e:
                skipped.append(attr)
                log.warning("dimred: %r classes skipped: %s", attr, e)
            except ValueError as e:
                raise AnalysisError(f"dimred: {e}") from None
        return out, skipped

    def _embed(self, method: str, x: np.ndarray, phones: np.ndarray, test: np.ndarray, seed: int):
        """(embedding (n, 2), extra rows {measure: value})."""
        n = len(x)
        if method == "pca":
            from sklearn.decomposition import PCA

            pca = PCA(n_components=2, random_state=seed)
            emb = pca.fit_transform(x)
            return emb, {"pca_explained_variance": float(pca.explained_variance_ratio_[:2].sum())}
        if method == "lda":
            from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
            from sklearn.neighbors import NearestCentroid

            if self.lda_shrinkage is None:
                lda = LinearDiscriminantAnalysis(solver="svd")
            else:
                lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=self.lda_shrinkage)
            train = ~test
            lda.fit(x[train], phones[train])
            every = lda.transform(x)  # (n, min(C - 1, D)) discriminants, most discriminative first
            emb = every[:, :2]  # (n, 2)
            extra = {}
            if test.any():
                for name, z in (("lda_centroid_accuracy", emb), ("lda_centroid_accuracy_all", every)):
                    nc = NearestCentroid().fit(z[train], phones[train])
                    extra[name] = float((nc.predict(z[test]) == phones[test]).mean())
            return emb, extra
        if method == "mds":
            from sklearn.manifold import MDS

            return MDS(n_components=2, random_state=seed, init="classical_mds", n_init=1).fit_transform(x), {}
        if method == "tsne":
            from sklearn.manifold import TSNE

            perp = float(min(self.perplexity, (n - 1) / 3))
            return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x), {}
        try:
            import umap
        except ImportError:
            raise AnalysisError("dimred method 'umap' needs umap-learn: pip install umap-learn") from None
        reducer = umap.UMAP(
            n_components=2, n_neighbors=min(self.n_neighbors, n - 1), random_state=seed, n_jobs=1
        )
        return reducer.fit_transform(x), {}

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        from sklearn.metrics import silhouette_score
        from sklearn.preprocessing import StandardScaler

        acts = ctx.acts
        seed = ctx.seed if self.seed is None else self.seed
        layers = analysis_layers(self.layers, acts, "analysis.layers")
        tokens = phone_tokens(acts, ctx.corpus, self.tier, self.pooling, self.min_count)
        tokens = take(tokens, subsample(len(tokens.labels), self.max_items, seed))
        phones = tokens.labels
        n_labels = len(np.unique(phones))
        require(
            len(phones), 10, f"dimensionality reduction: tokens of labels with >= {self.min_count} tokens"
        )
        require(
            n_labels, 3 if "lda" in self.methods else 2, "dimensionality reduction: distinct phone labels"
        )
        labellings, skipped = self._labellings(phones)
        test = held_out_split(phones, self.lda_test_fraction, seed)
        majority = max(np.unique(phones[test], return_counts=True)[1], default=0) / max(int(test.sum()), 1)

        rows, scatters, skipped_sil = [], {}, []
        for layer in progress(layers, desc="dimred layers", unit="layer"):
            x = pool_segments(acts.layer(layer), tokens.lo, tokens.hi, what=f"layer {layer}")  # (n, D)
            if np.ptp(x, axis=0).max() == 0:
                raise AnalysisError(f"dimred: layer {layer} is constant over all {len(x)} tokens")
            if self.standardize:
                x = StandardScaler().fit_transform(x)
            spaces = {"full": (x, {})}
            for method in self.methods:
                spaces[method] = self._embed(method, x, phones, test, seed)
            for method, (emb, extra) in spaces.items():
                for measure, value in extra.items():
                    rows.append({"layer": layer, "reference": method, "metric": measure, "value": value})
                for attr in self.silhouette_by:
                    if attr not in labellings:
                        continue
                    lab = labellings[attr]
                    if not 2 <= len(np.unique(lab)) <= len(lab) - 1:
                        skipped_sil.append(attr)
                        continue
                    s = float(silhouette_score(emb, lab, metric="euclidean"))
                    rows.append(
                        {"layer": layer, "reference": method, "metric": f"silhouette_{attr}", "value": s}
                    )
                if method == "full":
                    continue
                for attr in self.colour_by:
                    if attr in labellings:
                        scatters[f"{method}_layer{layer:02d}_{attr}"] = (
                            np.asarray(emb, dtype=np.float64),
                            list(labellings[attr]),
                            {**axis_labels(method, emb, x), "label_name": attr,
                             "title": f"{METHOD_NAMES.get(method, method)} of layer {layer}, by {attr}"},
                        )  # fmt: skip
        meta = {
            "counts": tokens.counts, "num_items": len(phones), "num_labels": int(n_labels), "layers": layers,
            "methods": self.methods, "lda_test_items": int(test.sum()), "lda_majority_rate": float(majority),
            "attributes_skipped": skipped, "silhouettes_skipped": sorted(set(skipped_sil)),
        }  # fmt: skip
        plots = sorted({r["metric"] for r in rows})  # each drawn by DimredResult.figures
        return DimredResult("dimred", rows, scatters=scatters, line_plots=plots, meta=meta)
