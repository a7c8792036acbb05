"""PNG figures of result tables and matrices.

Conventions
-----------
- Every function saves one PNG (dpi ``DPI``) and returns its path. Titles and axis
  labels are always set. The file is written to a temporary name and renamed into place.
- Figures are built as ``matplotlib.figure.Figure`` objects drawn by the Agg canvas:
  no pyplot, no display, no global backend switch, nothing left open. matplotlib,
  numpy and pandas are imported inside the functions (cheap module import).
- Result tables are the long format of ``src.reporting.results``: a ``layer`` column, a
  ``value`` column, optional ``ci_low``/``ci_high``, the metric name in ``metric``
  (the one schema; tables written before it, with ``measure``, are read under the new name by
  ``read_results``), an optional ``split``. Rows with a ``layer_b``
  (layer x layer matrices) are not drawn by the over-layer plots; use ``plot_matrix``.
- Rows whose ``layer`` is not a number (e.g. a weighted-sum probe) are left out of the
  over-layer plots with a warning.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.fileutil import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

DPI = int(os.environ.get("SPEECHINTERP_FIGURE_DPI", "120"))  # docs/make_gallery.py draws smaller ones
MAX_HUE_LINES = 8  # above this many hue values, plot_over_layers draws the mean and a min-max band
MAX_ANNOTATED_CELLS = 400  # heatmaps annotate their values up to this many cells


class FigureError(ValueError):
    """The data cannot be drawn as asked (unknown metric, split or column; shape mismatch)."""


# Display names of result keys (measures, metrics). Keys not listed are shown with "_" as spaces.
READABLE = {
    "rsa_kendall_tau_a": "RSA (Kendall \u03c4a)",
    "rsa_spearman": "RSA (Spearman \u03c1)",
    "p_value": "permutation p-value",
    "cka": "CKA",
    "cca_mean": "mean canonical correlation",
    "pwcca": "PWCCA",
    "svcca": "SVCCA",
    "abx_within": "ABX error rate, within speaker (lower is better)",
    "abx_across": "ABX error rate, across speakers (lower is better)",
    "pca_explained_variance": "variance explained by PC1 + PC2",
    "lda_centroid_accuracy": "nearest-centroid accuracy in 2 LDA dimensions",
    "lda_centroid_accuracy_all": "nearest-centroid accuracy in all LDA dimensions",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "pearson_r": "Pearson r",
    "r2": "R\u00b2",
    "selectivity": "selectivity (accuracy \u2212 control accuracy)",
    "control_accuracy": "control-task accuracy",
    "accuracy_control_types_seen": "accuracy (items of seen control types)",
    "mdl_compression": "MDL compression (uniform / online codelength)",
    "mdl_codelength_kbits": "MDL online codelength (kbit, lower is better)",
    "layer_weight": "layer weight (softmax)",
    "cer": "CER (lower is better)",
    "wer": "WER (lower is better)",
    "per": "PER (lower is better)",
    "error rate": "error rate (lower is better)",
    "aligned_token_prob": "p(aligned token)",
    "phone_purity": "phone purity (0..1, higher is better)",
    "cluster_purity": "cluster purity (0..1, higher is better)",
    "nmi": "NMI of phones and units (0..1)",
    "pnmi": "phone-normalised MI (0..1)",
    "h_phone_given_unit": "H(phone | unit) (bits, lower is better)",
    "jsd_mean": "mean JSD between classes (0..1)",
    "speaker_minus_sentence": "speaker minus sentence similarity (> 0: grouped by speaker)",
    "cer_vs_final": "CER against the last layer's transcript",
    "wer_vs_final": "WER against the last layer's transcript",
    "top1_agreement": "top-1 token = the last layer's",
    "final_token_in_topk": "last layer's token in the top k",
    "fvu": "fraction of variance unexplained (lower is better)",
    "l0": "L0 (active latents per frame)",
    "dead_fraction": "dead latents (fraction)",
    "dense_fraction": "dense latents (fraction)",
}
NULL_SUFFIX = "_null"
ANALYSIS_NAMES = {
    "rsa": "RSA", "cca": "CCA", "cka": "CKA", "abx": "ABX", "dimred": "Dimensionality reduction",
    "mutual_info": "Mutual information", "speaker_gram": "Speaker Gram", "decoder_lens": "Decoder lens",
    "logit_lens": "Logit lens", "ctc_lens": "CTC lens", "context_mixing": "Context mixing",
    "attribution": "Feature attribution", "attribution_agreement": "Attribution agreement",
    "faithfulness": "Faithfulness", "patching": "Activation patching", "head_ablation": "Head ablation",
    "sae_eval": "SAE evaluation", "tutorial_cka": "CKA (tutorial)",
}  # fmt: skip


def readable(key: str) -> str:
    """A display name for a result key: ``rsa_kendall_tau_a`` -> ``RSA (Kendall \u03c4a)``; ``silhouette_manner``
    -> ``silhouette (manner)``; ``<measure>_null`` -> ``<measure>, shuffled null``; others with spaces for ``_``.

    >>> readable("rsa_spearman"), readable("silhouette_phone"), readable("nmi_k64")
    ('RSA (Spearman \u03c1)', 'silhouette (phone)', 'nmi k64')
    """
    key = str(key)
    if key in READABLE:
        return READABLE[key]
    if key.endswith(NULL_SUFFIX) and key[: -len(NULL_SUFFIX)] in READABLE:
        return f"{READABLE[key[: -len(NULL_SUFFIX)]]}, shuffled null"
    if key.startswith("silhouette_"):
        return f"silhouette ({key[len('silhouette_'):].replace('_', ' ')})"
    return key.replace("_", " ")


def analysis_name(analysis: str) -> str:
    """``rsa`` -> ``RSA``: the analysis as a title names it."""
    return ANALYSIS_NAMES.get(str(analysis), str(analysis).replace("_", " "))


def figure_title(what: str, context: str = "") -> str:
    """A figure title: ``what`` (the analysis and the quantity) and, on a second line, ``context`` (the model and
    corpus, e.g. ``whisper_tiny_en, synth``)."""
    context = str(context or "").strip()
    return f"{what}\n{context}" if context else what


def context_label(context: Mapping[str, Any] | None) -> str:
    """``"<backbone>, <corpus>"`` from a run's context columns (what every title names)."""
    ctx = dict(context or {})
    return ", ".join(str(ctx[k]) for k in ("backbone", "corpus") if ctx.get(k) not in (None, ""))


