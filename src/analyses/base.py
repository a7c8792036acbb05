"""Shared pieces of the representation analyses run by ``analyze.py``.

Every analysis is a class whose constructor stores options and whose one public
``run(ctx: AnalysisContext) -> AnalysisResult`` computes; nothing is kept between calls.
The math lives in ``src/functional``.

``AnalysisContext`` carries the activation cache of the analysed backbone, the corpus,
and lazily the *references* an analysis may compare against:

- ``ctx.reference_acts(name)``: the cache of another backbone config (``mfcc``, ``logmel``,
  ``whisper_base``, ...; ``random`` = the analysed backbone with random weights), built
  once like any cache;
- the corpus' tiers and tracks (phone labels, EMA) via ``src.datamodules.alignment``.

Model and reference frames are matched **by time** (``aligned_rows``): each model frame
takes the reference frame nearest its time; differing frame counts are reported.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from src.activations.reader import read_rows, release_pages
from src.datamodules.labels import label_norm_of
from src.fileutil import atomic_path
from src.layers import LayerSpecError, layer_label, resolve_for

log = logging.getLogger(__name__)


class AnalysisError(ValueError):
    """Bad analysis input (too few items, mismatched spaces, ...); the message says what is needed."""


class AnalysisLayerError(AnalysisError, LayerSpecError):
    """A layer spec of an analysis that names no valid layer (both an AnalysisError and a LayerSpecError)."""


def analysis_layers(spec, acts, what: str = "analysis.layers") -> list[int]:
    """State indices named by ``spec`` for the cache ``acts``: the one parser of ``src.layers``.

    ``None`` = every residual state; ints (negative from the end), ``first``/``middle``/``last``,
    ``all``, ranges, and the cache's named extra states (``acts.extra_states``, e.g.
    ``final_norm``, where the cache has them). Sorted, unique; anything else raises
    :class:`AnalysisLayerError` naming the config key ``what`` and the valid range.
    """
    return resolve_for(acts, spec, what=what, error=AnalysisLayerError)


def layer_names(acts, layers: list[int]) -> list[str]:
    """Display names of state indices (``"3"``, ``"final_norm"``)."""
    names = getattr(acts, "layer_names", None)
    return [layer_label(k, names) for k in layers]


def check_finite(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` unchanged, or AnalysisError naming ``what`` when it holds inf or NaN.

    A float16 cache overflows to inf above 65504; no similarity of such a layer is a number."""
    x = np.asarray(x)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = ~np.isfinite(x)
        raise AnalysisError(
            f"{what} holds non-finite values ({int(np.isinf(x).sum())} inf, {int(np.isnan(x).sum())} NaN, in "
            f"{int(bad.any(axis=-1).sum()) if x.ndim > 1 else int(bad.sum())} rows): a float16 cache overflows "
            "above 65504; rebuild the cache in float32 (cache.dtype=float32)"
        )
    return x


def _drop_silences(labels: np.ndarray, corpus=None) -> np.ndarray:
    """Boolean mask of the labels to *keep*: silence labels (``SILENCE_LABELS``: pau, sil, sp, h#,
    brth, empty, ...; case and surrounding space ignored) are dropped.

    The one place where the analyses drop silences. It follows the run's label normalisation
    (``src.datamodules.labels.label_norm_of(corpus)``: its silence list, and
    ``drop_silences: false`` keeps them, as the probing tasks do)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.ones(0, dtype=bool)
    norm = label_norm_of(corpus)
    if not norm.drop_silences:
        return np.ones(labels.shape, dtype=bool)
    return np.array([not norm.is_silence(x) for x in labels.astype(str).tolist()], dtype=bool)


def _write_table(path: Path, rows: list[dict]) -> None:
    """A plain CSV of ``rows`` (text allowed: transcripts), written atomically."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, lineterminator="\n")


