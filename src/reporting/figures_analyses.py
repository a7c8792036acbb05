"""Figures of the cache analyses and the probing controls: RSA, CCA, ABX, dimensionality reduction,
selectivity, MDL.

Each function takes the analysis's long-format rows (dicts with ``layer``, ``metric``,
``value`` and the columns named in its docstring), draws one PNG with the conventions of
:mod:`src.reporting.figures` (title naming the analysis, model and corpus; readable axis labels
with units and direction; chance or null lines where they exist; interval bands where intervals
exist; legends outside the data) and returns its path. Figures are saved through
``figures.save_figure`` (looked up on the module at call time, so tests can read a figure back).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from src.reporting import figures as F

STAT_NAMES = {"kendall_tau_a": "Kendall \u03c4a", "spearman": "Spearman \u03c1"}


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _include_zero(ax: Any, values: Sequence[float], top_at_least: float | None = None) -> None:
    """y limits that include 0 (never a truncated axis) and every value, with a small margin."""
    import numpy as np

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    lo = min(0.0, float(v.min()) if v.size else 0.0)
    hi = max(0.0, float(v.max()) if v.size else 1.0, top_at_least if top_at_least is not None else 0.0)
    pad = 0.06 * (hi - lo or 1.0)
    ax.set_ylim(lo - (pad if lo < 0 else 0.0), hi + pad)


def _outside_legend(ax: Any, n_entries: int) -> None:
    """Legend right of the axes when it would cover data (more than 4 entries), else where it covers least."""
    if n_entries > 4:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    elif n_entries:
        ax.legend(fontsize="small", loc="best")


# ------------------------------------------------------------------------------------------ RSA


def plot_rsa(rows: Sequence[Mapping], out_png: str | os.PathLike, context: str = "", alpha: float = 0.05) -> Path:
    """RSA over layers, every reference on one figure.

    ``rows``: the RSA rows (``layer``, ``reference``, ``metric`` = ``rsa_<method>`` with ``method``,
    ``value``, and where permutations ran ``null_low`` / ``null_high``, the central 95% of the permutation
    null), plus ``p_value`` rows. Each reference is one line labelled with its statistic (Kendall \u03c4a for
    categorical references, Spearman \u03c1 for continuous ones), its permutation null as a band of the same
    colour, layers with ``p < alpha`` as filled markers and the others hollow. The y axis always includes 0.
    """
    import numpy as np

    rsa = [r for r in rows if str(r.get("metric", "")).startswith("rsa_") and _num(r.get("layer")) == _num(r.get("layer"))]
    if not rsa:
        raise F.FigureError("plot_rsa: no rsa_<method> rows")
    p_of = {(r["reference"], _num(r["layer"])): _num(r["value"]) for r in rows if r.get("metric") == "p_value"}
    refs = list(dict.fromkeys(r["reference"] for r in rsa))
    stats = {r["metric"][len("rsa_") :] for r in rsa}
    fig = F.new_figure(7.6, 4.4)
    ax = fig.add_subplot()
    every, n_entries = [], 0
    for i, ref in enumerate(refs):
        sub = sorted((r for r in rsa if r["reference"] == ref), key=lambda r: _num(r["layer"]))
        x = np.array([_num(r["layer"]) for r in sub])
        y = np.array([_num(r["value"]) for r in sub])
        stat = STAT_NAMES.get(sub[0]["metric"][len("rsa_") :], sub[0]["metric"])
        lo = np.array([_num(r.get("null_low")) for r in sub])
        hi = np.array([_num(r.get("null_high")) for r in sub])
        colour = f"C{i % 10}"
        F.draw_layer_series(ax, x, y, label=f"{ref} ({stat})", colour=colour, low=lo, high=hi,
                            band_label=f"{ref}: 95% of permutation null" if np.isfinite(lo).any() else None)  # fmt: skip
        n_entries += 1 + int(np.isfinite(lo).any())
        p = np.array([p_of.get((ref, xi), np.nan) for xi in x])
        weak = np.isfinite(p) & (p >= alpha)
        if weak.any():  # hollow markers: not significant at alpha
            ax.scatter(x[weak], y[weak], s=30, facecolors="white", edgecolors=colour, zorder=3, linewidths=1.2)
        every += [*y, *lo, *hi]
    ax.axhline(0.0, color="black", lw=0.6)
    _include_zero(ax, every)
    F._integer_x(ax)
    ax.set_xlabel("layer (state index)")
    if len(stats) == 1:
        ax.set_ylabel(f"RSA: {STAT_NAMES.get(stats.pop(), 'rank correlation')} of model and reference RDMs")
    else:
        ax.set_ylabel("RSA: rank correlation of model and\nreference RDMs (statistic in legend)")
    if p_of:
        ax.plot([], [], ls="none", marker="o", mfc="white", mec="0.3", label=f"hollow: p \u2265 {alpha:g}")
        n_entries += 1
    ax.set_title(F.figure_title("RSA: model RDM vs each reference, over layers", context))
    ax.grid(alpha=0.3)
    _outside_legend(ax, n_entries)
    return F.save_figure(fig, out_png)


# ------------------------------------------------------------------------------------------ CCA


def plot_cca(rows: Sequence[Mapping], out_png: str | os.PathLike, context: str = "", reference: str = "") -> Path:
    """CCA over layers: each measure a solid line, its shuffled-frames null (``<measure>_null``) dashed in the
    same colour with its own marker, nudged sideways so that nulls lying on top of each other stay visible.

    Rows with a ``layer_b`` (compare=layers, pairs=adjacent) are drawn at layer ``k`` with the tick label
    ``k\u2192k+1`` (the pair of states compared); rows without one (a single reference layer) at their layer."""
    import numpy as np

    rows = [r for r in rows if np.isfinite(_num(r.get("value")))]
    if not rows:
        raise F.FigureError("plot_cca: no rows")
    pairs = any(r.get("layer_b") not in (None, "") and np.isfinite(_num(r.get("layer_b"))) for r in rows)
    measures = list(dict.fromkeys(r["metric"] for r in rows if not str(r["metric"]).endswith(F.NULL_SUFFIX)))
    nulls = [m for m in dict.fromkeys(r["metric"] for r in rows) if str(m).endswith(F.NULL_SUFFIX)]
    fig = F.new_figure(7.6, 4.4)
    ax = fig.add_subplot()
    null_markers = ["x", "+", "1", "*"]
    every, n_entries = [], 0
    ticks: dict[float, str] = {}
    for i, m in enumerate(measures):
        colour = f"C{i % 10}"
        for kind, name in (("value", m), ("null", f"{m}{F.NULL_SUFFIX}")):
            if kind == "null" and name not in nulls:
                continue
            sub = sorted((r for r in rows if r["metric"] == name), key=lambda r: _num(r["layer"]))
            x = np.array([_num(r["layer"]) for r in sub])
            y = np.array([_num(r["value"]) for r in sub])
            if pairs:
                for r in sub:
                    ticks[_num(r["layer"])] = f"{int(_num(r['layer']))}\u2192{int(_num(r['layer_b']))}"
            if kind == "value":
                F.draw_layer_series(ax, x, y, label=F.readable(m), colour=colour)
            else:
                k = nulls.index(name)
                dx = 0.08 * (k - (len(nulls) - 1) / 2)
                F.draw_layer_series(ax, x + dx, y, label=f"{F.readable(m)}: null (one view's frames shuffled)",
                                    colour=colour, ls="--", marker=null_markers[k % len(null_markers)], lw=1.0)  # fmt: skip
            every += list(y)
            n_entries += 1
    _include_zero(ax, every, top_at_least=1.0)
    ax.axhline(0.0, color="0.6", lw=0.6, zorder=0)
    if pairs:
        xs = sorted(ticks)
        ax.set_xticks(xs, [ticks[x] for x in xs], rotation=45 if len(xs) > 8 else 0)
        ax.set_xlabel("pair of adjacent states compared (k\u2192k+1)")
    else:
        F._integer_x(ax)
        ax.set_xlabel("layer (state index)")
    ax.set_ylabel("canonical correlation (0 = none, 1 = shared subspace)")
    what = f"vs {reference}" if reference and not pairs else "each state vs the next"
    ax.set_title(F.figure_title(f"CCA: {what}", context))
    ax.grid(alpha=0.3)
    _outside_legend(ax, n_entries)
    return F.save_figure(fig, out_png)


# ------------------------------------------------------------------------------------------ ABX


def plot_abx(rows: Sequence[Mapping], out_png: str | os.PathLike, context: str = "", notes: Mapping | None = None) -> Path:
    """ABX error over layers: within and across speakers on one figure, chance (0.5) as a dashed line."""
    import numpy as np

    modes = [m for m in ("within", "across") if any(r.get("metric") == f"abx_{m}" for r in rows)]
    if not modes:
        raise F.FigureError("plot_abx: no abx_within / abx_across rows")
    fig = F.new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    every = []
    names = {"within": "within speaker", "across": "across speakers"}
    for i, m in enumerate(modes):
        sub = sorted((r for r in rows if r.get("metric") == f"abx_{m}"), key=lambda r: _num(r["layer"]))
        x = np.array([_num(r["layer"]) for r in sub])
        y = np.array([_num(r["value"]) for r in sub])
        F.draw_layer_series(ax, x, y, label=names[m], colour=f"C{i}")
        every += list(y)
    ax.axhline(0.5, color="0.35", ls="--", lw=1.2, label="chance (0.5)")
    for m, why in (notes or {}).items():
        ax.plot([], [], ls="none", label=f"{m}: {why}")
    _include_zero(ax, every, top_at_least=0.55)
    F._integer_x(ax)
    ax.set_xlabel("layer (state index)")
    ax.set_ylabel("ABX error rate (lower is better)")
    ax.set_title(F.figure_title("ABX phone discrimination", context))
    ax.grid(alpha=0.3)
    _outside_legend(ax, len(modes) + 1 + len(notes or {}))
    return F.save_figure(fig, out_png)


# ------------------------------------------------------------------------------------------ dimensionality reduction


def plot_dimred_measure(
    rows: Sequence[Mapping],
    out_png: str | os.PathLike,
    measure: str,
    context: str = "",
    chance: Mapping[str, float] | None = None,
) -> Path:
    """One dimensionality-reduction measure over the measured layers, one series per space (``reference``: the
    method, or ``full`` for the standardised D-dimensional space): markers at the measured layers, lines only
    between adjacent ones. ``chance``: name -> level drawn as a dashed line (e.g. the majority label rate).
    Silhouettes run from -1 to 1 (0: no cluster structure); accuracies and variance ratios from 0 to 1."""
    import numpy as np

    sub = [r for r in rows if r.get("metric") == measure]
    if not sub:
        raise F.FigureError(f"plot_dimred_measure: no rows of {measure!r}")
    spaces = list(dict.fromkeys(str(r.get("reference", "")) for r in sub))
    fig = F.new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    every = []
    for i, sp in enumerate(spaces):
        s = sorted((r for r in sub if str(r.get("reference", "")) == sp), key=lambda r: _num(r["layer"]))
        x = np.array([_num(r["layer"]) for r in s])
        y = np.array([_num(r["value"]) for r in s])
        label = {"full": "full space (standardised)", "pca": "PCA (2-D)", "lda": "LDA", "tsne": "t-SNE (2-D)",
                 "mds": "MDS (2-D)", "umap": "UMAP (2-D)"}.get(sp, sp)  # fmt: skip
        F.draw_layer_series(ax, x, y, label=label, colour=f"C{i % 10}")
        every += list(y)
    styles = ["--", ":", "-."]
    for j, (name, level) in enumerate((chance or {}).items()):
        ax.axhline(float(level), color="0.35", ls=styles[j % 3], lw=1.2, label=f"{name} ({float(level):.3g})")
        every.append(float(level))
    if measure.startswith("silhouette_"):
        ax.axhline(0.0, color="black", lw=0.6)
        ylabel = f"{F.readable(measure)}: \u22121 .. 1, higher = better separated"
        _include_zero(ax, every)
    else:
        ylabel = F.readable(measure) + (" (higher is better)" if "accuracy" in measure else "")
        _include_zero(ax, every, top_at_least=1.0)
    layers = sorted({_num(r["layer"]) for r in sub})
    ax.set_xticks(layers)
    ax.set_xlabel("layer (state index; measured layers only)")
    ax.set_ylabel(ylabel)
    ax.set_title(F.figure_title(f"Dimensionality reduction: {F.readable(measure)}", context))
    ax.grid(alpha=0.3)
    _outside_legend(ax, len(spaces) + len(chance or {}))
    return F.save_figure(fig, out_png)


# ------------------------------------------------------------------------------------------ probing


def probing_figures(
    rows: Sequence[Mapping], out_dir: str | os.PathLike, metric: str, kind: str, context: str = ""
) -> list[Path]:
    """The PNGs of a probing run (train.py): the main ``metric`` over layers per target with its intervals and
    the baselines (``*_baseline`` rows), the layer x target heatmap (regression), selectivity beside the
    accuracies that define it, MDL compression against the uniform code, and the layer weights."""
    import pandas as pd

    out_dir = Path(out_dir)
    df = pd.DataFrame(list(rows))
    pngs: list[Path] = []
    if df.empty:
        return pngs
    task = str(df["task"].iloc[0]) if "task" in df.columns else ""
    main = df[(df.metric == metric) & (pd.to_numeric(df.layer, errors="coerce") >= 0)]
    if len(main):
        baselines = {}
        for m in sorted(set(df.metric)):
            if str(m).endswith("_baseline"):
                baselines[str(m).replace("accuracy_", "").replace("_", " ")] = float(df[df.metric == m].value.iloc[0])
        hue_df = main[main.target != "mean"] if kind == "regression" else main
        pngs.append(F.plot_over_layers(
            hue_df, out_dir / f"{metric}_over_layers.png", metric, hue="target", split="test",
            title=F.figure_title(f"Probing {task}: {F.readable(metric)} (test)", context),
            baselines=baselines or None,
            ylabel=f"{F.readable(metric)} (test, higher is better)",
            ylim=(0.0, 1.02) if metric == "accuracy" else None,
        ))  # fmt: skip
        if kind == "regression":
            pngs.append(F.plot_layer_target_heatmap(
                hue_df, out_dir / f"{metric}_layer_x_target.png", metric, split="test",
                title=F.figure_title(f"Probing {task}: {F.readable(metric)} by layer and target (test)", context),
            ))  # fmt: skip
    if (df.metric == "selectivity").any():
        pngs.append(plot_selectivity(df.to_dict("records"), out_dir / "selectivity_over_layers.png", context))
    if (df.metric == "mdl_compression").any():
        pngs.append(plot_mdl(df.to_dict("records"), out_dir / "mdl_compression_over_layers.png", context))
    sub = df[df.metric == "layer_weight"]
    if len(sub):
        pngs.append(F.plot_over_layers(
            sub, out_dir / "layer_weight_over_layers.png", "layer_weight", hue="target", split=sub.split.iloc[0],
            title=F.figure_title(f"Probing {task}: learnt layer weights", context),
            ylabel="layer weight (softmax, sums to 1)",
        ))  # fmt: skip
    return pngs


def _metric_rows(rows: Sequence[Mapping], metric: str) -> list[Mapping]:
    return sorted((r for r in rows if r.get("metric") == metric and _num(r.get("layer")) >= 0),
                  key=lambda r: _num(r["layer"]))  # fmt: skip


def plot_selectivity(rows: Sequence[Mapping], out_png: str | os.PathLike, context: str = "") -> Path:
    """Hewitt & Liang selectivity, with what defines it beside it: left, the probe's accuracy on the test items
    whose control type was seen in training and the control task's accuracy on the same items (95% bands);
    right, selectivity = their difference (95% band), with 0 marked."""
    fig = F.new_figure(11.0, 4.2)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    task = next((str(r.get("task")) for r in rows if r.get("task")), "")
    for i, (metric, label) in enumerate((("accuracy_control_types_seen", "probe: the task"),
                                         ("control_accuracy", "probe: the control task"))):  # fmt: skip
        sub = _metric_rows(rows, metric)
        if sub:
            F.draw_layer_series(ax1, [_num(r["layer"]) for r in sub], [_num(r["value"]) for r in sub], label=label,
                                colour=f"C{i}", low=[_num(r.get("ci_low")) for r in sub],
                                high=[_num(r.get("ci_high")) for r in sub])  # fmt: skip
    maj = [r for r in rows if r.get("metric") == "accuracy_majority_baseline"]
    if maj:
        ax1.axhline(_num(maj[0]["value"]), color="0.35", ls="--", lw=1.2, label=f"majority class ({_num(maj[0]['value']):.3g})")
    ax1.set_ylim(0, 1.02)
    ax1.set_ylabel("accuracy (test items of seen control types)")
    ax1.set_title("accuracy of the task and of the control task", fontsize=9)
    sub = _metric_rows(rows, "selectivity")
    F.draw_layer_series(ax2, [_num(r["layer"]) for r in sub], [_num(r["value"]) for r in sub], label="selectivity",
                        colour="C2", low=[_num(r.get("ci_low")) for r in sub], high=[_num(r.get("ci_high")) for r in sub],
                        band_label="95% interval")  # fmt: skip
    ax2.axhline(0.0, color="black", lw=0.6)
    _include_zero(ax2, [_num(r["value"]) for r in sub] + [_num(r.get("ci_high")) for r in sub])
    ax2.set_ylabel("selectivity = task \u2212 control accuracy\n(higher: the probe reads the representation)")
    ax2.set_title("selectivity", fontsize=9)
    for ax in (ax1, ax2):
        F._integer_x(ax)
        ax.set_xlabel("layer (state index)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    fig.suptitle(F.figure_title(f"Probing {task}: selectivity (Hewitt & Liang control task)", context), fontsize=10)
    fig.tight_layout()
    return F.save_figure(fig, out_png)


def plot_mdl(rows: Sequence[Mapping], out_png: str | os.PathLike, context: str = "") -> Path:
    """MDL compression over layers (uniform codelength / online codelength) with the uniform code at 1.0: above
    1, the labels are cheaper to transmit given the layer than without it."""
    sub = _metric_rows(rows, "mdl_compression")
    if not sub:
        raise F.FigureError("plot_mdl: no mdl_compression rows")
    task = next((str(r.get("task")) for r in rows if r.get("task")), "")
    fig = F.new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    targets = list(dict.fromkeys(str(r.get("target", "")) for r in sub))
    for i, t in enumerate(targets):
        s = [r for r in sub if str(r.get("target", "")) == t]
        F.draw_layer_series(ax, [_num(r["layer"]) for r in s], [_num(r["value"]) for r in s],
                            label=f"online code ({t})" if len(targets) > 1 else "online code", colour=f"C{i % 10}")  # fmt: skip
    ax.axhline(1.0, color="0.35", ls="--", lw=1.2, label="uniform code (1.0)")
    _include_zero(ax, [_num(r["value"]) for r in sub], top_at_least=1.0)
    F._integer_x(ax)
    ax.set_xlabel("layer (state index)")
    ax.set_ylabel("compression = uniform / online codelength\n(higher is better; 1 = no information)")
    ax.set_title(F.figure_title(f"Probing {task}: MDL (online code, training split)", context))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return F.save_figure(fig, out_png)