# ---------------------------------------------------------------------------------- helpers


def new_figure(width: float = 6.4, height: float = 4.2) -> Figure:
    """A matplotlib Figure of ``width`` x ``height`` inches on an Agg canvas (no pyplot state, thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_png: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically (temp file + rename)."""
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()
    return path


def metric_column(df: pd.DataFrame) -> str:
    """Name of the column holding the metric name: ``metric`` (the one schema of :mod:`src.reporting.results`)."""
    if "metric" in df.columns:
        return "metric"
    raise FigureError(f"results table has no 'metric' column (tables written before the one schema: read them "
                      f"with src.reporting.results.read_results): {list(df.columns)}")


def select_rows(df: pd.DataFrame, metric: str, split: str | None = "test") -> pd.DataFrame:
    """Rows of one metric (and split, when the table has a split column) with a numeric layer.

    Matrix rows (non-empty ``layer_b``) are dropped. Raises ``FigureError`` naming what
    is available when the metric or split has no rows.
    """
    import pandas as pd

    mcol = metric_column(df)
    d = df[df[mcol] == metric]
    if d.empty:
        raise FigureError(f"no rows with {mcol}={metric!r}; available: {sorted(df[mcol].dropna().unique())}")
    if split is not None and "split" in d.columns and d["split"].notna().any():
        if not (d["split"] == split).any():
            raise FigureError(
                f"no rows with {mcol}={metric!r} and split={split!r}; "
                f"available splits: {sorted(d['split'].dropna().unique())}"
            )
        d = d[d["split"] == split]
    if "layer_b" in d.columns:
        d = d[d["layer_b"].isna()]
    d = d.assign(layer=pd.to_numeric(d["layer"], errors="coerce"), value=pd.to_numeric(d["value"]))
    if d["layer"].isna().any():
        warnings.warn(
            f"{int(d['layer'].isna().sum())} rows of {metric!r} have a non-numeric layer; left out of the plot",
            stacklevel=3,
        )
        d = d[d["layer"].notna()]
    if d.empty:
        raise FigureError(f"no per-layer rows to plot for {mcol}={metric!r}")
    return d