def safe_name(name: str) -> str:
    """A string usable in file names (runs of other characters -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ----------------------------------------------------------------------------- intervals: what they resample

MIN_UNITS = 5  # intervals over fewer units are flagged; the probes' src.probes.pipeline.MIN_UNITS_WARN (tested equal)
FINER_UNIT = {"speaker": "text", "text": "utterance", "utterance": None}


def interval_units(corpus, idx, by: str = "text", what: str = "analysis") -> tuple[str, np.ndarray]:
    """The unit an analysis's intervals resample over the utterances ``idx``, and each one's key.

    The split unit ``by`` (``src.datamodules.splits.group_keys``: ``text`` puts the readings of one
    sentence in one group, so they are resampled together), as the probes do; when ``idx`` holds a
    single such unit (one speaker, one sentence), the next finer one (speaker -> text ->
    utterance), with a warning. Returns ``(unit, keys)``, ``keys`` ``(len(idx),)`` strings."""
    from src.datamodules.splits import UNITS, group_keys

    unit = {"order": "text", "timit_core": "speaker"}.get(by, by)  # as the probes: the split's bootstrap unit
    if unit not in UNITS:
        raise AnalysisError(f"{what}: split.by must be one of {UNITS} (or order, timit_core): the unit the intervals "
                            f"resample; got {by!r}")  # fmt: skip
    while True:
        keys = group_keys(corpus, unit, idx)
        n = len(set(keys.tolist()))
        if n >= 2 or FINER_UNIT[unit] is None:
            return unit, keys
        log.warning("%s: the %d utterances analysed hold %d %s; intervals resample %ss instead (they cover "
                    "sampling within that %s only)", what, len(keys), n, unit, FINER_UNIT[unit], unit)  # fmt: skip
        unit = FINER_UNIT[unit]


def interval_fields(unit: str, n_units: int) -> dict:
    """The columns that say what an interval rests on: ``unit`` (what the bootstrap resampled),
    ``n_units`` (how many of them) and ``few_units`` (fewer than :data:`MIN_UNITS`)."""
    return {"unit": unit, "n_units": int(n_units), "few_units": int(n_units) < MIN_UNITS}


def _interval_n(row: dict):
    """Units an interval row rests on (``n_units``); None for a row without an interval or without the count."""
    if row.get("ci_low") is None and row.get("ci_high") is None:
        return None
    if row.get("n_units") is not None:
        return int(row["n_units"])
    return None


def flag_few_units(rows: list[dict], what: str) -> tuple[list[dict], int]:
    """``rows`` with ``n_units`` and ``few_units`` on every interval row (``ci_low`` / ``ci_high``), and how many
    rest on fewer than :data:`MIN_UNITS` units; one warning names them (the probes warn the same way)."""
    out, few, least, units = [], 0, None, set()
    for r in rows:
        n = _interval_n(r)
        if n is None:
            out.append(r)
            continue
        r = {**r, "n_units": n, "few_units": n < MIN_UNITS}
        if n < MIN_UNITS:
            few += 1
            least = n if least is None else min(least, n)
            units.add(str(r.get("unit") or "unit"))
        out.append(r)
    if few:
        log.warning("%s: %d of %d intervals rest on fewer than %d %s (as few as %d): the 95%% intervals are "
                    "unreliable with so few units (column few_units)", what, few,
                    sum(_interval_n(r) is not None for r in out), MIN_UNITS, "/".join(f"{u}s" for u in sorted(units)), least)  # fmt: skip
    return out, few


@dataclass(frozen=True)
class Matrix:
    """A named matrix for a heatmap: values (n, m) with row and column labels."""

    values: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    title: str = ""
    vmin: float | None = None
    vmax: float | None = None
    xlabel: str = "layer"
    ylabel: str = "layer"
    quantity: str = ""  # what the colour bar shows (default: the title up to its first colon)
    groups: list[str] | None = None  # one per row (e.g. the manner of each phone): separators between runs
    display_order: list[int] | None = None  # square matrices: rows and columns drawn in this order (files keep theirs)

    def shown(self) -> tuple[np.ndarray, list[str], list[str], list[str] | None]:
        """Values, row labels, column labels and groups in ``display_order`` (as they are drawn)."""
        if self.display_order is None:
            return self.values, list(self.row_labels), list(self.col_labels), self.groups
        o = np.asarray(self.display_order, dtype=np.int64)
        groups = None if self.groups is None else [self.groups[i] for i in o]
        return (np.asarray(self.values)[np.ix_(o, o)], [self.row_labels[i] for i in o], [self.col_labels[i] for i in o],
                groups)  # fmt: skip


@dataclass(frozen=True)
class AnalysisResult:
    """Rows in long format (``layer, metric, value`` plus context columns: the one schema of
    :mod:`src.reporting.results`), matrices and plots.

    ``rows``: dicts with at least ``layer``, ``metric``, ``value``.
    ``matrices``: name -> Matrix, each saved as ``<name>.png`` (and ``<name>.npy``).
    ``scatters``: name -> (points (n, 2), labels) or (points, labels, {"xlabel", "ylabel", "title",
    "label_name"}) saved as ``<name>.png``.
    ``line_plots``: measures to draw over layers (one PNG each; default: all measures).

    Rows and table rows with an interval (``ci_low``, ``ci_high``) also carry ``unit`` (what the
    bootstrap resampled: ``text``, ``utterance``, ...), ``n_units`` and ``few_units`` (fewer than
    :data:`MIN_UNITS`), set on construction with a logged warning (:func:`flag_few_units`).
    """

    analysis: str
    rows: list[dict]
    matrices: dict[str, Matrix] = field(default_factory=dict)
    scatters: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    line_plots: list[str] | None = None
    meta: dict = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)  # name -> rows, saved as <name>.csv (e.g. transcripts)

    def __post_init__(self) -> None:
        """Every interval (rows and tables) says how many units it rests on: ``n_units``, ``few_units`` and a
        warning when fewer than :data:`MIN_UNITS` (:func:`flag_few_units`); the count lands in ``meta``."""
        rows, few = flag_few_units(self.rows, self.analysis)
        object.__setattr__(self, "rows", rows)
        tables = {}
        for name, table in self.tables.items():
            tables[name], k = flag_few_units(table, f"{self.analysis} ({name})")
            few += k
        object.__setattr__(self, "tables", tables)
        if few:
            self.meta["intervals_on_few_units"] = few

    def column_order(self, context: list[str], present: set[str]) -> list[str]:
        """The columns results.csv starts with (the rest follow in first-seen order): the context
        columns, then the usual ones present. Analyses with a prescribed long format override this."""
        return [*context, "analysis"] + [c for c in ("layer", "layer_name", "layer_b", "reference", "lens", "metric",
                                                     "value", "ci_low", "ci_high", "unit", "n_units", "few_units") if c in present]  # fmt: skip

    def save_extra(self, out_dir: Path) -> None:
        """Further files beside results.csv (per-item arrays, ...); none by default."""

    def save(self, out_dir: str | Path, context: dict | None = None) -> list[Path]:
        """results.csv / results.json (context columns added to every row, ordered by :meth:`column_order`),
        extra tables, matrices, :meth:`save_extra`, and figures."""
        from src.reporting.results import write_results

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx = dict(context or {})
        rows = [{**ctx, "analysis": self.analysis, **r} for r in self.rows]
        present = {k for r in rows for k in r}
        first = list(dict.fromkeys(self.column_order(list(ctx), present)))
        write_results(rows, out_dir, columns_first=first, meta={**self.meta, **ctx})
        for name, table in self.tables.items():
            _write_table(out_dir / f"{name}.csv", table)
        for name, m in self.matrices.items():
            np.save(out_dir / f"{name}.npy", m.values)
        self.save_extra(out_dir)
        from src.reporting.figures import context_label

        return self.figures(out_dir, title_prefix=context_label(ctx))

    def figures(self, out_dir: str | Path, title_prefix: str = "") -> list[Path]:
        """PNGs of the matrices, scatters and ``line_plots``; ``title_prefix`` (the model and corpus) goes into
        every title. Subclasses that draw their own over-layer figures (through :mod:`src.reporting`) call
        :meth:`matrix_figures` for the rest."""
        return self.matrix_figures(out_dir, title_prefix) + self.line_figures(out_dir, title_prefix)

    def matrix_figures(self, out_dir: str | Path, title_prefix: str = "") -> list[Path]:
        """PNGs of the matrices (heatmaps, in their ``display_order``) and the 2-D scatters."""
        from src.reporting.figures import analysis_name, figure_title, plot_matrix, plot_scatter_2d

        out_dir = Path(out_dir)
        pngs = []
        what = analysis_name(self.analysis)
        for name, m in self.matrices.items():
            values, rows, cols, groups = m.shown()
            pngs.append(plot_matrix(values, out_dir / f"{name}.png", rows, cols,
                                    title=figure_title(f"{what}: {m.title or name}", title_prefix), vmin=m.vmin,
                                    vmax=m.vmax, xlabel=m.xlabel, ylabel=m.ylabel,
                                    colorbar_label=m.quantity or (m.title or name).split(":")[0],
                                    groups=groups))  # fmt: skip
        for name, (pts, labels, *more) in self.scatters.items():
            opts = dict(more[0]) if more else {}
            pngs.append(plot_scatter_2d(pts, labels, out_dir / f"{name}.png",
                                        title=figure_title(f"{what}: {opts.pop('title', name)}", title_prefix), **opts))  # fmt: skip
        return pngs

    def line_figures(self, out_dir: str | Path, title_prefix: str = "") -> list[Path]:
        """One PNG per measure of ``line_plots`` (default: every measure) over layers, a line per ``reference``."""
        import pandas as pd

        from src.reporting.figures import analysis_name, figure_title, plot_over_layers, readable

        out_dir = Path(out_dir)
        pngs = []
        what = analysis_name(self.analysis)
        df = pd.DataFrame(self.rows)
        if len(df) and "layer" in df and "metric" in df:
            df = df[pd.to_numeric(df["layer"], errors="coerce").notna()].copy()
            df["layer"] = df["layer"].astype(int)
            hue = "reference" if "reference" in df.columns else None
            for measure in self.line_plots if self.line_plots is not None else sorted(set(df["metric"])):
                sub = df[df["metric"] == measure]
                if sub["layer"].nunique() < 2:
                    continue
                sub = sub.assign(target=sub[hue].fillna("-").astype(str) if hue else readable(measure), split="all")
                pngs.append(plot_over_layers(sub, out_dir / f"{measure}_over_layers.png", measure, hue="target",
                                             split="all", title=figure_title(f"{what}: {readable(measure)}", title_prefix)))  # fmt: skip
        return pngs


@dataclass
class AnalysisContext:
    """The analysed cache and corpus, plus lazily built reference caches and the live model.

    ``acts`` is None for analyses that declare ``needs_cache = False`` (lenses, context
    mixing, attribution: they run the model); ``backbone()`` builds the configured backbone
    once, on first use, and returns it (frozen, in eval mode). Trained artefacts come the same way,
    from factories the job layer builds: ``classifier(seed)`` (analyses with ``checkpoint: auto``).
    """

    acts: object
    corpus: object
    reference_loader: Callable[[str], object] | None = None
    seed: int = 0
    backbone_factory: Callable[[], object] | None = None
    cache_factory: Callable[[], object] | None = None
    classifier_factory: Callable[[int, Sequence[str] | None], object] | None = None
    _refs: dict = field(default_factory=dict)

    def backbone(self):
        if "__backbone__" not in self._refs:
            if self.backbone_factory is None:
                raise AnalysisError("this analysis needs the live model (run it through analyze.py)")
            self._refs["__backbone__"] = self.backbone_factory().eval()
        return self._refs["__backbone__"]

    def configured_backbone(self):
        """The run's backbone (``backbone()``), or None when this context has none configured (a script or test
        that builds the context by hand: artefacts then rebuild theirs from their validated backbone record)."""
        return self.backbone() if self.backbone_factory is not None else None

    def classifier(self, seed: int, train_overrides: Sequence[str] | None = None) -> Path:
        """The checkpoint of the utterance classifier an analysis with ``checkpoint: auto`` needs, found or trained
        by the job layer (src/jobs/utterance.py): for the run's own backbone, data, paths and split
        (``train_overrides`` None), or for train.py with ``train_overrides + [seed=<seed>]``.  A context built by
        hand has no such factory: give the analysis a checkpoint path."""
        if self.classifier_factory is None:
            raise AnalysisError("analysis.checkpoint=auto needs a classifier trained by the job layer (run it through "
                                "analyze.py); give a checkpoint path")  # fmt: skip
        return Path(self.classifier_factory(int(seed), None if train_overrides is None else list(train_overrides)))

    def activations(self):
        """The activation cache of the analysed backbone (built on first use) for live analyses that also read it."""
        if self.acts is None:
            if self.cache_factory is None:
                raise AnalysisError("this analysis needs the activation cache (run it through analyze.py)")
            object.__setattr__(self, "acts", self.cache_factory())
        return self.acts

    def reference_acts(self, name: str):
        if name not in self._refs:
            if self.reference_loader is None:
                raise AnalysisError(f"reference {name!r} needs a reference loader (run through analyze.py)")
            self._refs[name] = self.reference_loader(name)
        return self._refs[name]


def load_classifier(path: str | Path, backbone=None, trust_remote_code: bool = False):
    """(backbone, classifier, meta) of an utterance-classifier checkpoint (src/probes/utterance.py), both in eval mode.

    The checkpoint names its backbone as data (a record: kind, plain arguments, name, fingerprint; see
    src/backbones/spec.py), never as something to instantiate. With ``backbone`` (the run's configured
    one) the record must name that model (same fingerprint), else a ClassifierError naming both;
    without it, the backbone is rebuilt through the project's own classes from the validated record.
    ``trust_remote_code`` is the caller's configuration, never the file's."""
    from src.backbones.spec import BackboneRecordError, backbone_for
    from src.probes.utterance import ClassifierError, UtteranceClassifier

    clf, meta = UtteranceClassifier.load(path)
    source = f"classifier checkpoint {path}"
    try:
        backbone = backbone_for(meta.get("backbone"), backbone, trust_remote_code=trust_remote_code, source=source)
    except BackboneRecordError as e:
        raise ClassifierError(str(e)) from None
    backbone = backbone.eval()
    clf.check_backbone(backbone, source)
    return backbone, clf.eval(), meta

def aligned_rows(acts_a, acts_b, utterances: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Row pairs (rows_a, rows_b) matching every frame of ``acts_a`` to the frame of ``acts_b``
    nearest in time, per utterance; also counts of frames that differ in number."""
    if list(acts_a.ids) != list(acts_b.ids):
        raise AnalysisError(f"caches {acts_a.path.name} and {acts_b.path.name} hold different utterances")
    ra, rb, diff = [], [], 0
    for u in range(len(acts_a)) if utterances is None else utterances:
        ta, tb = acts_a.frame_times(u), acts_b.frame_times(u)
        if len(tb) == 0 or len(ta) == 0:
            continue
        j = np.clip(np.searchsorted(tb, ta), 1, len(tb) - 1) if len(tb) > 1 else np.zeros(len(ta), np.int64)
        if len(tb) > 1:
            j = np.where(np.abs(tb[j - 1] - ta) <= np.abs(tb[j] - ta), j - 1, j)
        keep = np.abs(tb[j] - ta) <= 0.5 / acts_b.frame_rate + 1e-9  # matched within half a reference frame
        ra.append(acts_a.offsets[u] + np.flatnonzero(keep))
        rb.append(acts_b.offsets[u] + j[keep])
        diff += abs(len(ta) - len(tb))
    counts = {"frames_matched": int(sum(len(r) for r in ra)), "frame_count_difference": int(diff)}
    if diff:
        log.info("model and reference frames matched by time; frame counts differ by %d in total", diff)
    return np.concatenate(ra), np.concatenate(rb), counts


