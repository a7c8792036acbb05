"""Phone ABX discriminability per layer (within and across speakers).

Every segment of the tier (default ``phones``; silences left out) is an item: its frames
``[lo, hi)`` of the cache (alignment conventions), its label, its speaker (from the
corpus) and, with ``by_context``, its context = the labels of its neighbouring segments
(``prev_next``, ``#`` at the utterance edges), as in the ZeroSpeech triphone ABX. The
error rate (0 = perfectly discriminable, 0.5 = chance) is computed and collapsed by
:mod:`src.functional.abx` (cells: label A, label B, context, speaker(s); mean over
contexts, then speakers, then label pairs):

- ``within``: A, B and X from one speaker;
- ``across``: A and B from one speaker, X from another (needs >= 2 speakers).

``distance``: ``dtw`` over frames (``frame_distance``: ``angular`` (default, ZeroSpeech)
| ``cosine`` | ``euclidean``) or ``mean_pooled`` (the frame distance between item means).

Cost is kept down by a seeded subsample of ``max_items`` items (drawn from the items that
can belong to a cell in the chosen mode(s), so that the sample is not wasted on items
without a partner) and at most ``max_triplets_per_cell`` triplets per cell.

``one_speaker_per_text`` (default true): when several speakers read the same text (the
synthetic corpus), each text is kept for one of its speakers only (round-robin over the
sorted texts). Otherwise an across-speaker X is often the same word at the same time in
the same sentence as A, and models with absolute position information (Whisper's
sinusoidal embeddings, even with random weights) score better across than within.

Rows:
``abx_within`` / ``abx_across`` per layer; ``meta`` holds the numbers of items, cells
and triplets.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from src.analyses.base import (
    AnalysisContext,
    AnalysisError,
    AnalysisResult,
    analysis_layers,
    check_finite,
    phone_tokens,
    read_rows,
    require,
    subsample,
    take,
)
from src.progress import progress

log = logging.getLogger(__name__)

MODES = ("within", "across", "both")


class ABXResult(AnalysisResult):
    """ABX rows; one figure of the within- and across-speaker error over layers with chance at 0.5
    (:func:`src.reporting.figures_analyses.plot_abx`)."""

    def figures(self, out_dir, title_prefix: str = "") -> list:
        from pathlib import Path

        from src.reporting.figures_analyses import plot_abx

        pngs = self.matrix_figures(out_dir, title_prefix)
        if len({r["layer"] for r in self.rows}) > 1:
            pngs.append(plot_abx(self.rows, Path(out_dir) / "abx_over_layers.png", title_prefix,
                                 notes=self.meta.get("notes")))  # fmt: skip
        return pngs


def useful_items(labels: np.ndarray, contexts: np.ndarray, speakers: np.ndarray, mode: str) -> np.ndarray:
    """Mask of the items that belong to at least one ABX cell of ``mode`` (as A, B or X).

    A group ``(context, speaker, label)`` can give the A items of a cell when its
    ``(context, speaker)`` holds another label (a B) and, within, it has a second item (an
    X other than A) or, across, the same ``(context, label)`` occurs with another speaker.
    """
    groups = Counter(zip(contexts, speakers, labels))  # (c, s, l) -> items
    labels_cs: dict[tuple, set] = defaultdict(set)
    speakers_cl: dict[tuple, set] = defaultdict(set)
    for c, s, lab in groups:
        labels_cs[(c, s)].add(lab)
        speakers_cl[(c, lab)].add(s)

    def can_be_a(c, s, lab) -> bool:
        if len(labels_cs[(c, s)]) < 2:
            return False
        return groups[(c, s, lab)] >= 2 if mode == "within" else len(speakers_cl[(c, lab)] - {s}) > 0

    valid_a = {key: can_be_a(*key) for key in groups}
    a_groups_cs = Counter((c, s) for (c, s, _), v in valid_a.items() if v)  # A groups per (c, s)
    a_speakers_cl = Counter((c, lab) for (c, _, lab), v in valid_a.items() if v)  # A speakers per (c, l)
    ok = np.zeros(len(labels), dtype=bool)
    for i, key in enumerate(zip(contexts, speakers, labels)):
        c, s, lab = key
        as_b = a_groups_cs[(c, s)] - valid_a[key] > 0  # another label of (c, s) gives A items
        as_x = mode == "across" and a_speakers_cl[(c, lab)] - valid_a[key] > 0  # A items of another speaker
        ok[i] = valid_a[key] or as_b or as_x
    return ok


def _one_speaker_per_text(corpus, utt: np.ndarray) -> np.ndarray:
    """Mask of items whose utterance's text is assigned to its speaker (round-robin over sorted texts)."""
    by_text: dict[str, set] = defaultdict(set)
    info = {}
    for u in np.unique(utt):
        text = corpus.annotation(int(u)).text or f"<utterance {int(u)}>"
        info[int(u)] = (text, corpus.speaker(int(u)))
        by_text[text].add(info[int(u)][1])
    owner = {t: sorted(spk)[j % len(spk)] for j, (t, spk) in enumerate(sorted(by_text.items()))}
    keep_utt = {u: owner[t] == s for u, (t, s) in info.items()}
    return np.array([keep_utt[int(u)] for u in utt], dtype=bool)