def _natural_key(v: Any) -> tuple:
    """Sort key that puts "t2" before "t10" and 2 before 10."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(v))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def _sorted_labels(values: Any) -> list:
    return sorted(dict.fromkeys(values), key=_natural_key)


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw_baselines(ax: Any, baselines: Mapping[str, float] | None) -> None:
    if not baselines:
        return
    styles = ["--", "-.", ":", (0, (5, 1))]
    for i, (name, v) in enumerate(baselines.items()):
        ax.axhline(
            float(v),
            ls=styles[i % len(styles)],
            color=f"C{(i + 7) % 10}",
            lw=1.3,
            label=f"{name} ({float(v):.3g})",
        )


def _legend(ax: Any, n_entries: int) -> None:
    if n_entries == 0:
        return
    if n_entries > 6:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize="small", loc="best")


def text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _to_numpy(x: Any) -> np.ndarray:
    import numpy as np

    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def _heatmap(
    ax: Any,
    fig: Figure,
    m: np.ndarray,
    row_labels: Sequence,
    col_labels: Sequence,
    *,
    vmin: float | None,
    vmax: float | None,
    cmap: str,
    annotate: bool | None,
    colorbar_label: str,
    cbar_pad: float = 0.05,
) -> None:
    import matplotlib
    import numpy as np

    cm = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    masked = np.ma.masked_invalid(m)
    im = ax.imshow(masked, aspect="auto", cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, pad=cbar_pad)
    cbar.set_label(colorbar_label)
    n, k = m.shape
    ax.set_xticks(
        range(k), [str(c) for c in col_labels], rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center"
    )
    ax.set_yticks(range(n), [str(r) for r in row_labels])
    if annotate is None:
        annotate = n * k <= MAX_ANNOTATED_CELLS
    if annotate:
        size = 8 if n * k <= 100 else 6
        for i in range(n):
            for j in range(k):
                if np.isfinite(m[i, j]):
                    colour = text_colour(im.cmap(im.norm(m[i, j])))
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=size, color=colour)


def draw_layer_series(
    ax: Any,
    x: Any,
    y: Any,
    label: str,
    colour: Any,
    low: Any = None,
    high: Any = None,
    ls: Any = "-",
    marker: str = "o",
    band_label: str | None = None,
    **kw: Any,
) -> None:
    """One series over layers: markers at the measured layers, a solid line (``ls``) between adjacent ones
    (layers one apart), a thin dotted line across layers that were not measured, and the interval
    ``[low, high]`` as a band where both ends are finite (``band_label`` names it in the legend).

    The series' line (the one labelled ``label``) holds every measured point; tests read it back."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    step = np.diff(x)
    gap = step > 1 + 1e-9  # not adjacent: a layer in between was not measured
    y_solid = y.copy()
    if gap.any():  # the labelled line holds every point; solid segments only between adjacent layers
        xs, ys = [x[0]], [y[0]]
        for k in range(1, len(x)):
            if gap[k - 1]:
                xs.append((x[k - 1] + x[k]) / 2)
                ys.append(np.nan)
            xs.append(x[k])
            ys.append(y[k])
        ax.plot(xs, ys, ls=ls, marker=marker, ms=5, color=colour, label=label, **kw)
        for k in np.flatnonzero(gap):
            ax.plot(x[k : k + 2], y[k : k + 2], ls=":", lw=0.8, color=colour, alpha=0.6)
    else:
        ax.plot(x, y_solid, ls=ls, marker=marker, ms=5, color=colour, label=label, **kw)
    if low is None or high is None:
        return
    lo, hi = np.asarray(low, dtype=float)[order], np.asarray(high, dtype=float)[order]
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return
    if ok.sum() == 1 or gap.any():  # single points or gaps: error bars read better than a band
        yerr = np.stack([np.clip(y[ok] - lo[ok], 0, None), np.clip(hi[ok] - y[ok], 0, None)])
        ax.errorbar(x[ok], y[ok], yerr=yerr, fmt="none", ecolor=colour, capsize=3, lw=1, label=band_label)
    else:
        ax.fill_between(x, np.where(ok, lo, np.nan), np.where(ok, hi, np.nan), color=colour, alpha=0.18, lw=0,
                        label=band_label)  # fmt: skip