def subsample(n: int, max_items: int | None, seed: int) -> np.ndarray:
    """Sorted random subset of ``range(n)`` of at most ``max_items`` (all when None)."""
    if max_items is None or n <= max_items:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))


def require(n: int, minimum: int, what: str) -> None:
    if n < minimum:
        raise AnalysisError(f"{what}: {n} items, the analysis needs at least {minimum}")


# ----------------------------------------------------------------------------- token items
# (segments of a tier as items: RSA, ABX, mutual information, dimensionality reduction)


def take(items, idx: np.ndarray):
    """The items (a ``SegmentItems``) at ``idx`` (counts kept)."""
    return replace(
        items, **{f.name: getattr(items, f.name)[idx] for f in fields(items) if f.name != "counts"}
    )


def phone_tokens(acts, corpus, tier: str = "phones", pooling: str = "mean", min_count: int = 1,
                 drop_silences: bool = True):  # fmt: skip
    """Segments of ``tier`` as items (``SegmentItems``), silences left out (:func:`_drop_silences`)
    and only labels with at least ``min_count`` tokens kept; counts in ``.counts``."""
    from src.datamodules.alignment import segment_items

    items = segment_items(acts, corpus, tier, method=pooling)
    counts = dict(items.counts)
    keep = np.ones(len(items.labels), dtype=bool)
    if drop_silences:
        keep &= _drop_silences(items.labels, corpus)
        counts["silence_segments"] = int((~keep).sum())
    freq = Counter(items.labels[keep].tolist())
    rare = np.array([freq[x] < min_count for x in items.labels], dtype=bool) & keep
    counts["tokens_of_rare_labels"] = int(rare.sum())
    counts["rare_labels"] = sorted({str(x) for x in items.labels[rare]})
    keep &= ~rare
    out = take(items, np.flatnonzero(keep))
    out.counts = {**counts, "tokens": int(keep.sum()), "labels": len(set(out.labels.tolist()))}
    return out


