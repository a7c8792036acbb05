"""Discrete units per layer (k-means) and what they share with phone labels.

For each layer and each ``k`` of ``ks``, k-means (scikit-learn ``MiniBatchKMeans``, or
``KMeans`` with ``algorithm: kmeans``; seeded) is fit on a seeded subsample of at most
``max_frames`` labelled frames (frames inside a segment of ``tier``, silences left out;
alignment conventions), then every labelled frame (or a seeded subsample of
``max_eval_frames``) gets its nearest centroid as its unit. Measures, in rows with
``reference = "k=<k>"`` and a ``k`` column (:mod:`src.functional.mutual_info`):

- ``nmi``: normalised mutual information between units and phones (arithmetic mean
  normalisation, as scikit-learn's ``normalized_mutual_info_score``);
- ``pnmi``: I(phone; unit) / H(phone) (Hsu et al., 2021);
- ``phone_purity`` = sum_u max_y P(u, y), ``cluster_purity`` = sum_y max_u P(u, y);
- ``h_phone_given_unit``: H(phone | unit) in bits;
- ``jsd_mean``: with ``class_attribute`` (e.g. ``manner``), the mean Jensen-Shannon
  divergence (bits, in [0, 1]) between the unit distributions of every two classes.

The class x class JSD matrix is saved for the layer with the best ``nmi`` (per ``k``).
Phone classes need labels of the phone table (:mod:`src.datamodules.phones`); with other
labels the JSD is skipped and ``meta`` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from src.analyses.base import (
    AnalysisContext,
    AnalysisError,
    AnalysisResult,
    Matrix,
    _drop_silences,
    analysis_layers,
    check_finite,
    read_rows,
    require,
    subsample,
)
from src.datamodules.alignment import frame_items
from src.datamodules.phones import UnknownPhoneError, phone_classes
from src.progress import progress

log = logging.getLogger(__name__)


def kmeans_plusplus(x: np.ndarray, n_clusters: int, random_state: np.random.RandomState) -> np.ndarray:
    """scikit-learn's k-means++ seeding (``sklearn.cluster._kmeans._kmeans_plusplus`` with unit sample weights and
    ``2 + log(k)`` local trials): the same draws from ``random_state`` and the same arithmetic, so the same centres.

    What differs is only the cost: for float32 data scikit-learn computes every distance in float64 on chunks it
    upcasts again for every centre (copying ``x`` to float64 and recomputing its squared norms ``k x`` per
    seeding); here ``x`` is upcast and its norms computed once, then each centre's candidates take one float64
    product with all points, cast to ``x``'s dtype as scikit-learn does.  ``init=`` callable of scikit-learn's
    k-means (it passes the init subsample and its ``RandomState``); tested to pick the same centre indices.
    """
    n_samples = x.shape[0]
    x64 = np.asarray(x, dtype=np.float64)  # (n, d), once
    x64t = np.ascontiguousarray(x64.T)  # (d, n): a contiguous right operand makes the product faster, same values
    xx = np.einsum("ij,ij->i", x64, x64)  # (n,) squared norms in float64 (sklearn's row_norms of the upcast chunk)

    def dist(ids) -> np.ndarray:  # squared distances (len(ids), n) in x's dtype, clipped at 0 (sklearn)
        d = -2 * (x64[ids] @ x64t)
        d += xx[ids][:, None]
        d += xx[None, :]
        return np.maximum(d.astype(x.dtype, copy=False), 0)

    sample_weight = np.ones(n_samples, dtype=x.dtype)
    n_local_trials = 2 + int(np.log(n_clusters))
    centers = np.empty((n_clusters, x.shape[1]), dtype=x.dtype)
    center_id = random_state.choice(n_samples, p=sample_weight / sample_weight.sum())
    centers[0] = x[center_id]
    closest_dist_sq = dist([center_id])  # (1, n)
    current_pot = closest_dist_sq @ sample_weight
    for c in range(1, n_clusters):
        rand_vals = random_state.uniform(size=n_local_trials) * current_pot
        candidate_ids = np.searchsorted(np.cumsum(sample_weight * closest_dist_sq), rand_vals)
        np.clip(candidate_ids, None, closest_dist_sq.size - 1, out=candidate_ids)
        distance_to_candidates = dist(candidate_ids)  # (trials, n)
        np.minimum(closest_dist_sq, distance_to_candidates, out=distance_to_candidates)
        candidates_pot = distance_to_candidates @ sample_weight.reshape(-1, 1)
        best = np.argmin(candidates_pot)
        current_pot = candidates_pot[best]
        closest_dist_sq = distance_to_candidates[best]
        centers[c] = x[candidate_ids[best]]
    return centers


def fit_units(x: np.ndarray, k: int, algorithm: str = "minibatch", seed: int = 0, batch_size: int = 4096):
    """A fitted scikit-learn k-means of ``x (n, d)`` with ``k`` clusters.

    ``minibatch``: ``MiniBatchKMeans(k, batch_size, n_init=3, random_state=seed)``;
    ``kmeans``: ``KMeans(k, n_init=1, random_state=seed)`` (Lloyd, k-means++ init).
    The k-means++ seeding is :func:`kmeans_plusplus` (scikit-learn's, the same centres, without its repeated
    float64 copies of the data, which took most of the time).
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if algorithm == "minibatch":
        km = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init=3, random_state=seed, init=kmeans_plusplus)
    elif algorithm == "kmeans":
        km = KMeans(n_clusters=k, n_init=1, random_state=seed, init=kmeans_plusplus)
    else:
        raise AnalysisError(f"mutual_info.algorithm must be 'minibatch' or 'kmeans', got {algorithm!r}")
    return km.fit(x)


