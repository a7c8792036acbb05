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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class AnalysisError(ValueError):
    """Bad analysis input (too few items, mismatched spaces, ...); the message says what is needed."""


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


@dataclass(frozen=True)
class AnalysisResult:
    """Rows in long format (``layer, measure, value`` plus context columns), matrices and plots.

    ``rows``: dicts with at least ``layer``, ``measure``, ``value``.
    ``matrices``: name -> Matrix, each saved as ``<name>.png`` (and ``<name>.npy``).
    ``scatters``: name -> (points (n, 2), labels) saved as ``<name>.png``.
    ``line_plots``: measures to draw over layers (one PNG each; default: all measures).
    """

    analysis: str
    rows: list[dict]
    matrices: dict[str, Matrix] = field(default_factory=dict)
    scatters: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    line_plots: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def save(self, out_dir: str | Path, context: dict | None = None) -> list[Path]:
        """results.csv / results.json (context columns prepended to every row) and figures."""
        from src.reporting.results import write_results

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx = dict(context or {})
        rows = [{**ctx, "analysis": self.analysis, **r} for r in self.rows]
        first = [*ctx, "analysis", "layer", "layer_b", "reference", "measure", "value"]
        write_results(rows, out_dir, columns_first=first, meta={**self.meta, **ctx})
        for name, m in self.matrices.items():
            np.save(out_dir / f"{name}.npy", m.values)
        return self.figures(out_dir, title_prefix=ctx.get("backbone", ""))

    def figures(self, out_dir: str | Path, title_prefix: str = "") -> list[Path]:
        import pandas as pd

        from src.reporting.figures import plot_matrix, plot_over_layers, plot_scatter_2d

        out_dir = Path(out_dir)
        pngs = []
        for name, m in self.matrices.items():
            pngs.append(plot_matrix(m.values, out_dir / f"{name}.png", m.row_labels, m.col_labels,
                                    title=f"{title_prefix} {m.title or name}".strip(), vmin=m.vmin, vmax=m.vmax,
                                    xlabel=m.xlabel, ylabel=m.ylabel))  # fmt: skip
        for name, (pts, labels) in self.scatters.items():
            pngs.append(plot_scatter_2d(pts, labels, out_dir / f"{name}.png", title=f"{title_prefix} {name}".strip()))
        df = pd.DataFrame(self.rows)
        if len(df) and "layer" in df and "measure" in df:
            df = df[pd.to_numeric(df["layer"], errors="coerce").notna()].copy()
            df["layer"] = df["layer"].astype(int)
            hue = "reference" if "reference" in df.columns else None
            for measure in self.line_plots if self.line_plots is not None else sorted(set(df["measure"])):
                sub = df[df["measure"] == measure].rename(columns={"measure": "metric"})
                if sub["layer"].nunique() < 2:
                    continue
                sub = sub.assign(target=sub[hue].fillna("-").astype(str) if hue else measure, split="all")
                pngs.append(plot_over_layers(sub, out_dir / f"{measure}_over_layers.png", measure, hue="target",
                                             split="all", title=f"{title_prefix} {self.analysis}: {measure}".strip()))  # fmt: skip
        return pngs


@dataclass
class AnalysisContext:
    """The analysed cache and corpus, plus lazily built reference caches."""

    acts: object
    corpus: object
    reference_loader: Callable[[str], object] | None = None
    seed: int = 0
    _refs: dict = field(default_factory=dict)

    def reference_acts(self, name: str):
        if name not in self._refs:
            if self.reference_loader is None:
                raise AnalysisError(f"reference {name!r} needs a reference loader (run through analyze.py)")
            self._refs[name] = self.reference_loader(name)
        return self._refs[name]


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