def pool_segments(layer: np.ndarray, lo: np.ndarray, hi: np.ndarray, chunk: int = 4096,
                  what: str = "layer") -> np.ndarray:  # fmt: skip
    """Mean frame of each segment ``[lo, hi)`` of a (total_frames, D) layer: (N, D) float64.

    Chunked so that at most ``chunk`` segments' frames are held at once, and the memory-mapped
    pages each chunk touched are released after it (:func:`release_pages`), so resident memory
    is ``O(N D)`` for the output plus ``O(chunk)`` for the reads, never the whole layer.
    Non-finite frames raise AnalysisError naming ``what``."""
    from src.datamodules.alignment import pool

    out = np.empty((len(lo), layer.shape[1]), dtype=np.float64)
    for s in range(0, len(lo), chunk):
        out[s : s + chunk] = pool(layer, lo[s : s + chunk], hi[s : s + chunk], dtype=np.float64)
        release_pages(layer)
    return check_finite(out, what)


# ----------------------------------------------------------------------------- frame pairs
# (frames of the analysed cache paired with a reference space: CKA, CCA)


@dataclass
class FramePairs:
    """Frames of the analysed cache paired with reference items (one pair per row)."""

    name: str  # "self", "mfcc", "track:ema"
    rows: np.ndarray  # (N,) rows of the analysed cache, grouped by utterance in corpus order
    utt: np.ndarray  # (N,) utterance of each pair (non-decreasing)
    ref_labels: list[str]  # one per reference layer
    ref_dims: list[int]
    read_ref: Callable[[int, np.ndarray], np.ndarray] | None  # (ref layer j, pair indices) -> (n, d); None: within
    counts: dict = field(default_factory=dict)
    labels: np.ndarray | None = None  # (N,) item labels when the reference is a label one-hot