def jsd_matrix(dists: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (bits) between every two rows of ``dists (C, k)``: (C, C)."""
    from src.functional.mutual_info import js_divergence

    return np.asarray(js_divergence(dists[:, None, :], dists[None, :, :], base=2.0))  # (C, C)


class MutualInfo:
    """k-means units per layer vs phone labels: NMI, purities, conditional entropy, class JSD.

    Args:
        layers: a layer spec (:func:`src.layers.resolve_layers`: ints, negatives, ``first``/``middle``/``last``,
            ranges, ``final_norm``); ``None``: every residual state.
        ks: numbers of units (one set of rows and one curve per k).
        tier: the tier whose labels the frames take.
        max_frames: frames to fit k-means on (seeded subsample).
        max_eval_frames: frames whose units are scored (seeded subsample; ``None``: all, in chunks).
        algorithm: ``minibatch`` | ``kmeans``.
        batch_size: MiniBatchKMeans batch size.
        standardize: z-score features (statistics of the fitting frames) before k-means.
        class_attribute: phone class attribute for the JSD (``manner``, ``place``, ...; ``None``: no JSD).
        seed: subsampling and k-means (``None``: the run's seed).
    """

    def __init__(
        self,
        layers: Sequence[int | str] | None = None,
        ks: Sequence[int] = (50, 100),
        tier: str = "phones",
        max_frames: int | None = 50_000,
        max_eval_frames: int | None = None,
        algorithm: str = "minibatch",
        batch_size: int = 4096,
        standardize: bool = False,
        class_attribute: str | None = "manner",
        seed: int | None = None,
    ) -> None:
        if not ks or any(int(k) < 2 for k in ks):
            raise AnalysisError(f"mutual_info.ks must be a non-empty list of integers >= 2, got {list(ks)}")
        if algorithm not in ("minibatch", "kmeans"):
            raise AnalysisError(f"mutual_info.algorithm must be 'minibatch' or 'kmeans', got {algorithm!r}")
        self.layers, self.ks, self.tier = layers, [int(k) for k in ks], tier
        self.max_frames, self.max_eval_frames = max_frames, max_eval_frames
        self.algorithm, self.batch_size, self.standardize = algorithm, batch_size, standardize
        self.class_attribute, self.seed = class_attribute, seed

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        from src.functional.mutual_info import (
            conditional_entropy,
            normalized_mutual_info,
            phone_normalized_mutual_info,
            purity,
            unit_distributions,
        )

        acts = ctx.acts
        seed = ctx.seed if self.seed is None else self.seed
        layers = analysis_layers(self.layers, acts, "analysis.layers")
        frames = frame_items(acts, ctx.corpus, self.tier)
        speech = _drop_silences(frames.labels, ctx.corpus)
        rows_all, labels_all = frames.rows[speech], frames.labels[speech]
        fit_idx = subsample(len(rows_all), self.max_frames, seed)
        eval_idx = subsample(len(rows_all), self.max_eval_frames, seed + 1)
        require(len(fit_idx), max(self.ks), f"k-means with k={max(self.ks)}: labelled frames to fit on")
        require(len(np.unique(labels_all)), 2, "mutual information: distinct labels")
        eval_rows, eval_labels = rows_all[eval_idx], labels_all[eval_idx]
        classes, notes = None, {}
        if self.class_attribute:
            try:
                uniq, inverse = np.unique(eval_labels, return_inverse=True)
                classes = np.array(phone_classes(list(uniq), self.class_attribute))[inverse.reshape(-1)]
            except UnknownPhoneError as e:
                notes["jsd"] = f"skipped: {e}"
                log.warning("mutual_info: JSD between %s classes skipped: %s", self.class_attribute, e)
            except ValueError as e:
                raise AnalysisError(f"mutual_info.class_attribute: {e}") from None

        rows, jsd_by = [], {}  # jsd_by[k][layer] = (class names, (C, C))
        for layer in progress(layers, desc="k-means layers", unit="layer"):
            x = acts.layer(layer)
            fit = check_finite(read_rows(x, rows_all[fit_idx]), f"layer {layer}")  # (n_fit, D) float32
            if np.ptp(fit, axis=0).max() == 0:
                raise AnalysisError(
                    f"mutual_info: layer {layer} is constant over the {len(fit)} fitting frames"
                )
            mean, scale = np.zeros(fit.shape[1], np.float32), np.ones(fit.shape[1], np.float32)
            if self.standardize:
                mean, scale = fit.mean(0), fit.std(0)
                scale[scale == 0] = 1.0
            for k in self.ks:
                km = fit_units((fit - mean) / scale, k, self.algorithm, seed, self.batch_size)
                units = np.empty(len(eval_rows), dtype=np.int64)
                for s in range(0, len(eval_rows), 65536):  # chunks: never all frames of a layer at once
                    units[s : s + 65536] = km.predict((read_rows(x, eval_rows[s : s + 65536]) - mean) / scale)
                phone_p, cluster_p = purity(units, eval_labels)
                values = {
                    "nmi": normalized_mutual_info(units, eval_labels),
                    "pnmi": phone_normalized_mutual_info(units, eval_labels),
                    "phone_purity": phone_p,
                    "cluster_purity": cluster_p,
                    "h_phone_given_unit": conditional_entropy(eval_labels, units, base=2.0),
                }
                if classes is not None and len(np.unique(classes)) >= 2:
                    names, dists = unit_distributions(units, classes, k)  # (C, k)
                    m = jsd_matrix(dists)
                    values["jsd_mean"] = float(m[np.triu_indices(len(names), 1)].mean())
                    jsd_by.setdefault(k, {})[layer] = ([str(c) for c in names], m)
                for measure, v in values.items():
                    rows.append(
                        {"layer": layer, "reference": f"k={k}", "k": k, "metric": measure, "value": float(v)}
                    )
        matrices, best = {}, {}
        for k, per_layer in jsd_by.items():
            nmi = {r["layer"]: r["value"] for r in rows if r["k"] == k and r["metric"] == "nmi"}
            layer = max(per_layer, key=lambda lay: nmi[lay])
            names, m = per_layer[layer]
            best[k] = layer
            matrices[f"jsd_{self.class_attribute}_k{k}_layer{layer:02d}"] = Matrix(
                m, names, names, title=f"JSD of unit distributions, {self.class_attribute}, k={k}, layer {layer} (best NMI)",
                vmin=0.0, vmax=1.0, xlabel=self.class_attribute, ylabel=self.class_attribute,
                quantity="Jensen-Shannon divergence (bits, 0..1)",
            )  # fmt: skip
        meta = {
            "counts": {**frames.counts, "silence_frames": int((~speech).sum())}, "fit_frames": len(fit_idx),
            "eval_frames": len(eval_idx), "num_labels": len(np.unique(labels_all)), "ks": self.ks,
            "layers": layers, "algorithm": self.algorithm, "jsd_matrix_layer": best, "notes": notes,
        }  # fmt: skip
        return AnalysisResult("mutual_info", rows, matrices=matrices, meta=meta)
