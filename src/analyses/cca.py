"""Canonical correlation analysis between layers, phone labels and reference spaces.

SVCCA (Raghu et al., 2017) and PWCCA (Morcos et al., 2018) as used for speech models
by Pasad et al. (2021): each layer vs the next layer (or every layer), vs one-hot phone
labels of its frames, or vs a reference feature space such as MFCC (frames paired by
time, as for CKA).

Conventions:

- Frames: labelled frames of ``tier`` (``compare=labels``), or every frame paired with
  its reference (``layers``, ``reference``; see ``src.analyses.base.frame_pairs``).
  At most ``max_frames`` frames (random, seeded) are used for fitting, and as many for
  held-out scoring.
- ``held_out: true`` (the default): utterances are split (``test_fraction`` of them, seeded) into a
  fitting and a scoring set. CCA projections (and for SVCCA the SVD reduction, with
  scikit-learn's PCA) are fitted on the first; the reported correlations are those of
  the projected held-out frames (Pasad et al., 2021), which can be negative; PWCCA keeps
  the weights of the fitted directions. Labels seen in only one of the two sets are left
  out (counted). In-sample CCA (``held_out: false``) overfits: two *independent* Gaussian
  views of 10000 frames score PWCCA about .17 at 384 dimensions and .24 at 768, a floor
  that grows with the width, so in-sample values of models of different widths are not
  comparable.
- Null floor: next to every value, ``<measure>_null`` is the same procedure (same frames,
  same split, same fitting and scoring) with the *frames of one view permuted* (the rows of
  the second view shuffled, separately within the fitting and the held-out frames, seeded),
  which breaks the pairing and keeps each view's own distribution: the value two unrelated
  views of these sizes reach. It is the mean over ``null_permutations`` shuffles (0: none).
  Held out it is near 0; in sample it is the overfitting floor. Frames, not utterances,
  are permuted: within-utterance dependence is kept in each view but not across views.
- Measures: ``pwcca`` (with ``cca_mean``, the unweighted mean of the same canonical
  correlations), ``svcca``, or ``cca_mean`` for ``method=cca``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from src.analyses.base import (
    AnalysisContext,
    AnalysisError,
    AnalysisResult,
    FramePairs,
    Matrix,
    analysis_layers,
    check_finite,
    frame_pairs,
    layer_names,
    read_rows,
    require,
    safe_name,
    subsample,
)
from src.datamodules.alignment import frame_items
from src.datamodules.corpus import CorpusError
from src.functional.cca import (
    EPSILON_MODES,
    cca,
    cca_fit,
    cca_fit_whitened,
    cca_transform_corr,
    pwcca,
    pwcca_weights,
    svcca,
    whiten,
)

log = logging.getLogger(__name__)

METHODS = ("pwcca", "svcca", "cca")


class CCAResult(AnalysisResult):
    """CCA rows and matrices; with adjacent pairs (or one reference layer) one figure of every measure and its
    shuffled-frames null over layers (:func:`src.reporting.figures_analyses.plot_cca`)."""

    def figures(self, out_dir, title_prefix: str = "") -> list:
        from pathlib import Path

        from src.reporting.figures_analyses import plot_cca

        pngs = self.matrix_figures(out_dir, title_prefix)  # the matrices
        adjacent = self.meta.get("compare") == "layers" and self.meta.get("pairs") == "adjacent"
        one_ref = self.meta.get("compare") != "layers" and all(r.get("layer_b") is None for r in self.rows)
        if (adjacent or one_ref) and len({r["layer"] for r in self.rows}) > 1:
            ref = "" if self.meta.get("compare") == "layers" else str(self.meta.get("reference", ""))
            name = "adjacent_layers" if self.meta.get("compare") == "layers" else f"vs_{ref.replace(':', '_')}"
            pngs.append(plot_cca(self.rows, Path(out_dir) / f"{self.meta.get('method', 'cca')}_{name}.png",
                                 title_prefix, reference=ref))  # fmt: skip
        return pngs
COMPARE = ("layers", "labels", "reference")


def one_hot(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``(N,)`` labels -> ``(N, P)`` float32 one-hot matrix and the sorted label names."""
    names, inv = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    out = np.zeros((len(inv), len(names)), dtype=np.float32)
    out[np.arange(len(inv)), inv] = 1.0
    return out, [str(x) for x in names]


