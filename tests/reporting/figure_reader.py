"""Read a matplotlib Figure back as plain data (titles, labels, lines, horizontal lines, bands, colour bars),
and a fixture that records every figure saved through ``src.reporting.figures.save_figure``."""

from __future__ import annotations

import numpy as np
import pytest

from src.reporting import figures as F


def read_axes(ax) -> dict:
    leg = ax.get_legend()
    lines, hlines = {}, []
    for ln in ax.get_lines():
        x, y = np.asarray(ln.get_xdata(), dtype=float), np.asarray(ln.get_ydata(), dtype=float)
        if len(x) == 2 and len(y) == 2 and y[0] == y[1] and (x[0], x[1]) == (0.0, 1.0) and ln.get_transform() != ax.transData:
            hlines.append({"y": float(y[0]), "label": ln.get_label(), "ls": ln.get_linestyle()})
            continue
        lines[ln.get_label()] = {"x": x, "y": y, "ls": ln.get_linestyle(), "marker": ln.get_marker(),
                                 "colour": ln.get_color()}  # fmt: skip
    bands = []
    for c in ax.collections:
        if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection"):
            paths = c.get_paths()
            ys = np.concatenate([p.vertices[:, 1] for p in paths]) if paths else np.zeros(0)
            bands.append({"label": c.get_label(), "ymin": float(ys.min()) if ys.size else np.nan,
                          "ymax": float(ys.max()) if ys.size else np.nan})  # fmt: skip
    scatters = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    return {
        "title": ax.get_title(),
        "xlabel": ax.get_xlabel(),
        "ylabel": ax.get_ylabel(),
        "legend": [t.get_text() for t in leg.get_texts()] if leg else [],
        "lines": lines,
        "hlines": hlines,
        "bands": bands,
        "scatters": scatters,
        "errorbars": sum(type(c).__name__ == "LineCollection" for c in ax.collections),
        "ylim": ax.get_ylim(),
        "xticks": [t.get_text() for t in ax.get_xticklabels()],
        "xtick_rotation": [t.get_rotation() for t in ax.get_xticklabels()],
        "yticks": [t.get_text() for t in ax.get_yticklabels()],
        "texts": [t.get_text() for t in ax.texts],
        "images": len(ax.images),
    }


def read_figure(fig) -> dict:
    sup = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    return {"suptitle": sup, "axes": [read_axes(ax) for ax in fig.axes], "fig": fig}


def tick_overlaps(fig, ax) -> int:
    """How many pairs of neighbouring tick labels (x, then y) overlap when drawn."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    n = 0
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(r) for t in labels if t.get_text()]
        n += sum(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    return n


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved through ``figures.save_figure``, read back just before it is saved."""
    records: list[dict] = []
    orig = F.save_figure

    def spy(fig, out_png):
        rec = read_figure(fig)
        rec["overlaps"] = [tick_overlaps(fig, ax) for ax in fig.axes]
        r = fig.canvas.get_renderer()
        for a, ax in zip(rec["axes"], fig.axes):
            leg = ax.get_legend()
            a["legend_outside"] = leg is not None and leg.get_window_extent(r).x0 >= ax.get_window_extent(r).x1 - 1
        rec["path"] = str(out_png)
        records.append(rec)
        return orig(fig, out_png)

    monkeypatch.setattr(F, "save_figure", spy)
    return records