def frame_pairs(ctx: AnalysisContext, ref: str | None, layers: list[int]) -> FramePairs:
    """Pair the analysed cache's frames with a reference space.

    ``None``: every frame with itself (layer x layer); ``track:<name>``: frames with a value
    of the track (``frame_count_difference`` = frames without one); a backbone config name:
    each frame with the reference frame nearest in time (:func:`aligned_rows`). Reference
    values read through ``read_ref`` are checked to be finite.
    """
    from src.datamodules.alignment import track_items
    from src.datamodules.corpus import CorpusError

    acts = ctx.acts
    if ref is None:
        lengths = np.asarray(acts.lengths, dtype=np.int64)
        utt = np.repeat(np.arange(len(lengths)), lengths)  # (N,)
        starts = np.cumsum(lengths) - lengths  # (U,) position of each utterance's first pair
        rows = np.asarray(acts.offsets, dtype=np.int64)[utt] + (np.arange(len(utt)) - starts[utt])  # (N,) one pass
        return FramePairs("self", rows, utt, layer_names(acts, layers), [acts.hidden_size] * len(layers), None,
                          {"frames_matched": len(rows), "frame_count_difference": 0})  # fmt: skip
    if ref.startswith("track:"):
        track = ref[len("track:") :]
        try:
            ti = track_items(acts, ctx.corpus, track)
        except CorpusError as e:
            raise AnalysisError(f"reference {ref!r}: {e}") from e
        values = ti.values  # (N, K)
        counts = {"frames_matched": len(ti.rows), "frame_count_difference": int(ti.counts.get("frames_nan", 0)),
                  "track_channels": list(ti.names)}  # fmt: skip
        return FramePairs(ref, ti.rows, ti.utt, [track], [values.shape[1]],
                          lambda j, idx: check_finite(values[idx], f"reference {ref}"), counts)  # fmt: skip
    ref_acts = ctx.reference_acts(ref)
    rows_a, rows_b, counts = aligned_rows(acts, ref_acts)
    utt = np.searchsorted(acts.offsets, rows_a, side="right") - 1  # (N,)
    return FramePairs(
        ref, rows_a, utt, [str(j) for j in range(ref_acts.num_layers)], [ref_acts.hidden_size] * ref_acts.num_layers,
        lambda j, idx: check_finite(read_rows(ref_acts.layer(j), rows_b[idx]), f"reference {ref} layer {j}"),
        {**counts, "reference_backbone": ref_acts.backbone},
    )  # fmt: skip