class ABX:
    """Phone ABX error rate per layer.

    Args:
        layers: a layer spec (:func:`src.layers.resolve_layers`: ints, negatives, ``first``/``middle``/``last``,
            ranges, ``final_norm``); ``None``: every residual state.
        tier: the tier whose segments are the items.
        mode: ``within`` | ``across`` | ``both``.
        distance: ``dtw`` | ``mean_pooled``.
        frame_distance: ``angular`` | ``cosine`` | ``euclidean``.
        by_context: cells also match the neighbouring labels (triphone ABX).
        max_items: seeded subsample of items (``None``: all).
        max_triplets_per_cell: seeded subsample of each cell's triplets (``None``: all).
        seed: subsampling (``None``: the run's seed).
        one_speaker_per_text: keep each text for one of the speakers who read it (see the module docstring).
    """

    def __init__(
        self,
        layers: Sequence[int | str] | None = None,
        tier: str = "phones",
        mode: str = "both",
        distance: str = "dtw",
        frame_distance: str = "angular",
        by_context: bool = True,
        max_items: int | None = 3000,
        max_triplets_per_cell: int | None = 50,
        seed: int | None = None,
        one_speaker_per_text: bool = True,
    ) -> None:
        if mode not in MODES:
            raise AnalysisError(f"abx.mode must be one of {MODES}, got {mode!r}")
        if distance not in ("dtw", "mean_pooled"):
            raise AnalysisError(f"abx.distance must be 'dtw' or 'mean_pooled', got {distance!r}")
        if frame_distance not in ("angular", "cosine", "euclidean"):
            raise AnalysisError(
                f"abx.frame_distance must be angular | cosine | euclidean, got {frame_distance!r}"
            )
        self.layers, self.tier, self.mode, self.distance = layers, tier, mode, distance
        self.frame_distance, self.by_context = frame_distance, by_context
        self.max_items, self.max_triplets_per_cell, self.seed = max_items, max_triplets_per_cell, seed
        self.one_speaker_per_text = one_speaker_per_text

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        from src.functional.abx import abx_cells, collapse_cells

        acts, corpus = ctx.acts, ctx.corpus
        seed = ctx.seed if self.seed is None else self.seed
        layers = analysis_layers(self.layers, acts, "analysis.layers")
        items = phone_tokens(acts, corpus, self.tier, pooling="mean")
        by_utt = {int(u): corpus.speaker(int(u)) for u in np.unique(items.utt)}
        speakers = np.array([by_utt[int(u)] for u in items.utt])
        contexts = items.context if self.by_context else np.full(len(items.labels), "", dtype=object)
        n_speakers = len(set(speakers.tolist()))
        modes = ["within", "across"] if self.mode == "both" else [self.mode]
        notes = {}
        if "across" in modes and n_speakers < 2:
            if self.mode == "across":
                raise AnalysisError(
                    f"ABX across speakers needs at least 2 speakers; corpus {corpus.name!r} has {n_speakers}"
                )
            modes.remove("across")
            notes["across"] = f"skipped: the corpus has {n_speakers} speaker"
            log.warning("ABX across speakers skipped: only %d speaker", n_speakers)
        keep_text = np.ones(len(items.labels), dtype=bool)
        if self.one_speaker_per_text:
            keep_text = _one_speaker_per_text(corpus, items.utt)
        ok = np.zeros(len(items.labels), dtype=bool)
        for m in list(modes):
            useful = useful_items(items.labels, contexts, speakers, m) & keep_text
            if not useful.any():
                why = (
                    f"no item has a partner for ABX {m} ({'same context, ' if self.by_context else ''}another label"
                    + (
                        ", a second token of its label and speaker)"
                        if m == "within"
                        else ", another speaker)"
                    )
                )
                if self.mode != "both" or len(modes) == 1:
                    hint = "; try by_context: false" if self.by_context else ""
                    raise AnalysisError(f"{why}: a cell needs at least 3 items{hint}")
                modes.remove(m)
                notes[m] = f"skipped: {why}"
                log.warning("ABX %s skipped: %s", m, why)
            ok |= useful
        counts = {**items.counts, "items_without_partner": int((~ok & keep_text).sum()),
                  "items_of_texts_read_by_another_speaker": int((~keep_text).sum())}  # fmt: skip
        idx = np.flatnonzero(ok)
        idx = idx[subsample(len(idx), self.max_items, seed)]
        require(
            len(idx),
            3,
            f"ABX ({'triphone contexts' if self.by_context else 'no context'}): items with a partner",
        )
        sel = take(items, idx)
        labels, spk, ctxs = sel.labels, speakers[idx], contexts[idx]
        lens = sel.hi - sel.lo
        frame_rows = np.concatenate([np.arange(a, b) for a, b in zip(sel.lo, sel.hi)])  # (sum lens,)
        splits = np.cumsum(lens)[:-1]

        rows, cell_counts = [], {}
        for layer in progress(layers, desc="ABX layers", unit="layer"):
            frames = check_finite(read_rows(acts.layer(layer), frame_rows, np.float64), f"layer {layer}")  # (sum lens, D)
            seqs = np.split(frames, splits)  # per item (n_i, D)
            for m in modes:
                try:
                    cells = abx_cells(
                        seqs, labels, ctxs if self.by_context else None, spk, mode=m, distance=self.distance,
                        frame_distance=self.frame_distance, max_triplets_per_cell=self.max_triplets_per_cell, seed=seed,
                    )  # fmt: skip
                except ValueError as e:
                    hint = " (try by_context: false or a larger max_items)" if self.by_context else ""
                    raise AnalysisError(f"ABX {m} at layer {layer}: {e}{hint}") from None
                err = collapse_cells(cells, has_context=self.by_context)
                rows.append({"layer": layer, "metric": f"abx_{m}", "value": err})
                cell_counts[m] = {"cells": len(cells), "triplets": int(sum(c.n_triplets for c in cells))}
        meta = {
            "counts": counts, "num_items": len(idx), "num_labels": len(set(labels.tolist())),
            "num_speakers": n_speakers, "cells": cell_counts, "distance": self.distance,
            "frame_distance": self.frame_distance, "by_context": self.by_context, "layers": layers, "notes": notes,
        }  # fmt: skip
        return ABXResult("abx", rows, line_plots=[f"abx_{m}" for m in modes], meta=meta)
