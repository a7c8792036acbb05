"""Frames for SAE training: one stream over one or several activation caches, with constant memory.

- `FrameSource`: one cache (an `Activations`), the layers read from it, and the frames kept, as
  runs of rows ``[start, stop)`` per utterance (silence left out from the corpus's phone or word tier:
  `silence_runs`). Memory: a few integers per run, never one per frame.
- `FrameStream`: several sources as one global frame space (several corpora = one stream), a held-out
  split of utterances, and the epoch order: utterances in a seeded random order pour into a
  **shuffle buffer** of ``buffer_frames`` row indices; when it is full it is permuted, its first half
  goes out as global batches and the second half stays to mix with the next utterances (as SAELens's
  mixing buffer), so a batch holds frames of many utterances, never a run of near-identical
  neighbours. Only row indices live in the buffer; the rows themselves are read per group of batches
  with ``os.preadv`` (`src.fileutil`), never through a memory map, so RSS does not grow with the corpus.
- `SAEBatches` (an IterableDataset): the batches of one epoch as ``(x (b, L, D) float32, w (b,) float64,
  n (global batch size))``. Under DDP every rank walks the same global order and takes ``batch[r::W]``
  with loss weights ``W / B`` (0 for an item repeated to give a rank a step), exactly the probes'
  `GlobalBatchSampler` convention, so DDP follows the one-process run; one process: weights ``1 / B``.
- `layer_stats`: per-layer mean and standard deviation of the training frames in one streamed pass
  (float64 sums), for ``standardize``; `sample_rows`: a seeded sample (geometric-median init).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from src.distributed import rank_and_world
from src.fileutil import pread_runs, row_runs

log = logging.getLogger(__name__)

MAX_GAP = 16


class SAEDataError(ValueError):
    """Frames for SAE training that cannot be had (names the cache, layer or option)."""


# ----------------------------------------------------------------------------- silence
def silence_runs(acts, corpus, tier: str = "phones", fallback: str | None = "words", counts: dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Runs of non-silent frames: ``(utt (R,), start (R,), stop (R,))`` in cache rows.

    A frame is silent when its time (`Activations.frame_times`) falls in an interval whose label the
    corpus's label normalisation drops as a silence (`src.datamodules.labels`, ``sil sp pau h# ...``),
    or in no interval of the tier (unannotated gaps of a word tier are pauses). An utterance without
    the tier (nor ``fallback``) keeps all its frames (counted in ``counts["utterances_without_tier"]``).
    """
    from src.datamodules.alignment import check_same_utterances, frame_labels
    from src.datamodules.labels import label_norm_of

    check_same_utterances(acts, corpus)
    norm = label_norm_of(corpus)
    counts = {} if counts is None else counts
    U, S, E = [], [], []
    for u in range(len(corpus)):
        n = int(acts.lengths[u])
        off = int(acts.offsets[u])
        tiers = corpus.annotation(u).tiers
        name = tier if tier in tiers else (fallback if fallback and fallback in tiers else None)
        if name is None:
            counts["utterances_without_tier"] = counts.get("utterances_without_tier", 0) + 1
            keep = np.ones(n, dtype=bool)
        else:
            ivs = tiers[name]
            idx, ok = frame_labels(ivs, acts.frame_times(u))
            speech = np.array(
                [lab is not None for lab in norm.apply([iv.label for iv in ivs], name, {})] + [False]
            )
            keep = ok & speech[idx]
        counts["frames_silence"] = counts.get("frames_silence", 0) + int(n - keep.sum())
        if keep.any():
            d = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
            s, e = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
            U.append(np.full(len(s), u))
            S.append(off + s)
            E.append(off + e)
    if not U:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (
        np.concatenate(U).astype(np.int64),
        np.concatenate(S).astype(np.int64),
        np.concatenate(E).astype(np.int64),
    )