# ---------------------------------------------------------------------------------- plots


def _named_states_x(ax, d: pd.DataFrame) -> None:
    """Tick labels from ``layer_name`` when a state has a name (``final_norm``), so it is not read as a layer."""
    if "layer_name" not in d.columns:
        return
    names = d.dropna(subset=["layer_name"]).drop_duplicates("layer").set_index("layer")["layer_name"].astype(str)
    if names.empty or all(n.lstrip("-").isdigit() for n in names):
        return
    xs = sorted(names.index)
    ax.set_xticks(xs)
    ax.set_xticklabels([names[x] for x in xs], rotation=30 if len(xs) > 8 else 0)


def plot_over_layers(
    df: pd.DataFrame,
    out_png: str | os.PathLike,
    metric: str,
    hue: str | None = "target",
    split: str | None = "test",
    title: str | None = None,
    baselines: dict[str, float] | None = None,
    ylabel: str | None = None,
    ylim: tuple[float | None, float | None] | None = None,
) -> Path:
    """``metric`` over layers, one line per value of ``hue``, interval bands, baseline lines.

    Lines join adjacent layers only: across layers that were not measured they are dotted
    (:func:`draw_layer_series`). ``ylabel`` defaults to the readable name of ``metric``
    (:func:`readable`), with the split when it is not ``all``; ``ylim`` fixes either end.
    Several rows for one (hue, layer) (seeds, probes) are averaged and drawn without CI.
    With more than ``MAX_HUE_LINES`` hue values, the mean over them is drawn with a
    min-max band, and the legend says so. ``baselines`` maps a name (e.g. "MFCC",
    "majority class") to a value drawn as a labelled dashed horizontal line.
    """
    import numpy as np

    d = select_rows(df, metric, split)
    use_hue = hue is not None and hue in d.columns and d[hue].notna().any()
    key = d[hue].astype(str) if use_hue else "all"
    d = d.assign(_hue=key)
    for c in ("ci_low", "ci_high"):
        if c not in d.columns:
            d = d.assign(**{c: np.nan})
    g = d.groupby(["_hue", "layer"], sort=False).agg(
        value=("value", "mean"), ci_low=("ci_low", "first"), ci_high=("ci_high", "first"), n=("value", "size")
    )
    g.loc[g["n"] > 1, ["ci_low", "ci_high"]] = np.nan
    g = g.reset_index()
    hues = _sorted_labels(g["_hue"])

    fig = new_figure(7.2 if len(hues) > 6 else 6.4, 4.2)
    ax = fig.add_subplot()
    n_entries = 0
    if len(hues) > MAX_HUE_LINES:
        wide = g.pivot_table(index="layer", columns="_hue", values="value", aggfunc="mean").sort_index()
        x = wide.index.to_numpy()
        ax.fill_between(
            x,
            wide.min(axis=1),
            wide.max(axis=1),
            alpha=0.25,
            color="C0",
            label=f"min-max over {len(hues)} {hue}s",
        )
        ax.plot(x, wide.mean(axis=1), marker="o", color="C0", label=f"mean over {len(hues)} {hue}s")
        n_entries += 2
    else:
        for i, h in enumerate(hues):
            s = g[g["_hue"] == h].sort_values("layer")
            label = str(h) if use_hue else readable(metric)
            draw_layer_series(ax, s["layer"].to_numpy(), s["value"].to_numpy(), label=label, colour=f"C{i % 10}",
                              low=s["ci_low"].to_numpy(dtype=float), high=s["ci_high"].to_numpy(dtype=float))  # fmt: skip
            n_entries += 1
    _draw_baselines(ax, baselines)
    n_entries += len(baselines or {})
    _integer_x(ax)
    _named_states_x(ax, d)
    ax.set_xlabel("layer")
    if ylabel is None:
        ylabel = readable(metric)
        if split not in (None, "all") and "split" in d.columns:
            ylabel = f"{ylabel} ({split})"
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title is None:
        backbones = d["backbone"].dropna().unique() if "backbone" in d.columns else []
        title = f"{readable(metric)} over layers" + (f": {backbones[0]}" if len(backbones) == 1 else "")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, n_entries)
    return save_figure(fig, out_png)