@dataclass(frozen=True)
class CurvesResult(AnalysisResult):
    """An AnalysisResult with extra line plots drawn from values the rows cannot express
    as one line per ``reference`` (e.g. several similarity kinds, or layer i vs layer i+1).

    ``curves``: name -> ``(layers, {label: values}, xlabel, ylabel)``, each saved as ``<name>.png``
    (one line per label over layers).
    """

    curves: dict[str, tuple[list, dict[str, list[float]], str, str]] = field(default_factory=dict)

    def figures(self, out_dir, title_prefix: str = "") -> list:
        import pandas as pd

        from src.reporting.figures import analysis_name, figure_title, plot_over_layers, readable

        pngs = super().figures(out_dir, title_prefix)
        for name, (x, ys, _xlabel, ylabel) in self.curves.items():
            df = pd.DataFrame([{"layer": int(layer), "metric": ylabel, "value": float(v), "target": label, "split": "all"}
                               for label, vals in ys.items() for layer, v in zip(x, vals)])  # fmt: skip
            title = figure_title(f"{analysis_name(self.analysis)}: {readable(name)}", title_prefix)
            pngs.append(plot_over_layers(df, Path(out_dir) / f"{name}.png", ylabel, hue="target", split="all",
                                         title=title, ylabel=readable(ylabel)))  # fmt: skip
        return pngs