class CCA:
    """SVCCA / PWCCA of layers vs the next layer, every layer, phone labels, or a reference space.

    Args:
        method: ``pwcca`` | ``svcca`` | ``cca`` (mean canonical correlation).
        compare: ``layers`` | ``labels`` | ``reference``.
        pairs: ``compare=layers``: ``adjacent`` (layer vs layer + 1) or ``all`` (a matrix).
        reference: ``compare=reference``: a backbone config name (``mfcc``, ``random``, ...) or ``track:<name>``.
        tier: ``compare=labels``: the tier whose labels are one-hot encoded.
        layers: analysed layers (``None``: every residual state; ints, negatives, first/middle/last,
            ranges, named extra states: :func:`src.layers.resolve_layers`).
        held_out: fit on some utterances, report correlations on the others (default).
        test_fraction: fraction of utterances held out.
        max_frames: at most this many frames to fit (and to score held out).
        keep_dims: SVCCA: variance fraction in (0, 1] or a number of directions kept per view.
        epsilon: CCA ridge; 0 = plain CCA.
        epsilon_mode: ``absolute`` (epsilon in units of feature variance) | ``relative`` (as the SVCCA
            reference code: covariances scaled by their largest entry, neurons of scaled variance
            below epsilon removed, then epsilon I added); see ``src.functional.cca``.
        null_permutations: shuffles of one view's frames for the ``<measure>_null`` rows (0: none).
        seed: subsampling / split / shuffle seed (``None``: the run's seed).
    """

    def __init__(
        self,
        method: str = "pwcca",
        compare: str = "layers",
        pairs: str = "adjacent",
        reference: str = "mfcc",
        tier: str = "phones",
        layers: Sequence[int | str] | int | str | None = None,
        held_out: bool = True,
        test_fraction: float = 0.2,
        max_frames: int | None = 10_000,
        keep_dims: float = 0.99,
        epsilon: float = 0.0,
        epsilon_mode: str = "absolute",
        null_permutations: int = 1,
        seed: int | None = None,
    ) -> None:
        if method not in METHODS:
            raise AnalysisError(f"method must be one of {METHODS}, got {method!r}")
        if compare not in COMPARE:
            raise AnalysisError(f"compare must be one of {COMPARE}, got {compare!r}")
        if pairs not in ("adjacent", "all"):
            raise AnalysisError(f"pairs must be 'adjacent' or 'all', got {pairs!r}")
        if compare == "reference" and (
            not isinstance(reference, str) or not reference or reference == "self"
        ):
            raise AnalysisError(
                f"compare=reference needs a backbone config name or 'track:<name>', got {reference!r}"
            )
        if not 0 < float(test_fraction) < 1:
            raise AnalysisError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if max_frames is not None and int(max_frames) < 2:
            raise AnalysisError(f"max_frames must be at least 2 (or null), got {max_frames}")
        if float(epsilon) < 0:
            raise AnalysisError(f"epsilon must be >= 0, got {epsilon}")
        if epsilon_mode not in EPSILON_MODES:
            raise AnalysisError(f"epsilon_mode must be one of {EPSILON_MODES}, got {epsilon_mode!r}")
        if int(null_permutations) < 0:
            raise AnalysisError(f"null_permutations must be >= 0, got {null_permutations}")
        if isinstance(keep_dims, float) and not 0 < keep_dims <= 1:
            raise AnalysisError(f"keep_dims as a variance fraction must be in (0, 1], got {keep_dims}")
        if isinstance(keep_dims, int) and keep_dims < 1:
            raise AnalysisError(f"keep_dims as a number of directions must be >= 1, got {keep_dims}")
        self.method, self.compare, self.pairs = method, compare, pairs
        self.reference, self.tier = reference, tier
        self.layers = layers  # parsed against the cache in run (src.layers.resolve_layers)
        self.held_out = bool(held_out)
        self.test_fraction = float(test_fraction)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.keep_dims = keep_dims
        self.epsilon = float(epsilon)
        self.epsilon_mode = epsilon_mode
        self.null_permutations = int(null_permutations)
        self.seed = seed

    # ------------------------------------------------------------------------------ run

    def run(self, ctx: AnalysisContext) -> CCAResult:
        from src.progress import progress

        acts = ctx.acts
        layers = analysis_layers(self.layers, acts, "analysis.layers")
        names = layer_names(acts, layers)
        seed = ctx.seed if self.seed is None else int(self.seed)
        fp = self._frames(ctx, layers)
        train, test, counts = self._split(fp, seed)
        # the null: one view's frames shuffled (same shuffles for every pair), within each set
        rng = np.random.default_rng([seed, 7211])
        shuffles = [(rng.permutation(len(train)), None if test is None else rng.permutation(len(test)))
                    for _ in range(self.null_permutations)]  # fmt: skip

        def read_model(k: int, idx: np.ndarray) -> np.ndarray:
            return check_finite(read_rows(acts.layer(layers[k]), fp.rows[idx]), f"layer {names[k]}")  # (n, D)

        # (model layer position, reference column) pairs to score
        if fp.read_ref is None:
            if len(layers) < 2 and self.pairs == "adjacent":
                raise AnalysisError(
                    "compare=layers, pairs=adjacent: 1 layer given, the analysis needs at least 2"
                )
            jobs = [(k, k + 1) for k in range(len(layers) - 1)] if self.pairs == "adjacent" else [
                (i, j) for i in range(len(layers)) for j in range(len(layers))]  # fmt: skip
        else:
            jobs = [(i, j) for i in range(len(layers)) for j in range(len(fp.ref_labels))]
        one_ref_layer = fp.read_ref is not None and len(fp.ref_labels) == 1
        rows: list[dict] = []
        values: dict[str, dict[tuple[int, int], float]] = {}
        cached: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        whitened: OrderedDict = OrderedDict()  # (layer or reference, [shuffle]) -> Whitened fitting frames, a few kept

        def white(key, data, name, perm=None):
            """The fitting frames of one view whitened once (cca_fit would whiten them again for every pair and
            for the null; the same numbers either way). Only held-out cca / pwcca reuse them (None otherwise)."""
            if not self.held_out or self.method == "svcca":
                return None
            if key not in whitened:
                whitened[key] = whiten(data if perm is None else data[perm], self.epsilon, epsilon_mode=self.epsilon_mode,
                                       name=name)  # fmt: skip
                while len(whitened) > 2 * (1 + self.null_permutations) + 1:  # a row view, a column view and shuffles
                    whitened.popitem(last=False)
            whitened.move_to_end(key)
            return whitened[key]

        for i, j in progress(jobs, desc=f"{self.method} vs {fp.name}", unit="layer pair"):
            if i not in cached:  # the rows side changes rarely: keep its frames
                cached = {i: (read_model(i, train), None if test is None else read_model(i, test))}
            x_tr, x_te = cached[i]
            if fp.read_ref is None:
                y_tr, y_te = (
                    (x_tr, x_te)
                    if j == i
                    else (read_model(j, train), None if test is None else read_model(j, test))
                )
            else:
                y_tr = fp.read_ref(j, train)
                y_te = None if test is None else fp.read_ref(j, test)
            ykey = ("layer", j) if fp.read_ref is None else ("ref", j)
            try:
                scores = self._score(x_tr, y_tr, x_te, y_te, white(("layer", i), x_tr, "x"), white(ykey, y_tr, "y"))
                nulls = [self._score(x_tr, y_tr[p_tr], x_te, None if y_te is None else y_te[p_te],
                                     white(("layer", i), x_tr, "x"), white((*ykey, q), y_tr, "y", p_tr))
                         for q, (p_tr, p_te) in enumerate(shuffles)]  # fmt: skip
            except ValueError as e:
                if isinstance(e, AnalysisError):
                    raise
                what = f"layer {names[j]}" if fp.read_ref is None else f"{fp.name} {fp.ref_labels[j]}"
                raise AnalysisError(f"{self.method} of layer {names[i]} vs {what}: {e}") from e
            if nulls:
                scores.update({f"{m}_null": float(np.mean([nl[m] for nl in nulls])) for m in list(scores)})
            for measure, v in scores.items():
                if not np.isfinite(v):
                    raise AnalysisError(f"{measure} of layer {layers[i]} vs {fp.name} is not finite ({v})")
                layer_b = None if one_ref_layer else (layers[j] if fp.read_ref is None else j)
                rows.append({"layer": layers[i], "layer_b": layer_b, "reference": fp.name, "metric": measure,
                             "value": float(v), "evaluation": "held_out" if self.held_out else "in_sample",
                             "null": "frames of one view shuffled" if measure.endswith("_null") else ""})  # fmt: skip
                values.setdefault(measure, {})[(i, j)] = float(v)

        matrices = {}
        if fp.read_ref is None and self.pairs == "adjacent":
            pass  # one curve per measure over the pairs k -> k+1, drawn from the rows (CCAResult.figures)
        elif not one_ref_layer:
            cols = names if fp.read_ref is None else fp.ref_labels
            for m, vals in values.items():
                mat = np.full((len(layers), len(cols)), np.nan)
                for (i, j), v in vals.items():
                    mat[i, j] = v
                matrices[f"{m}_{safe_name(fp.name)}"] = Matrix(
                    mat, names, cols, title=f"{m}: layers x {'layers' if fp.read_ref is None else fp.name}",
                    quantity=f"{m} (canonical correlation)", xlabel="layer" if fp.read_ref is None else f"{fp.name} layer",
                )  # fmt: skip
        meta = {"method": self.method, "compare": self.compare, "pairs": self.pairs, "reference": fp.name,
                "held_out": self.held_out, "layers": layers, "epsilon": self.epsilon, "epsilon_mode": self.epsilon_mode,
                "null_permutations": self.null_permutations,
                "null": "frames of the second view shuffled (fitting and held-out frames separately)",
                "keep_dims": self.keep_dims,
                "seed": seed, **fp.counts, **counts}  # fmt: skip
        line = sorted(values) if one_ref_layer and len(layers) > 1 else []  # drawn together by CCAResult.figures
        return CCAResult("cca", rows, matrices, line_plots=line, meta=meta)

    # ------------------------------------------------------------------------------ frames

    def _frames(self, ctx: AnalysisContext, layers: list[int]) -> FramePairs:
        if self.compare == "layers":
            return frame_pairs(ctx, None, layers)
        if self.compare == "reference":
            return frame_pairs(ctx, self.reference, layers)
        try:
            fi = frame_items(ctx.acts, ctx.corpus, self.tier)
        except CorpusError as e:
            raise AnalysisError(f"compare=labels: {e}") from e
        onehot, names = one_hot(fi.labels)  # (N, P)
        return FramePairs(f"labels:{self.tier}", fi.rows, fi.utt, [self.tier], [len(names)],
                          lambda j, idx: onehot[idx], {**fi.counts, "labels": len(names)}, labels=fi.labels)  # fmt: skip

    def _split(self, fp: FramePairs, seed: int) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """Pair indices used for fitting and (held out) for scoring, subsampled to max_frames."""
        n = len(fp.rows)
        if not self.held_out:
            require(n, 2, f"CCA vs {fp.name}: frames")
            idx = subsample(n, self.max_frames, seed)
            return idx, None, {"frames_fit": len(idx)}
        utts = np.unique(fp.utt)
        require(len(utts), 2, f"CCA held out vs {fp.name}: utterances")
        rng = np.random.default_rng(seed)
        n_test = min(len(utts) - 1, max(1, round(self.test_fraction * len(utts))))
        test_utts = rng.choice(utts, size=n_test, replace=False)
        is_test = np.isin(fp.utt, test_utts)  # (N,)
        counts: dict = {"utterances_fit": len(utts) - n_test, "utterances_held_out": n_test}
        labels = fp.labels
        if labels is not None:  # drop labels seen in one split only (their variates are undefined there)
            both = np.intersect1d(labels[is_test], labels[~is_test])
            keep = np.isin(labels, both)
            counts["frames_label_in_one_split_only"] = int((~keep).sum())
            counts["labels_in_both_splits"] = len(both)
        else:
            keep = np.ones(n, dtype=bool)
        tr, te = np.flatnonzero(~is_test & keep), np.flatnonzero(is_test & keep)
        require(len(tr), 2, f"CCA vs {fp.name}: fitting frames")
        require(len(te), 2, f"CCA vs {fp.name}: held-out frames")
        tr = tr[subsample(len(tr), self.max_frames, seed)]
        te = te[subsample(len(te), self.max_frames, seed + 1)]
        counts.update(frames_fit=len(tr), frames_held_out=len(te))
        return tr, te, counts

    # ------------------------------------------------------------------------------ scores

    def _score(self, x_tr, y_tr, x_te, y_te, wx=None, wy=None) -> dict[str, float]:
        """Measures of one pair; ``wx``, ``wy``: the fitting frames already whitened (:func:`whiten`; held-out cca /
        pwcca), else None."""
        eps, mode = self.epsilon, self.epsilon_mode
        if x_te is not None and wx is not None and wy is not None and self.method != "svcca":
            proj = cca_fit_whitened(wx, wy)  # = cca_fit(x_tr, y_tr) without whitening them again
            rho = cca_transform_corr(proj, x_te, y_te)  # (k,) held-out correlations, fitted order
            if self.method == "pwcca":
                alpha = pwcca_weights(proj, x_tr)  # = pwcca(x_tr, y_tr)'s weights, without a second fit
                return {"pwcca": float((alpha * rho).sum()), "cca_mean": float(rho.mean())}
            return {"cca_mean": float(rho.mean())}
        if x_te is None:  # in sample
            if self.method == "pwcca":
                value, _, rho = pwcca(x_tr, y_tr, eps, return_weights=True, epsilon_mode=mode)
                return {"pwcca": float(value), "cca_mean": float(rho.mean())}
            if self.method == "svcca":
                return {"svcca": float(svcca(x_tr, y_tr, self.keep_dims, eps, epsilon_mode=mode))}
            return {"cca_mean": float(cca(x_tr, y_tr, eps, epsilon_mode=mode).mean())}
        if self.method == "svcca":
            x_tr, x_te = self._reduce(x_tr, x_te)
            y_tr, y_te = self._reduce(y_tr, y_te)
        proj = cca_fit(x_tr, y_tr, eps, epsilon_mode=mode)
        rho = cca_transform_corr(proj, x_te, y_te)  # (k,) held-out correlations, fitted order
        if self.method == "pwcca":
            _, alpha, _ = pwcca(x_tr, y_tr, eps, return_weights=True, epsilon_mode=mode)  # fitted weights
            return {"pwcca": float((alpha * rho).sum()), "cca_mean": float(rho.mean())}
        return {"svcca" if self.method == "svcca" else "cca_mean": float(rho.mean())}

    def _reduce(self, a_tr: np.ndarray, a_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SVCCA's SVD step fitted on the fitting frames (scikit-learn PCA), applied to both sets."""
        from sklearn.decomposition import PCA

        a_tr64 = np.asarray(a_tr, dtype=np.float64)
        keep = self.keep_dims
        if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool):
            keep = min(int(keep), *a_tr64.shape)
        elif float(keep) >= 1.0:
            keep = None  # every direction
        pca = PCA(n_components=keep, svd_solver="full").fit(a_tr64)
        return pca.transform(a_tr64), pca.transform(np.asarray(a_te, dtype=np.float64))