def plot_layer_target_heatmap(
    df: pd.DataFrame,
    out_png: str | os.PathLike,
    metric: str,
    split: str | None = "test",
    title: str | None = None,
    cmap: str = "viridis",
) -> Path:
    """Layer (rows) x target (columns) heatmap of ``metric``, values annotated when few cells."""
    d = select_rows(df, metric, split)
    if "target" not in d.columns or d["target"].isna().all():
        raise FigureError(f"rows of {metric!r} have no 'target' column to spread over")
    wide = d.pivot_table(index="layer", columns="target", values="value", aggfunc="mean").sort_index()
    wide = wide[_sorted_labels(wide.columns)]
    n, k = wide.shape
    fig = new_figure(min(3.0 + 0.55 * k, 30.0), min(2.0 + 0.4 * n, 20.0))
    ax = fig.add_subplot()
    layers = [int(v) if float(v).is_integer() else v for v in wide.index]
    _heatmap(
        ax,
        fig,
        wide.to_numpy(dtype=float),
        layers,
        list(wide.columns),
        vmin=None,
        vmax=None,
        cmap=cmap,
        annotate=None,
        colorbar_label=metric,
    )
    ax.set_xlabel("target")
    ax.set_ylabel("layer")
    ax.set_title(title or f"{metric} by layer and target" + (f" ({split})" if split and "split" in d else ""))
    return save_figure(fig, out_png)


def plot_matrix(
    matrix: Any,
    out_png: str | os.PathLike,
    row_labels: Sequence,
    col_labels: Sequence,
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    annotate: bool | None = None,
    xlabel: str = "layer",
    ylabel: str = "layer",
    colorbar_label: str | None = None,
    groups: Sequence | None = None,
) -> Path:
    """A ``(n, m)`` matrix (numpy or torch) as a heatmap, e.g. CKA layer x layer.

    ``annotate=None`` writes the values when there are at most ``MAX_ANNOTATED_CELLS``
    cells. NaN cells are grey. ``colorbar_label`` names the quantity (default: the first line of
    ``title`` up to its first colon). ``groups`` (one per row of a square matrix, e.g. the manner of each
    phone) draws separator lines where the group changes and names each block on the right.
    """
    if colorbar_label is None:
        colorbar_label = str(title).split("\n")[0].split(":")[0].strip() or "value"
    m = _to_numpy(matrix)
    if m.ndim != 2:
        raise FigureError(f"plot_matrix needs a 2-D matrix, got shape {m.shape}")
    if len(row_labels) != m.shape[0] or len(col_labels) != m.shape[1]:
        raise FigureError(
            f"matrix of shape {m.shape} with {len(row_labels)} row labels and {len(col_labels)} column labels"
        )
    n, k = m.shape
    fig = new_figure(min(2.5 + 0.5 * k, 3.0 + 0.26 * k, 30.0), min(2.0 + 0.45 * n, 2.0 + 0.24 * n, 30.0))
    ax = fig.add_subplot()
    _heatmap(
        ax,
        fig,
        m,
        row_labels,
        col_labels,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        annotate=annotate,
        colorbar_label=colorbar_label,
        cbar_pad=0.05 if groups is None else 0.09,
    )
    if groups is not None:
        _group_separators(ax, list(groups), n, k)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, out_png)