@dataclass(frozen=True)
class MeasureGroupsResult(AnalysisResult):
    """An AnalysisResult whose figures put several measures on one plot over layers (the decoder and logit lenses).

    ``figure_groups``: file stem -> (measures, y label); each is ``<stem>.png`` with one line (CI bars) per measure."""

    figure_groups: dict[str, tuple[list[str], str]] = field(default_factory=dict)

    def figures(self, out_dir, title_prefix: str = "") -> list[Path]:
        import pandas as pd

        from src.reporting.figures import analysis_name, figure_title, plot_over_layers, readable

        pngs = super().figures(out_dir, title_prefix)
        df = pd.DataFrame(self.rows)
        if not len(df):
            return pngs
        for stem, (measures, ylabel) in self.figure_groups.items():
            sub = df[df["metric"].isin(measures)]
            if sub["layer"].nunique() < 2:
                continue
            target = sub["metric"].map(readable)
            if sub["lens"].nunique() > 1:  # several lenses on one figure: each line names its lens
                target = sub["lens"].astype(str) + ": " + target
            sub = sub.assign(target=target, metric=ylabel, split="all")
            pngs.append(plot_over_layers(sub, Path(out_dir) / f"{stem}.png", ylabel, hue="target", split="all",
                                         title=figure_title(f"{analysis_name(self.analysis)}: {ylabel}", title_prefix)))  # fmt: skip
        return pngs


