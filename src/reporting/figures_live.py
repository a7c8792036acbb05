"""Figures of the live-model analyses and trained artefacts: feature attribution, context mixing, activation
patching, faithfulness, SAE evaluation and training, the utterance classifier.

Same conventions as :mod:`src.reporting.figures` (Agg canvas, no pyplot; titles name the analysis, model
and corpus; labelled axes; intervals drawn where they exist; colour bars name the quantity). Each function
takes plain rows / arrays and returns the PNG's path; figures are saved through ``figures.save_figure``
(looked up at call time, so tests can read a figure back).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from src.reporting import figures as F

MIN_INTERVAL_UNITS = 5  # intervals over fewer units (utterances, sentences) are not drawn: the count is stated instead


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# ------------------------------------------------------------------------------------------ feature attribution

ATTRIBUTION_COLOURS = {"waveform": "tab:red", "spectrogram": "tab:blue", "cnn": "tab:green"}


def plot_attribution_item(p: Mapping, out_png: str | os.PathLike, context: str = "") -> Path:
    """One utterance: waveform (top) and spectrogram (middle) with each input type's attribution over time (mean
    over features, scaled to its max |.|) and the segment boundaries; bottom: the segment scores per input type.

    ``p``: ``audio``, ``sample_rate``, ``segments`` (``start``, ``end``, ``labels``, ``ids``), ``curves``
    (input -> (times, curve)), ``scores`` (input -> one score per segment), ``reduction``, ``utterance``,
    ``method``, ``target``."""
    import numpy as np

    audio, sr = np.asarray(p["audio"]), p["sample_rate"]
    seg = p["segments"]
    fig = F.new_figure(9.0, 7.8)
    gs = fig.add_gridspec(3, 1, height_ratios=[1, 1.2, 1.2])
    ax, ax2, ax3 = (fig.add_subplot(gs[i]) for i in range(3))
    t = np.arange(len(audio)) / sr
    ax.plot(t, audio, color="0.6", lw=0.5)
    ax.set_ylabel("waveform (amplitude)")
    ax2.specgram(audio.astype(np.float64) + 1e-9, NFFT=400, Fs=sr, noverlap=240, cmap="Greys")
    ax2.set_ylabel("frequency (Hz)")
    for axis, scale in ((ax, float(np.abs(audio).max() or 1.0)), (ax2, sr / 2 * 0.9)):
        tw = axis.twinx() if axis is ax2 else axis
        for name, (times, curve) in p["curves"].items():
            times, curve = np.asarray(times), np.asarray(curve)
            keep = times < len(audio) / sr
            c = curve[keep]
            m = float(np.nanmax(np.abs(c))) if c.size else 0.0
            y = c / m if m > 0 else c
            if axis is ax2:
                tw.plot(times[keep], y, color=ATTRIBUTION_COLOURS.get(name, "k"), lw=0.8, label=name)
                tw.set_ylim(-1.1, 1.1)
                tw.set_ylabel("attribution (/ max |.|)")
            else:
                axis.plot(times[keep], y * scale, color=ATTRIBUTION_COLOURS.get(name, "k"), lw=0.8, label=name)
        for s in seg["start"][1:]:
            axis.axvline(s, color="k", lw=0.5, ls=":")
    for s, e, lab in zip(seg["start"], seg["end"], seg["labels"]):
        ax.text((s + e) / 2, ax.get_ylim()[1] * 0.9, lab, ha="center", va="top", fontsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="input",
              title_fontsize=7)  # fmt: skip
    ax.set_xlim(0, len(audio) / sr)
    ax2.set_xlim(0, len(audio) / sr)
    ax2.set_xlabel("time (s)")
    names = list(p["scores"])
    x = np.arange(len(seg["ids"]))
    w = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        sc = np.asarray(p["scores"][name], dtype=np.float64)
        m = float(np.nanmax(np.abs(sc))) if np.isfinite(sc).any() else 0.0
        ax3.bar(x + (j - (len(names) - 1) / 2) * w, sc / m if m > 0 else sc, w, color=ATTRIBUTION_COLOURS.get(name, "k"),
                label=name)  # fmt: skip
    ax3.axhline(0, color="k", lw=0.5)
    ax3.set_xticks(x, seg["ids"], rotation=45, ha="right", fontsize=7)  # unique ids: silences stay separate
    ax3.set_xlabel("segment")
    ax3.set_ylabel(f"segment score\n({p['reduction']}, / max |.|)")
    ax3.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(F.figure_title(f"Feature attribution: {p['method']}, target {p['target']}, utterance {p['utterance']}",
                                context), fontsize=9)  # fmt: skip
    fig.tight_layout()
    return F.save_figure(fig, out_png)


def plot_plausibility(rows: Sequence[Mapping], out_png: str | os.PathLike, context: str = "") -> Path:
    """Plausibility per head x method x input, one horizontal bar each (long labels stay readable): the fraction of
    utterances whose top-scoring word determines the slot, against a random ranking's expectation (red ticks).
    Intervals (95% bootstrap over sentences) are drawn only when they rest on at least :data:`MIN_INTERVAL_UNITS`
    sentences; the numbers of utterances and sentences are in the title."""
    import numpy as np

    rows = list(rows)
    if not rows:
        raise F.FigureError("plot_plausibility: no rows")
    labels = [f"{r['head']} \u00b7 {r['method']} \u00b7 {r['input']}" for r in rows]
    y = np.arange(len(rows))[::-1]  # first row on top
    fig = F.new_figure(8.4, 1.8 + 0.34 * len(rows))
    ax = fig.add_subplot()
    v = np.array([_num(r["value"]) for r in rows])
    n_units = min(int(_num(r.get("n_units", 0)) or 0) for r in rows)
    n_utts = sorted({int(_num(r.get("n_utterances", 0)) or 0) for r in rows})
    intervals = n_units >= MIN_INTERVAL_UNITS
    err = rerr = None
    if intervals:
        err = np.array([[r["value"] - r["ci_low"], r["ci_high"] - r["value"]] for r in rows]).T
        rerr = np.array([[r["random"] - r["random_ci_low"], r["random_ci_high"] - r["random"]] for r in rows]).T
    ax.barh(y, v, xerr=err, capsize=3, color="tab:blue", height=0.7,
            label="top word determines the slot" + (" (95% CI)" if intervals else ""))  # fmt: skip
    ax.errorbar([_num(r["random"]) for r in rows], y, xerr=rerr, fmt="|", color="tab:red", ms=14, mew=2,
                capsize=3 if intervals else 0, label="random ranking (expected)")  # fmt: skip
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("fraction of utterances whose top word determines the slot (higher is better)")
    ax.set_ylabel("head \u00b7 method \u00b7 input")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    n_txt = f"n = {'/'.join(map(str, n_utts))} utterances, {n_units} sentences"
    if not intervals:
        n_txt += f"; no intervals (fewer than {MIN_INTERVAL_UNITS} sentences)"
    ax.set_title(F.figure_title(f"Feature attribution: plausibility of the top word\n({n_txt})", context), fontsize=9)
    fig.tight_layout()
    return F.save_figure(fig, out_png)


# ------------------------------------------------------------------------------------------ context mixing


def plot_mixing_heatmaps(h: Mapping, out_png: str | os.PathLike, cmap: str = "Blues", context: str = "") -> Path:
    """The context-mixing measures of one layer side by side (receiver word rows x source word columns), one colour
    scale for all of them (0 .. the largest value), one colour bar naming the quantity; values written in the
    cells of small matrices (up to 64 cells).

    ``h``: ``mats`` (measure -> (n, k)), ``rows``, ``cols``, ``component``, ``layer``, ``utterance``."""
    import matplotlib
    import numpy as np

    mats = h["mats"]
    vmax = max([float(np.nanmax(m)) for m in mats.values() if np.isfinite(m).any()] + [1e-12])
    n, k = next(iter(mats.values())).shape
    cell = 0.32 if max(n, k) <= 12 else 0.2
    w_panel, h_panel = min(7.0, 1.2 + cell * k), min(7.0, 1.0 + cell * n)
    fig = F.new_figure(width=w_panel * len(mats) + 1.6, height=h_panel + 1.4)
    cm = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    im = None
    small = max(6, min(9, int(200 / max(n, k, 1))))
    for a, (measure, m) in enumerate(mats.items()):
        ax = fig.add_subplot(1, len(mats), a + 1)
        im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap=cm, vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_xticks(range(k), [str(c) for c in h["cols"]], rotation=90, fontsize=small)
        ax.set_yticks(range(n), [str(r) for r in h["rows"]] if a == 0 else [], fontsize=small)
        ax.set_title(F.readable(measure), fontsize=9)
        ax.set_xlabel("source word (contributing)", fontsize=8)
        if a == 0:
            ax.set_ylabel("receiver word", fontsize=8)
        if n * k <= 64:
            for r in range(n):
                for c in range(k):
                    if np.isfinite(m[r, c]):
                        ax.text(c, r, f"{m[r, c]:.2f}", ha="center", va="center", fontsize=6,
                                color=F.text_colour(im.cmap(im.norm(m[r, c]))))  # fmt: skip
    fig.subplots_adjust(left=0.08, right=0.88, bottom=0.3, top=0.8, wspace=0.08)
    fig.colorbar(im, cax=fig.add_axes((0.9, 0.3, 0.012, 0.5)), label="share of the receiver's mixing\n(row-normalised)")
    fig.suptitle(F.figure_title(f"Context mixing: {h['component']} layer {h['layer']}, utterance {h['utterance']}",
                                context), fontsize=9)  # fmt: skip
    return F.save_figure(fig, out_png)


def plot_cue_contribution(rows: Sequence[Mapping], out_png: str | os.PathLike, component: str, context: str = "",
                          layer_note: str = "") -> Path:  # fmt: skip
    """S[target <- cue] and S[target <- control] over layers, one panel per measure, with their percentile
    bootstrap intervals as bands (drawn when they rest on at least :data:`MIN_INTERVAL_UNITS` units)."""
    import numpy as np

    measures = sorted({r["metric"] for r in rows})
    fig = F.new_figure(width=4.4 * len(measures) + 1.8, height=3.9)
    for a, measure in enumerate(measures):
        ax = fig.add_subplot(1, len(measures), a + 1)
        for i, (kind, ls, marker) in enumerate((("cue", "-", "o"), ("control", "--", "s"))):
            sub = sorted((r for r in rows if r["metric"] == measure and r["kind"] == kind), key=lambda r: r["layer"])
            if not sub:
                continue
            few = any(int(_num(r.get("n_units", MIN_INTERVAL_UNITS))) < MIN_INTERVAL_UNITS for r in sub)
            F.draw_layer_series(ax, [r["layer"] for r in sub], [_num(r["value"]) for r in sub],
                                label=f"target \u2190 {kind}", colour=f"C{i}", ls=ls, marker=marker,
                                low=None if few else np.array([_num(r.get("ci_low")) for r in sub]),
                                high=None if few else np.array([_num(r.get("ci_high")) for r in sub]))  # fmt: skip
        ax.set_title(F.readable(measure), fontsize=9)
        ax.set_xlabel(f"layer{layer_note}")
        ax.set_ylabel("S[target \u2190 source] (share of mixing)")
        ax.set_xticks(sorted({r["layer"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(F.figure_title(f"Context mixing: cue contribution, {component} (bands: 95% bootstrap)", context),
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return F.save_figure(fig, out_png)


# ------------------------------------------------------------------------------------------ patching


def plot_top_heads(table: Sequence[Mapping], out_png: str | os.PathLike, metric: str, title: str) -> Path:
    """Horizontal bars: each head's mean ``metric`` with its interval (the top heads table, best first)."""
    import numpy as np

    table = list(table)
    fig = F.new_figure(width=6.8, height=1.5 + 0.32 * len(table))
    ax = fig.add_subplot()
    y = np.arange(len(table))[::-1]
    v = np.array([_num(t["value"]) for t in table], dtype=float)
    lo = np.array([_num(t.get("ci_low")) for t in table], dtype=float)
    hi = np.array([_num(t.get("ci_high")) for t in table], dtype=float)
    err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
    ax.barh(y, v, xerr=err, color="tab:blue", alpha=0.8, capsize=3)
    ax.set_yticks(y, [f"{t['component']} L{t['layer']} h{t['head']}" for t in table], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{F.readable(metric)} (mean over items, 95% bootstrap interval)")
    ax.set_ylabel("head (component, layer, head)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return F.save_figure(fig, out_png)


# ------------------------------------------------------------------------------------------ faithfulness


def plot_deletion_insertion(c: Mapping, out_png: str | os.PathLike, title: str, alpha: float = 0.05) -> Path:
    """Deletion (left) and insertion (right) curves: the target logit change as the top-k words are replaced /
    kept, one line per method, against random rankings (their mean dashed and a ``1 - alpha`` band).

    ``c``: ``x`` (fractions of words), ``methods`` (method -> (deletion, insertion)), ``random`` ((R, G), (R, G))."""
    import numpy as np

    fig = F.new_figure(11.0, 4.2)
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    x = np.asarray(c["x"])
    for ax, j, name, better in ((axes[0], 0, "deletion (top-k words replaced)", "lower is better"),
                                (axes[1], 1, "insertion (only top-k words kept)", "higher is better")):  # fmt: skip
        rnd = np.asarray(c["random"][j])  # (R, G)
        if len(rnd):
            lo, hi = np.quantile(rnd, [alpha / 2, 1 - alpha / 2], axis=0)
            ax.fill_between(x, lo, hi, color="0.85", label=f"random rankings ({int(100 * (1 - alpha))}% band)")
            ax.plot(x, rnd.mean(0), color="0.4", ls="--", lw=1, label="random rankings (mean)")
        for i, (m, ys) in enumerate(c["methods"].items()):
            ax.plot(x, ys[j], color=f"C{i % 10}", lw=1.6, label=m)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("fraction of words (ranked by attribution)")
        ax.set_ylabel(f"target logit \u2212 full-input logit ({better})")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return F.save_figure(fig, out_png)


def plot_faithfulness_bars(rows: Sequence[Mapping], out_png: str | os.PathLike, title: str,
                           reported: Sequence[tuple[str, str]]) -> Path:  # fmt: skip
    """One panel per reported (measure, variant): a bar per method and input with its 95% interval, the random
    rankings' mean as a red tick. Rows pooled over heads (``head == "all"``)."""
    import numpy as np

    sel = [r for r in rows if r.get("head") == "all"]
    methods = list(dict.fromkeys(r["method"] for r in sel))
    inputs = list(dict.fromkeys(r["input"] for r in sel))
    n = len(reported)
    cols = 2 if n > 1 else 1
    rws = (n + cols - 1) // cols
    fig = F.new_figure(11.0, 3.5 * rws + 0.6)
    axes = [fig.add_subplot(rws, cols, i + 1) for i in range(n)]
    for ax, (measure, variant) in zip(axes, reported):
        w = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            xs, vals, err, rnd = [], [], [], []
            for j, inp in enumerate(inputs):
                r = next((r for r in sel if r["method"] == m and r["input"] == inp and r["metric"] == measure
                          and r["variant"] == variant), None)  # fmt: skip
                if r is None or not np.isfinite(_num(r["value"])):
                    continue
                xs.append(j + (i - (len(methods) - 1) / 2) * w)
                vals.append(r["value"])
                err.append([r["value"] - r["ci_low"], r["ci_high"] - r["value"]])
                rnd.append(r.get("random_mean", np.nan))
            if xs:
                ax.bar(xs, vals, w, yerr=np.array(err).T, capsize=2, color=f"C{i % 10}", label=m)
                ax.scatter(xs, rnd, marker="_", s=250, linewidths=2.5, color="red", zorder=3,
                           label="random rankings (mean)" if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(inputs)), inputs)
        ax.set_xlabel("input representation")
        ax.set_ylabel(F.readable(measure))
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{F.readable(measure)} ({variant})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    if axes:
        axes[min(1, len(axes) - 1)].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{title}\n(heads pooled; bars: 95% CI over utterances; red ticks: random rankings)", fontsize=10)
    fig.tight_layout()
    return F.save_figure(fig, out_png)


# ------------------------------------------------------------------------------------------ SAEs, classifiers


def plot_activation_frequency(freq: Any, out_png: str | os.PathLike, layer: str, context: str = "") -> Path:
    """Histogram of the SAE latents' firing frequencies (log10; dead latents counted in the title)."""
    import numpy as np

    f = np.asarray(freq, dtype=float)
    fig = F.new_figure(5.6, 3.6)
    ax = fig.add_subplot()
    alive = f[f > 0]
    if len(alive):
        ax.hist(np.log10(alive), bins=50, color="tab:blue")
    ax.set_xlabel("log10 firing frequency (fraction of frames)")
    ax.set_ylabel("latents")
    ax.set_title(F.figure_title(f"SAE evaluation: layer {layer}, {int((f == 0).sum())} of {len(f)} latents dead",
                                context), fontsize=9)  # fmt: skip
    fig.tight_layout()
    return F.save_figure(fig, out_png)


def plot_sae_training(rows: Sequence[Mapping], out_png: str | os.PathLike, title: str) -> Path:
    """Four panels over layers: FVU, L0, dead fraction, dense fraction."""
    metrics = ["fvu", "l0", "dead_fraction", "dense_fraction"]
    fig = F.new_figure(14.0, 3.6)
    for a, m in enumerate(metrics):
        ax = fig.add_subplot(1, 4, a + 1)
        sub = [r for r in rows if r["metric"] == m]
        ax.plot(range(len(sub)), [r["value"] for r in sub], marker="o")
        ax.set_xticks(range(len(sub)), [str(r["layer_name"]) for r in sub])
        ax.set_title(F.readable(m), fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel(F.readable(m).split(" (")[0])
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return F.save_figure(fig, out_png)


def plot_head_accuracy(rows: Sequence[Mapping], out_png: str | os.PathLike, title: str) -> Path:
    """Bar chart: test accuracy per classifier head with its 95% interval, the majority class as a black tick."""
    import numpy as np

    acc = [r for r in rows if r["metric"] == "accuracy" and r["split"] == "test"]
    maj = {r["target"]: r["value"] for r in rows if r["metric"] == "accuracy_majority_baseline"}
    fig = F.new_figure(5.6, 3.8)
    ax = fig.add_subplot()
    xs = np.arange(len(acc))
    vals = np.array([r["value"] for r in acc])
    err = np.array([[r["value"] - r["ci_low"], r["ci_high"] - r["value"]] for r in acc]).T
    ax.bar(xs, vals, yerr=err, capsize=4, color="tab:blue", label="test accuracy (95% CI)")
    ax.scatter(xs, [maj.get(r["target"], np.nan) for r in acc], marker="_", s=400, color="k", label="majority class")
    ax.set_xticks(xs, [r["target"] for r in acc])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("classifier head")
    ax.set_ylabel("accuracy (higher is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return F.save_figure(fig, out_png)