def _group_separators(ax: Any, groups: list, n: int, k: int) -> None:
    """White lines between runs of equal ``groups`` along both axes of a square heatmap, run names on the right."""
    if len(groups) != n:
        raise FigureError(f"{len(groups)} groups for a matrix of {n} rows")
    start = 0
    for i in range(1, n + 1):
        if i == n or groups[i] != groups[start]:
            if i < n:
                ax.axhline(i - 0.5, color="white", lw=1.2)
                if k == n:
                    ax.axvline(i - 0.5, color="white", lw=1.2)
            ax.text(k - 0.4, (start + i - 1) / 2, f" {groups[start]}", ha="left", va="center", fontsize=7,
                    clip_on=False, transform=ax.transData)  # fmt: skip
            start = i


def plot_lines(
    x: Sequence[float],
    ys: dict[str, Sequence[float]],
    out_png: str | os.PathLike,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """One line per entry of ``ys`` (each as long as ``x``)."""
    xs = _to_numpy(x)
    fig = new_figure()
    ax = fig.add_subplot()
    for i, (name, y) in enumerate(ys.items()):
        yv = _to_numpy(y)
        if yv.shape != xs.shape:
            raise FigureError(f"line {name!r} has {yv.shape} points, x has {xs.shape}")
        ax.plot(xs, yv, marker="o" if len(xs) <= 30 else None, ms=4, color=f"C{i % 10}", label=str(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, len(ys))
    return save_figure(fig, out_png)


def plot_overlay(
    dfs: Mapping[str, pd.DataFrame] | pd.DataFrame,
    out_png: str | os.PathLike,
    metric: str,
    split: str | None = "test",
    title: str | None = None,
    baselines: dict[str, float] | None = None,
) -> Path:
    """``metric`` over layers, one line per job (e.g. whisper vs mfcc in a multirun).

    ``dfs`` maps a job name to its table, or is one table with a ``job`` column. Within a
    job, rows of one layer (several targets) are averaged; the legend gives the count.
    A job with a single layer (a baseline such as MFCC) beside multi-layer jobs is drawn
    as a dashed horizontal line.
    Jobs without rows for ``metric``/``split`` are left out (a warning names them).
    """
    import pandas as pd

    if isinstance(dfs, pd.DataFrame):
        if "job" not in dfs.columns:
            raise FigureError("plot_overlay needs a dict of tables or a table with a 'job' column")
        tables = {str(j): t for j, t in dfs.groupby("job", sort=False)}
    else:
        tables = {str(k): v for k, v in dfs.items()}
    fig = new_figure(7.2 if len(tables) > 6 else 6.4, 4.2)
    ax = fig.add_subplot()
    series, skipped = {}, []
    for job, t in tables.items():
        try:
            d = select_rows(t, metric, split)
        except FigureError:
            skipped.append(job)
            continue
        if "target" in d.columns and (d["target"] == "mean").any():
            d = d[d["target"] == "mean"]  # the job already gives the mean over targets: use it, not a mean of means
        series[job] = d.groupby("layer")["value"].agg(["mean", "size"]).sort_index()
    drawn = len(series)
    multi_layer = any(len(s) > 1 for s in series.values())
    for i, (job, per_layer) in enumerate(series.items()):
        n_groups = int(per_layer["size"].max())
        label = job if n_groups == 1 else f"{job} (mean of {n_groups})"
        colour = f"C{i % 10}"
        if len(per_layer) == 1 and multi_layer:
            # a one-layer job (an MFCC/log-mel baseline) reads best as a level across all layers
            layer, v = per_layer.index[0], float(per_layer["mean"].iloc[0])
            ax.axhline(v, ls="--", lw=1.3, color=colour, label=f"{label} [layer {layer:g}]")
            ax.plot([layer], [v], marker="o", ms=4, color=colour)
        else:
            ax.plot(per_layer.index, per_layer["mean"], marker="o", ms=4, color=colour, label=label)
    if drawn == 0:
        raise FigureError(f"no job has rows for metric {metric!r} (split {split!r})")
    if skipped:
        warnings.warn(f"jobs without {metric!r} rows left out of the overlay: {skipped}", stacklevel=2)
    _draw_baselines(ax, baselines)
    _integer_x(ax)
    ax.set_xlabel("layer")
    ax.set_ylabel(readable(metric) if split in (None, "all") else f"{readable(metric)} ({split})")
    ax.set_title(title or f"{readable(metric)} over layers, by job")
    ax.grid(alpha=0.3)
    _legend(ax, drawn + len(baselines or {}))
    return save_figure(fig, out_png)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def category_style(i: int, n: int) -> tuple[Any, str]:
    """Colour and marker of category ``i`` of ``n``: tab10 up to 10 categories; above that tab20's 20 colours
    with a marker per cycle, so 20+ categories stay distinguishable (colour x marker)."""
    import matplotlib

    if n <= 10:
        return matplotlib.colormaps["tab10"](i % 10), "o"
    palette = matplotlib.colormaps["tab20"]
    return palette(i % 20), MARKERS[(i // 20 + (i % 2)) % len(MARKERS)]


def plot_scatter_2d(
    points: Any,
    labels: Sequence | None,
    out_png: str | os.PathLike,
    title: str,
    max_legend: int = 40,
    xlabel: str = "dimension 1",
    ylabel: str = "dimension 2",
    label_name: str | None = None,
) -> Path:
    """A 2-D embedding (PCA, t-SNE, UMAP: ``(n, 2)``) coloured by categorical label.

    The ``max_legend`` most frequent labels get their own colour/marker pair (:func:`category_style`) and
    legend entry (outside the axes, titled ``label_name``); the rest are drawn in grey underneath as one
    "other" entry. Dots are at least 12 pt\u00b2.
    """
    import numpy as np

    p = _to_numpy(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise FigureError(f"plot_scatter_2d needs points of shape (n, 2), got {p.shape}")
    n = p.shape[0]
    lab = ["all"] * n if labels is None else [str(v) for v in labels]
    if len(lab) != n:
        raise FigureError(f"{n} points but {len(lab)} labels")
    counts = Counter(lab)
    top = [k for k, _ in counts.most_common(max_legend)]
    top_set = set(top)
    size = float(min(40.0, max(12.0, 6000.0 / max(n, 1))))
    fig = new_figure(8.2 if len(top) > 1 else 6.4, 5.2)
    ax = fig.add_subplot()
    lab_arr = np.asarray(lab, dtype=object)
    rest = ~np.isin(lab_arr, list(top_set))
    if rest.any():
        n_other = len(counts) - len(top)
        ax.scatter(
            p[rest, 0],
            p[rest, 1],
            s=size,
            c="lightgrey",
            linewidths=0,
            label=f"other ({n_other} labels, {int(rest.sum())} points)",
        )
    ordered = _sorted_labels(top)
    for i, k in enumerate(ordered):
        sel = lab_arr == k
        colour, marker = category_style(i, len(ordered))
        ax.scatter(p[sel, 0], p[sel, 1], s=size, color=colour, marker=marker, linewidths=0, alpha=0.85, label=k)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if labels is not None:
        n_entries = len(top) + int(rest.any())
        ax.legend(fontsize="x-small" if n_entries > 12 else "small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0, ncol=2 if n_entries > 22 else 1, markerscale=1.3, title=label_name,
                  title_fontsize="small")  # fmt: skip
    return save_figure(fig, out_png)
