"""Representational similarity analysis (RSA) of phone tokens, layer by layer.

Items are the segments of a tier (default ``phones``), mean-pooled over their frames
(``src.datamodules.alignment`` conventions), either

- ``items="class_means"``: one item per phone class with at least ``min_count`` tokens
  (the class mean of all its tokens), or
- ``items="tokens"``: the tokens themselves, a seeded subsample of ``max_items``, sorted
  by label.

Per layer, a model RDM over the items (``metric``) is compared with each reference RDM
over the *same* items by ``method`` (Spearman, or Kendall's tau-a for references with
many ties) and a one-sided permutation p-value (items of the reference permuted). The
references (``references``):

- ``phonological``: the binary phonological features of each item's phone
  (:func:`src.datamodules.phones.phonological_features`), distances by ``feature_metric``
  (``hamming`` | ``euclidean``, scipy's ``pdist``);
- any backbone config name (``mfcc``, ``logmel``, ``random``, ``whisper_base``, ...): that
  cache pooled over the same segments *by time* (each segment's ``[start, end)`` in the
  reference's own frame times), layer ``name:K`` (default: its last layer), ``metric``;
- ``track:<name>`` (e.g. ``track:ema``): the track's samples inside each segment,
  averaged, distances by ``track_metric``.

Tokens a reference cannot place (a segment beyond the reference's frames, a track with
NaN) are left out of *every* RDM so that all comparisons use the same items; the count
is in ``meta``.

Comparison (``method``): ``auto`` (default) uses Kendall's tau-a for categorical
references (``phonological``: a function of the item's class, heavily tied; Nili et al.,
2014) and Spearman for continuous ones; ``spearman`` or ``kendall_tau_a`` force one. The
measure is ``rsa_<method used>``.

Permutation p-values permute *exchangeable units*, never single tokens (tokens of one
class or one utterance are not independent, and permuting them one by one gives p-values
that are far too small; see tests/functional/test_rsa.py):

- ``items=class_means``: the items are the classes; they are permuted (unit ``class``);
- ``items=tokens`` against a categorical reference: the class labels are permuted (each
  class takes another class's reference row; every token stays with its class), unit
  ``class`` (:func:`src.functional.rsa.class_permutation_test`);
- ``items=tokens`` against a continuous reference: whole utterances are permuted among
  utterances with the same number of selected tokens (unit ``utterance``,
  :func:`src.functional.rsa.group_permutations`); utterances whose count no other one has
  stay in place, so with few such groups the test is conservative (``meta`` counts them).

The unit is written in every ``p_value`` row (``permuted``) and in ``meta``.

The token helpers (``phone_tokens``, ``pool_segments``, ``take``) live in
:mod:`src.analyses.base`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from src.analyses.base import (
    AnalysisContext,
    AnalysisError,
    AnalysisResult,
    Matrix,
    analysis_layers,
    layer_names,
    phone_tokens,
    pool_segments,
    require,
    safe_name,
    subsample,
    take,
)
from src.datamodules.alignment import SegmentItems, segment_frames
from src.datamodules.corpus import Interval
from src.datamodules.phones import UnknownPhoneError, manner_of, phonological_features, phonological_order
from src.progress import progress

log = logging.getLogger(__name__)

METRICS = ("euclidean", "cosine", "correlation")
METHODS = ("auto", "spearman", "kendall_tau_a")
CATEGORICAL = ("phonological",)  # references that are a function of the item's class (tied RDMs)


def _intervals_by_utterance(items: SegmentItems) -> dict[int, tuple[np.ndarray, list[Interval]]]:
    """Item positions and their intervals, per utterance (in item order, i.e. by start)."""
    out = {}
    utt = np.asarray(items.utt)
    order = np.argsort(utt, kind="stable")  # (N,) items grouped by utterance, item order kept within one
    su = utt[order]
    cut = np.concatenate([[0], np.flatnonzero(su[1:] != su[:-1]) + 1, [len(su)]])  # run boundaries: one pass
    start, end, labels = items.start.tolist(), items.end.tolist(), items.labels.tolist()
    for a, b in zip(cut[:-1].tolist(), cut[1:].tolist()):
        if a == b:
            continue
        pos = order[a:b]
        out[int(su[a])] = (pos, [Interval(float(start[i]), float(end[i]), str(labels[i])) for i in pos.tolist()])
    return out


def pool_reference(
    ref_acts, items: SegmentItems, layer: int, pooling: str = "mean", what: str = "reference"
) -> tuple[np.ndarray, np.ndarray]:
    """A reference cache pooled over the items' segments by time: ``(N, D)`` float64 and a
    validity mask (False where the segment lies beyond the reference's frames)."""
    n = len(items.labels)
    lo, hi, valid = np.zeros(n, np.int64), np.ones(n, np.int64), np.zeros(n, bool)
    for u, (pos, ivs) in _intervals_by_utterance(items).items():
        # utterance u of the reference is utterance u of the items (same corpus; checked by the caller)
        a, b, ok = segment_frames(ivs, ref_acts.frame_times(u), pooling, ref_acts.frame_rate)
        lo[pos], hi[pos], valid[pos] = a + ref_acts.offsets[u], b + ref_acts.offsets[u], ok
    x = np.zeros((n, ref_acts.hidden_size), dtype=np.float64)
    if valid.any():
        x[valid] = pool_segments(ref_acts.layer(layer), lo[valid], hi[valid], what=f"{what} layer {layer}")
    return x, valid


def track_means(corpus, items: SegmentItems, track: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a track's samples inside each item's ``[start, end)`` (the nearest sample to the
    midpoint for segments shorter than a sample): ``(N, K)`` and a mask (no NaN)."""
    n = len(items.labels)
    x, valid = None, np.zeros(n, bool)
    for u, (pos, ivs) in _intervals_by_utterance(items).items():
        ann = corpus.annotation(u)
        if track not in ann.tracks:
            raise AnalysisError(
                f"reference track:{track}: utterance {ann.id!r} has no track {track!r}; it has {sorted(ann.tracks)}"
            )
        tr = ann.tracks[track]
        values = tr.values.astype(np.float64)  # (T, K)
        if x is None:
            x = np.zeros((n, values.shape[1]))
        times = np.arange(values.shape[0]) / tr.rate
        a, b, ok = segment_frames(ivs, times, "mean", tr.rate)
        for p, lo_, hi_, ok_ in zip(pos, a, b, ok):
            if ok_:
                x[p] = values[lo_:hi_].mean(0)
                valid[p] = np.isfinite(x[p]).all()
    return x, valid


# ----------------------------------------------------------------------------- the analysis


class RSAResult(AnalysisResult):
    """RSA rows and RDM heatmaps; one figure of every reference over layers (:func:`src.reporting.figures_analyses.plot_rsa`)."""

    def figures(self, out_dir, title_prefix: str = "") -> list:
        from pathlib import Path

        from src.reporting.figures_analyses import plot_rsa

        pngs = self.matrix_figures(out_dir, title_prefix)  # the RDM heatmaps
        if len({r["layer"] for r in self.rows}) > 1:
            pngs.append(plot_rsa(self.rows, Path(out_dir) / "rsa_over_layers.png", title_prefix))
        return pngs


class RSA:
    """Layer-wise RSA of phone tokens (or phone-class means) against reference RDMs.

    Args:
        layers: layers to analyse (``None``: every residual state; a spec of :func:`src.layers.resolve_layers`).
        items: ``class_means`` (one item per phone class) | ``tokens``.
        tier: the tier whose segments are the items.
        pooling: ``mean`` | ``center`` (alignment conventions).
        min_count: classes with fewer tokens are left out.
        max_items: tokens mode: seeded subsample of at most this many tokens.
        metric: distance of the model RDM: ``euclidean`` | ``cosine`` | ``correlation``.
        references: list of ``phonological``, backbone config names (``mfcc``,
            ``random``, ``mfcc:0`` for a given layer), ``track:<name>``.
        feature_metric: distance between phonological feature vectors (``hamming`` | ``euclidean``).
        track_metric: distance between track means (``euclidean`` | ``cosine`` | ``correlation``).
        method: RDM comparison: ``auto`` (tau-a for categorical references, Spearman otherwise) |
            ``spearman`` | ``kendall_tau_a``.
        n_perm: permutations of exchangeable units for the p-value (0: no p-values).
        matrices_at: layers whose model RDM is saved as a heatmap.
        seed: subsampling and permutations (``None``: the run's seed).
    """

    def __init__(
        self,
        layers: Sequence[int | str] | None = None,
        items: str = "class_means",
        tier: str = "phones",
        pooling: str = "mean",
        min_count: int = 5,
        max_items: int | None = 500,
        metric: str = "correlation",
        references: Sequence[str] = ("phonological", "mfcc"),
        feature_metric: str = "hamming",
        track_metric: str = "euclidean",
        method: str = "auto",
        n_perm: int = 1000,
        matrices_at: Sequence[int | str] | None = ("first", "middle", "last"),
        seed: int | None = None,
    ) -> None:
        if items not in ("class_means", "tokens"):
            raise AnalysisError(f"rsa.items must be 'class_means' or 'tokens', got {items!r}")
        if metric not in METRICS or track_metric not in METRICS:
            raise AnalysisError(
                f"rsa.metric and rsa.track_metric must be one of {METRICS}, got {metric!r}, {track_metric!r}"
            )
        if feature_metric not in ("hamming", "euclidean"):
            raise AnalysisError(
                f"rsa.feature_metric must be 'hamming' or 'euclidean', got {feature_metric!r}"
            )
        if method not in METHODS:
            raise AnalysisError(f"rsa.method must be one of {METHODS}, got {method!r}")
        if not references:
            raise AnalysisError(
                "rsa.references is empty: name at least one reference (e.g. phonological, mfcc)"
            )
        if n_perm < 0:
            raise AnalysisError(f"rsa.n_perm must be >= 0, got {n_perm}")
        self.layers, self.items, self.tier, self.pooling = layers, items, tier, pooling
        self.min_count, self.max_items, self.metric = min_count, max_items, metric
        self.references = list(references)
        self.feature_metric, self.track_metric, self.method = feature_metric, track_metric, method
        self.n_perm, self.matrices_at, self.seed = n_perm, matrices_at, seed

    # -- references: per-token features ------------------------------------------------------
    def _reference_tokens(self, ctx: AnalysisContext, tokens: SegmentItems, name: str):
        """(features (N, F), valid (N,), metric) of one reference over the tokens."""
        if name == "phonological":
            try:
                classes, inverse = np.unique(tokens.labels, return_inverse=True)
                feats, _ = phonological_features(list(classes))
            except UnknownPhoneError as e:
                raise AnalysisError(
                    f"reference 'phonological' needs labels from the phone table: {e}"
                ) from None
            return (
                feats[inverse.reshape(-1)].astype(np.float64),
                np.ones(len(inverse), bool),
                self.feature_metric,
            )
        if name.startswith("track:"):
            x, valid = track_means(ctx.corpus, tokens, name.split(":", 1)[1])
            return x, valid, self.track_metric
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?::(-?\d+|[a-z_]+))?", name)
        if not m:
            raise AnalysisError(
                f"bad reference {name!r}: phonological | <backbone config> | <backbone>:<layer> | track:<name>"
            )
        ref = ctx.reference_acts(m.group(1))
        if list(ref.ids) != list(ctx.acts.ids):
            raise AnalysisError(
                f"reference {name!r}: its cache holds different utterances than the analysed one"
            )
        spec = m.group(2) or "last"
        spec = int(spec) if re.fullmatch(r"-?\d+", spec) else spec
        [layer] = analysis_layers(spec, ref, f"analysis.references ({name!r})")
        x, valid = pool_reference(ref, tokens, layer, self.pooling, what=f"reference {name!r}")
        return x, valid, self.metric

    def _rdm(self, x: np.ndarray, metric: str, what: str) -> np.ndarray:
        from scipy.spatial.distance import pdist

        from src.functional.rsa import rdm

        try:
            if metric == "hamming":
                return pdist(x, "hamming")  # (P,) condensed, as functional.rsa
            return rdm(x, metric).numpy()
        except ValueError as e:
            raise AnalysisError(f"RDM of {what}: {e}") from None

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        from src.functional.rsa import (
            class_permutation_test,
            compare_rdms,
            permutation_test,
            pooled_class_means,
            square,
        )

        acts = ctx.acts
        seed = ctx.seed if self.seed is None else self.seed
        layers = analysis_layers(self.layers, acts, "analysis.layers")
        names_of = dict(zip(layers, layer_names(acts, layers)))
        tokens = phone_tokens(acts, ctx.corpus, self.tier, self.pooling, self.min_count)
        counts = dict(tokens.counts)
        # every reference must place every token: drop the ones any reference cannot
        ref_feats, valid = {}, np.ones(len(tokens.labels), bool)
        for name in self.references:
            x, ok, metric = self._reference_tokens(ctx, tokens, name)
            ref_feats[name] = (x, metric)
            if (~ok).any():
                counts[f"tokens_missing_in_{name}"] = int((~ok).sum())
            valid &= ok
        idx = np.flatnonzero(valid)
        if self.items == "tokens":
            idx = idx[subsample(len(idx), self.max_items, seed)]
            idx = idx[np.argsort(tokens.labels[idx], kind="stable")]  # blocks by label in the heatmaps
        sel = take(tokens, idx)
        labels = sel.labels
        if self.items == "class_means":
            classes = np.unique(labels)
            require(len(classes), 3, f"RSA over class means: phone classes with >= {self.min_count} tokens")
            names = [str(c) for c in classes]
        else:
            require(len(labels), 3, "RSA over tokens")
            names = [str(x) for x in labels]

        def items_of(x: np.ndarray) -> np.ndarray:
            return pooled_class_means(x, labels)[1].numpy() if self.items == "class_means" else x

        ref_rdms = {
            name: self._rdm(items_of(x[idx]), metric, f"reference {name!r}")
            for name, (x, metric) in ref_feats.items()
        }
        show = set(analysis_layers(self.matrices_at, acts, "analysis.matrices_at")) if self.matrices_at is not None else set()
        tick = (
            names
            if self.items == "class_means"
            else [n if i == 0 or n != names[i - 1] else "" for i, n in enumerate(names)]
        )
        # heatmaps drawn in phonological order (manner, then place / height), blocks separated by manner; the
        # saved matrices keep the item order (labels sorted)
        order = phonological_order(names)
        manners = [manner_of(n) for n in names]
        item = "phone" if self.items == "class_means" else "phone token"

        def heatmap(v: np.ndarray, title: str, quantity: str) -> Matrix:
            return Matrix(square(v).numpy(), tick, tick, title=title, xlabel=f"{item} (by manner)",
                          ylabel=f"{item} (by manner)", quantity=quantity, groups=manners, display_order=order)  # fmt: skip

        matrices: dict[str, Matrix] = {}
        for name, v in ref_rdms.items():
            metric = ref_feats[name][1]
            matrices[f"rdm_reference_{safe_name(name)}"] = heatmap(
                v, f"reference RDM, {name}", f"{name} dissimilarity ({metric} distance)"
            )
        methods = {name: self._method(name) for name in ref_rdms}
        units = {name: self._unit(name) for name in ref_rdms}
        class_rdms = {}  # categorical references over the classes, for the class-label permutation
        if self.items == "tokens":
            classes, first = np.unique(labels, return_index=True)
            for name in ref_rdms:
                if units[name] == "class":
                    x, metric = ref_feats[name]
                    class_rdms[name] = self._rdm(x[idx][first], metric, f"reference {name!r} over classes")
        groups = sel.utt if self.items == "tokens" else None
        rows = []
        for layer in progress(layers, desc="RSA layers", unit="layer"):
            x = items_of(pool_segments(acts.layer(layer), sel.lo, sel.hi, what=f"layer {names_of[layer]}"))  # (n_items, D)
            model = self._rdm(x, self.metric, f"layer {names_of[layer]}")
            if layer in show:
                matrices[f"rdm_layer{layer:02d}"] = heatmap(
                    model, f"model RDM, layer {names_of[layer]}", f"model dissimilarity ({self.metric} distance)"
                )
            for name, ref in ref_rdms.items():
                method = methods[name]
                null = None
                try:
                    if not self.n_perm:
                        r, p = float(compare_rdms(model, ref, method)), None
                    elif name in class_rdms:  # tokens vs a categorical reference: permute class labels
                        r, p, null = class_permutation_test(model, class_rdms[name], labels, n_perm=self.n_perm,
                                                            seed=seed, method=method, return_null=True)  # fmt: skip
                    else:  # class means (items = classes), or tokens with whole utterances permuted
                        r, p, null = permutation_test(model, ref, n_perm=self.n_perm, seed=seed, method=method,
                                                      chunk=max(1, int(2e7 // len(ref))), groups=groups,
                                                      return_null=True)  # fmt: skip
                except ValueError as e:
                    raise AnalysisError(f"RSA of layer {names_of[layer]} against {name!r}: {e}") from None
                band = {}
                if null is not None:  # the central 95% of the permutation null, for the figure's null band
                    band = {"null_low": float(np.quantile(null, 0.025)), "null_high": float(np.quantile(null, 0.975))}
                rows.append({"layer": layer, "reference": name, "metric": f"rsa_{method}", "value": float(r),
                             "method": method, **band})  # fmt: skip
                if p is not None:
                    rows.append({"layer": layer, "reference": name, "metric": "p_value", "value": float(p),
                                 "method": method, "permuted": units[name]})  # fmt: skip
        if groups is not None and any(u == "utterance" for u in units.values()):
            sizes = np.unique(np.unique(groups, return_counts=True)[1], return_counts=True)
            counts["utterances_exchangeable"] = int(sizes[1][sizes[1] > 1].sum())
            counts["utterances_fixed"] = int(sizes[1][sizes[1] == 1].sum())  # a token count no other one has
        meta = {"counts": counts, "items": self.items, "num_items": len(names), "num_tokens": len(labels),
                "metric": self.metric, "method": self.method, "methods": methods, "n_perm": self.n_perm,
                "permuted": units if self.n_perm else {}, "layers": layers}  # fmt: skip
        log.info("RSA: %d items (%s) from %d tokens; counts %s", len(names), self.items, len(labels), counts)
        measures = sorted({f"rsa_{m}" for m in methods.values()})  # drawn together by RSAResult.figures
        return RSAResult("rsa", rows, matrices=matrices, line_plots=measures, meta=meta)

    def _method(self, reference: str) -> str:
        """The comparison used against ``reference``: tau-a for categorical (tied) ones under ``auto``."""
        if self.method != "auto":
            return self.method
        return "kendall_tau_a" if reference in CATEGORICAL else "spearman"

    def _unit(self, reference: str) -> str:
        """What the permutation test permutes against ``reference`` (see the module docstring)."""
        if self.items == "class_means" or reference in CATEGORICAL:
            return "class"
        return "utterance"