# ----------------------------------------------------------------------------- shared by the live-model analyses

UTTERANCE_SETS = ("test", "val", "train", "all")
DECODER_CLASSES = "WhisperForConditionalGeneration (backbone=whisper_tiny_en, whisper_base, whisper_hub)"


def whisper_backbone(ctx, what: str):
    """The live backbone, or AnalysisError naming its model class and the classes that have a decoder."""
    bb = ctx.backbone()
    if not getattr(bb, "has_decoder", False):
        model = getattr(bb, "model", None)
        cls = type(model).__name__ if model is not None else type(bb).__name__
        raise AnalysisError(
            f"{what} needs a model with a text decoder; backbone {getattr(bb, 'name', '?')!r} is a {cls}, "
            f"which has none. Models with a decoder: {DECODER_CLASSES}"
        )
    return bb


def select_utterances(corpus, utterances, split: dict | None, seed: int, max_utterances: int | None) -> list[int]:
    """Corpus indices: a split (``test`` / ``val`` / ``train`` of ``split_utterances(corpus, **split)``,
    by text unless told), ``all``, or a list of utterance ids; at most ``max_utterances`` (the first ones)."""
    n = len(corpus)
    if isinstance(utterances, str):
        if utterances not in UTTERANCE_SETS:
            raise AnalysisError(f"utterances must be one of {UTTERANCE_SETS} or a list of utterance ids, got {utterances!r}")
        if utterances == "all":
            idx = list(range(n))
        else:
            from src.datamodules.splits import split_utterances

            cfg = {"by": "text", **dict(split or {})}
            idx = [int(i) for i in split_utterances(corpus, seed=seed, **cfg)[utterances]]
    else:
        ids = [str(u) for u in utterances]
        where = {str(u): i for i, u in enumerate(corpus.ids)}
        unknown = [u for u in ids if u not in where]
        if unknown:
            raise AnalysisError(f"utterances {unknown[:5]} are not in corpus {getattr(corpus, 'name', '?')!r}")
        idx = [where[u] for u in ids]
    if max_utterances is not None:
        idx = idx[: int(max_utterances)]
    if not idx:
        raise AnalysisError(f"utterances={utterances!r}: no utterance selected from {n}")
    return idx


def ratio_rows(stats: np.ndarray, base: dict, measure: str, n_boot: int, alpha: float, seed: int,
               groups: np.ndarray | None = None, unit: str = "utterance") -> dict:  # fmt: skip
    """One row: sum(stats[:, 0]) / sum(stats[:, 1]) over utterances (one per row of ``stats``) with a percentile
    bootstrap over ``groups`` (each utterance's ``unit`` key, :func:`interval_units`; ``None``: every utterance its
    own group): the utterances of one group are resampled together."""
    from src.functional.intervals import ratio_of_sums_ci

    stats = np.asarray(stats)
    ci = ratio_of_sums_ci(stats[:, 0], stats[:, 1], groups, n_boot=n_boot, alpha=alpha, seed=seed)
    return {**base, "metric": measure, "value": float(ci.estimate), "ci_low": float(ci.low),
            "ci_high": float(ci.high), **interval_fields(unit, ci.n_groups), "n_utterances": int(len(stats))}  # fmt: skip