def all_runs(acts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame of every utterance: one run per (non-empty) utterance."""
    lens = np.asarray(acts.lengths, dtype=np.int64)
    u = np.flatnonzero(lens > 0)
    offs = np.asarray(acts.offsets, dtype=np.int64)
    return u.astype(np.int64), offs[u], offs[u] + lens[u]


# ----------------------------------------------------------------------------- sources
class _File:
    """One layer file of a cache: path, data offset, dtype, width (rows read with preadv)."""

    def __init__(self, arr: np.ndarray, what: str) -> None:
        if getattr(arr, "filename", None) is None or getattr(arr, "offset", None) is None or arr.ndim != 2:
            raise SAEDataError(f"{what}: expected a 2-D np.memmap of a .npy layer file")
        self.path, self.offset = str(arr.filename), int(arr.offset)
        self.dtype = np.dtype(arr.dtype)
        self.rows, self.dim = int(arr.shape[0]), int(arr.shape[1])
        self.row_bytes = self.dim * self.dtype.itemsize


@dataclass
class FrameSource:
    """One cache, its layers (cache indices) and the kept frames as runs ``utt/start/stop``."""

    acts: object
    layers: list[int]
    utt: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    name: str = ""
    counts: dict = field(default_factory=dict)

    @classmethod
    def from_cache(cls, acts, layers, corpus=None, silence: str = "exclude", tier: str = "phones",
                   fallback: str | None = "words") -> FrameSource:  # fmt: skip
        """``layers``: a layer spec (`Activations.resolve_layers`: ints, names, ``all``, ranges).
        ``silence``: ``exclude`` (needs ``corpus``) or ``keep``."""
        from src.layers import LayerSpecError

        name = f"{acts.backbone} x {acts.corpus}"
        try:
            idx = acts.resolve_layers(layers)
        except (LayerSpecError, IndexError, ValueError) as e:
            raise SAEDataError(
                f"sae layers={layers!r}: cache {acts.path} ({name}) does not hold them: {e}"
            ) from e
        counts: dict = {}
        if silence == "exclude":
            if corpus is None:
                raise SAEDataError(f"sae.silence=exclude needs the corpus of cache {acts.path} (its phone/word tiers); "
                                   "pass it, or set sae.silence=keep")  # fmt: skip
            u, s, e = silence_runs(acts, corpus, tier, fallback, counts)
        elif silence == "keep":
            u, s, e = all_runs(acts)
        else:
            raise SAEDataError(f"sae.silence={silence!r}: choose exclude or keep")
        counts["frames_kept"] = int((e - s).sum())
        src = cls(acts, list(idx), u, s, e, name, counts)
        if counts["frames_kept"] == 0:
            raise SAEDataError(f"cache {acts.path} ({name}): no frame left for SAE training after silence filtering "
                               f"({counts.get('frames_silence', 0)} silent frames of {acts.total_frames}; tier "
                               f"{tier!r}); set sae.silence=keep or check the corpus's tiers")  # fmt: skip
        return src

    @property
    def layer_names(self) -> list[str]:
        return [self.acts.layer_names[k] for k in self.layers]


class FrameStream:
    """Several `FrameSource` as one stream: global rows, a held-out utterance split, epoch orders, reads.

    Args:
        sources: the caches; each must hold the same layer names, with the same width per layer.
        val_fraction: fraction of utterances (per source, seeded) held out for evaluation (0: none).
        seed: the split and every epoch's order derive from it.
        buffer_frames: size of the shuffle buffer (row indices; 8 bytes each).
    """

    def __init__(self, sources: Sequence[FrameSource], val_fraction: float = 0.1, seed: int = 0,
                 buffer_frames: int = 1 << 16) -> None:  # fmt: skip
        if not sources:
            raise SAEDataError("no activation cache given for SAE training")
        self.sources = list(sources)
        names = self.sources[0].layer_names
        for s in self.sources[1:]:
            if s.layer_names != names:
                raise SAEDataError(f"caches {self.sources[0].acts.path} and {s.acts.path} give different layers for the "
                                   f"same spec: {names} vs {s.layer_names}")  # fmt: skip
        self.layer_names = names
        self.files: list[list[_File]] = [[_File(s.acts.layer(k), f"cache {s.acts.path} layer {k}") for k in s.layers]
                                         for s in self.sources]  # fmt: skip
        self.dims = [f.dim for f in self.files[0]]
        for s, fs in zip(self.sources, self.files):
            if [f.dim for f in fs] != self.dims:
                raise SAEDataError(f"cache {s.acts.path}: layer widths {[f.dim for f in fs]} differ from "
                                   f"{self.dims} of {self.sources[0].acts.path}")  # fmt: skip
        if len(set(self.dims)) != 1:
            raise SAEDataError(
                f"layers {names} have different widths {self.dims}; train them in separate runs"
            )
        self.dim = self.dims[0]
        self.base = np.concatenate([[0], np.cumsum([f[0].rows for f in self.files])]).astype(
            np.int64
        )  # (S+1,)
        self.seed, self.buffer_frames = int(seed), max(2, int(buffer_frames))
        if not 0 <= val_fraction < 1:
            raise SAEDataError(f"sae.val_fraction={val_fraction}: must be in [0, 1)")
        # utterance units: (source, first run, end run) -- runs of one utterance are consecutive
        units = []
        for si, s in enumerate(self.sources):
            if len(s.utt) == 0:
                continue
            cut = np.flatnonzero(np.diff(s.utt)) + 1
            lo = np.concatenate([[0], cut])
            hi = np.concatenate([cut, [len(s.utt)]])
            units.append(np.stack([np.full(len(lo), si), lo, hi], axis=1))
        self.units = np.concatenate(units).astype(np.int64)  # (U, 3)
        rng = np.random.default_rng([self.seed, 7])
        n_val = int(round(val_fraction * len(self.units))) if val_fraction > 0 else 0
        if val_fraction > 0 and len(self.units) > 1:
            n_val = min(max(n_val, 1), len(self.units) - 1)
        perm = rng.permutation(len(self.units))
        self.val_units = np.sort(perm[:n_val])
        self.train_units = np.sort(perm[n_val:])
        self.train_frames = self._frames(self.train_units)
        self.val_frames = self._frames(self.val_units)
        if self.train_frames == 0:
            raise SAEDataError("no training frame left (every utterance held out or silent)")
        self._fds: dict[int, list[list[int]]] = {}

    def _unit_rows(self, u: int) -> np.ndarray:
        si, a, b = (int(v) for v in self.units[u])
        s = self.sources[si]
        return self.base[si] + np.concatenate([np.arange(x, y) for x, y in zip(s.start[a:b], s.stop[a:b])])

    def _frames(self, units: np.ndarray) -> int:
        tot = 0
        for u in units.tolist():
            si, a, b = (int(v) for v in self.units[u])
            s = self.sources[si]
            tot += int((s.stop[a:b] - s.start[a:b]).sum())
        return tot

    def unit_info(self, u: int) -> tuple[str, str]:
        """(cache path, utterance id) of a unit."""
        si, a, _ = (int(v) for v in self.units[u])
        s = self.sources[si]
        return str(s.acts.path), str(s.acts.ids[int(s.utt[a])])

    # ------------------------------------------------------------------ orders
    def rows_in_order(self, units: np.ndarray) -> Iterator[np.ndarray]:
        """Global rows of the given units, unit by unit (no shuffle)."""
        for u in units.tolist():
            yield self._unit_rows(int(u))

    def epoch_batches(self, epoch: int, batch_size: int, split: str = "train", shuffle: bool = True
                      ) -> Iterator[np.ndarray]:  # fmt: skip
        """Global batches (arrays of global rows) of one epoch: units in a seeded order through the
        shuffle buffer (``shuffle``), else in order; every frame once; all batches full but the last."""
        units = self.train_units if split == "train" else self.val_units
        if not shuffle:
            pending = np.zeros(0, np.int64)
            for rows in self.rows_in_order(units):
                pending = np.concatenate([pending, rows])
                while len(pending) >= batch_size:
                    yield pending[:batch_size]
                    pending = pending[batch_size:]
            if len(pending):
                yield pending
            return
        rng = np.random.default_rng([self.seed, 11, int(epoch)])
        order = units[rng.permutation(len(units))]
        buf = np.zeros(0, np.int64)
        parts: list[np.ndarray] = []
        have = 0
        for u in order.tolist():
            r = self._unit_rows(int(u))
            parts.append(r)
            have += len(r)
            if len(buf) + have >= self.buffer_frames:
                buf = np.concatenate([buf, *parts])
                parts, have = [], 0
                buf = buf[rng.permutation(len(buf))]
                out = (len(buf) // 2) // batch_size * batch_size
                for i in range(0, out, batch_size):
                    yield buf[i : i + batch_size]
                buf = buf[out:]
        buf = np.concatenate([buf, *parts])
        buf = buf[rng.permutation(len(buf))]
        for i in range(0, len(buf), batch_size):
            yield buf[i : i + batch_size]

    def num_batches(self, batch_size: int, split: str = "train") -> int:
        n = self.train_frames if split == "train" else self.val_frames
        return math.ceil(n / batch_size)

    # ------------------------------------------------------------------ reads
    def _fd(self, si: int, j: int) -> int:
        pid = os.getpid()
        if pid not in self._fds:
            self._fds = {pid: [[os.open(f.path, os.O_RDONLY) for f in fs] for fs in self.files]}
        return self._fds[pid][si][j]

    def __getstate__(self):
        st = dict(self.__dict__)
        st["_fds"] = {}
        return st

    def close(self) -> None:
        for per in self._fds.values():
            for fds in per:
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        self._fds = {}

    def __del__(self) -> None:
        self.close()

    def read(self, rows: np.ndarray, layers: Sequence[int] | None = None) -> Tensor:
        """Frames of global ``rows`` (any order, repeats allowed), in that order: (n, L, D) float32."""
        rows = np.asarray(rows, dtype=np.int64)
        pos = list(range(len(self.layer_names))) if layers is None else list(layers)
        out = np.empty((len(rows), len(pos), self.dim), dtype=np.float32)
        if len(rows) == 0:
            return torch.from_numpy(out)
        src = np.searchsorted(self.base, rows, side="right") - 1
        for si in np.unique(src).tolist():
            m = np.flatnonzero(src == si)
            local = rows[m] - self.base[si]
            need, inv = np.unique(local, return_inverse=True)
            starts, stops, bpos = row_runs(need, MAX_GAP)
            run = np.searchsorted(starts, need, side="right") - 1
            where = bpos[run] + (need - starts[run])
            f0 = self.files[si][0]
            buf = np.empty((int((stops - starts).sum()), self.dim), dtype=f0.dtype)
            for jj, j in enumerate(pos):
                f = self.files[si][j]
                if f.dtype != buf.dtype:
                    buf = np.empty(buf.shape, dtype=f.dtype)
                pread_runs(self._fd(si, j), f.path, f.offset, f.row_bytes, starts, stops, bpos, buf)
                out[m, jj] = buf[where[inv]]
        return torch.from_numpy(out)

    def read_in_memory(self, split: str = "train") -> Tensor:
        """Every frame of a split in unit order, (n, L, D) float32 (small data and tests only)."""
        units = self.train_units if split == "train" else self.val_units
        rows = [r for r in self.rows_in_order(units)]
        return self.read(np.concatenate(rows) if rows else np.zeros(0, np.int64))

    # ------------------------------------------------------------------ statistics
    def layer_stats(self, chunk: int = 8192, reader=None) -> tuple[Tensor, Tensor]:
        """Mean and std per layer of every training frame, one streamed pass (float64): (L, D) each.
        ``reader``: rows -> frames (default `read`; an `InMemoryFrames` in tests)."""
        reader = self.read if reader is None else reader
        L = len(self.layer_names)
        s1 = torch.zeros(L, self.dim, dtype=torch.float64)
        s2 = torch.zeros(L, self.dim, dtype=torch.float64)
        n = 0
        pending = np.zeros(0, np.int64)

        def add(rows):
            nonlocal s1, s2, n
            x = reader(rows).double()  # (c, L, D)
            s1 += x.sum(0)
            s2 += (x * x).sum(0)
            n += len(rows)

        from src.progress import progress

        units = progress(self.rows_in_order(self.train_units), total=len(self.train_units),
                         desc=f"SAE standardisation statistics ({self.train_frames} frames)", unit="unit")  # fmt: skip
        for rows in units:
            pending = np.concatenate([pending, rows])
            if len(pending) >= chunk:
                add(pending)
                pending = np.zeros(0, np.int64)
        if len(pending):
            add(pending)
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0)
        std = var.sqrt()
        std = torch.where(
            std > 1e-6 * std.max().clamp_min(1e-30), std, torch.ones_like(std)
        )  # constant dims: 1
        return mean.float(), std.float()

    def sample_rows(self, n: int, seed: int = 0) -> np.ndarray:
        """A seeded sample of up to ``n`` training rows (sorted), without listing every row."""
        sizes = np.array([self._frames(np.array([u])) for u in self.train_units.tolist()], dtype=np.int64)
        total = int(sizes.sum())
        k = min(int(n), total)
        pick = np.sort(np.random.default_rng([self.seed, 13, seed]).choice(total, size=k, replace=False))
        cum = np.concatenate([[0], np.cumsum(sizes)])
        out, i = [], 0
        for ui, u in enumerate(self.train_units.tolist()):
            j = int(np.searchsorted(pick, cum[ui + 1], side="left"))
            if j > i:
                rows = self._unit_rows(int(u))
                out.append(rows[pick[i:j] - cum[ui]])
            i = j
        return np.concatenate(out) if out else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------- batches for Lightning
def rank_share(batch: np.ndarray, rank: int, world: int, pad: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows of a global batch and their loss weights (``W / B``; one process ``1 / B``);
    a rank left without an item repeats one with weight 0 (every rank takes the same steps)."""
    B = len(batch)
    mine = batch[rank::world]
    w = np.full(len(mine), world / B, dtype=np.float64)
    if len(mine) == 0 and pad:
        mine, w = batch[rank % B : rank % B + 1], np.zeros(1)
    return mine, w


class SAEBatches(torch.utils.data.IterableDataset):
    """The training (or validation) batches of one epoch for this rank: ``(x (b, L, D), w (b,), B)``.

    ``epoch_fn()`` gives the epoch (the trainer's), ``skip`` batches of it are passed over without
    reading (a resumed mid-epoch checkpoint); reads are grouped over ``read_batches`` batches.
    ``reader`` (rows -> (n, L, D)) replaces the cache reads (`InMemoryFrames`: tests and the bench).
    """

    def __init__(self, stream: FrameStream, batch_size: int, split: str = "train", shuffle: bool = True,
                 read_batches: int = 8, reader=None) -> None:  # fmt: skip
        super().__init__()
        if batch_size < 1:
            raise SAEDataError(f"sae.batch_size={batch_size}: must be >= 1")
        self.stream, self.batch_size, self.split, self.shuffle = stream, int(batch_size), split, bool(shuffle)
        self.read_batches = max(1, int(read_batches))
        self.reader = reader if reader is not None else stream.read
        self.epoch_fn = lambda: 0
        self.skip = 0

    def __len__(self) -> int:
        return self.stream.num_batches(self.batch_size, self.split)

    def __iter__(self):
        rank, world = rank_and_world()
        if world > self.batch_size:
            raise SAEDataError(f"sae.batch_size {self.batch_size} is smaller than the {world} DDP processes")
        skip, self.skip = self.skip, 0
        group: list[tuple[np.ndarray, np.ndarray, int]] = []
        for i, b in enumerate(
            self.stream.epoch_batches(self.epoch_fn(), self.batch_size, self.split, self.shuffle)
        ):
            if i < skip:
                continue
            mine, w = rank_share(b, rank, world, pad=True)
            group.append((mine, w, len(b)))
            if len(group) >= self.read_batches:
                yield from self._emit(group)
                group = []
        if group:
            yield from self._emit(group)

    def _emit(self, group):
        rows = np.concatenate([g[0] for g in group])
        x = self.reader(rows)  # (sum b, L, D)
        a = 0
        for mine, w, B in group:
            yield x[a : a + len(mine)], torch.from_numpy(w), B
            a += len(mine)


class InMemoryFrames:
    """``rows -> (n, L, D)`` from a tensor holding every frame of a stream (tests, bench): the same
    batches as `FrameStream.read`, from memory. ``x``: ``(total rows of the global space, L, D)`` or the
    rows ``index`` maps into."""

    def __init__(self, x: Tensor, index: np.ndarray | None = None) -> None:
        self.x = x
        self.lookup = None
        if index is not None:
            self.lookup = {int(r): i for i, r in enumerate(index.tolist())}

    def __call__(self, rows: np.ndarray) -> Tensor:
        if self.lookup is None:
            return self.x[torch.from_numpy(np.asarray(rows, dtype=np.int64))]
        return self.x[torch.tensor([self.lookup[int(r)] for r in rows], dtype=torch.long)]


def collate(batch):
    return batch
