"""Probe features read from the activation cache in row chunks, with memory bounded by the chunk.

`CacheFeatures` stands for the ``(N, L, D)`` float32 features of one split (items x probed
layers x hidden size) without holding them: an item is a frame row of the cache
(``ProbeData.rows``) or a segment of rows ``[lo, hi)`` mean-pooled (``ProbeData.lo/hi``).
Features are read when asked for, by ``chunks`` (consecutive items) or ``take`` (any items).

Reading convention (why not ``np.memmap``): pages of a memory map that a pass touches stay
resident and count in the process RSS, so a pass over a 15 GB cache makes RSS grow with the
corpus. Here rows are read with ``os.preadv`` from the layer's ``.npy`` file (the data
offset after the header is the memmap's ``offset``) into a reusable buffer: the kernel's page
cache holds the file, the process holds one chunk. Sorted rows are read as runs of nearby
rows (gaps of at most ``max_gap`` rows are read through, so reads stay sequential).

Values: a frame feature is the cache value as float32 (exact for float16 and float32 caches);
a segment feature is the float64 mean of its frames rounded to the cache dtype, then to
float32, which is exactly ``ProbeData.features(layer, cache dtype)`` (``alignment.pool``),
the in-memory path of the pipeline, so streaming and in-memory runs see the same numbers.

The Lightning side lives here too: `ProbeDataset` (a map-style Dataset with batched
``__getitems__``) and `GlobalBatchSampler` (one global batch order for every rank; rank r
of W takes ``batch[r::W]``), see their docstrings.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from src.distributed import rank_and_world
from src.fileutil import pread_runs, row_runs

__all__ = ["CacheFeatures", "GlobalBatchSampler", "ProbeDataset", "features_nbytes", "rank_and_world"]

DEFAULT_CHUNK_BYTES = 64 << 20  # float32 output of one chunk: 64 MB
MAX_GAP = 16  # rows: a gap this small between needed rows is read through rather than seeking


def features_nbytes(n_items: int, n_layers: int, dim: int) -> int:
    """Bytes of ``(n_items, n_layers, dim)`` float32 features (what ``stream: auto`` compares with the budget)."""
    return int(n_items) * int(n_layers) * int(dim) * 4


class _LayerFile:
    """One cache layer file: path, byte offset of row 0, row dtype and width (no memmap pages touched)."""

    def __init__(self, arr: np.ndarray, what: str) -> None:
        filename = getattr(arr, "filename", None)
        offset = getattr(arr, "offset", None)
        if filename is None or offset is None or arr.ndim != 2 or not arr.flags.c_contiguous:
            raise TypeError(f"{what}: expected a C-ordered 2-D np.memmap of a .npy layer file, got {type(arr).__name__} "
                            f"{getattr(arr, 'shape', None)}")  # fmt: skip
        self.path = str(filename)
        self.offset = int(offset)
        self.dtype = np.dtype(arr.dtype)
        self.rows, self.dim = int(arr.shape[0]), int(arr.shape[1])
        self.row_bytes = self.dim * self.dtype.itemsize


class CacheFeatures:
    """Features ``(N, L, D)`` of N items at L cache layers, read from the cache in chunks.

    Args:
        acts: an `Activations` (``acts.layer(k)`` must be the np.memmap of a ``.npy`` file).
        layers: the L cache layer indices (columns of the features, in this order).
        rows: ``(N,)`` frame rows, or ``lo``/``hi``: ``(N,)`` half-open segment row ranges (mean-pooled).
        chunk_bytes: default size of the float32 output of one chunk (``chunks()`` without
            ``max_items``); segment chunks are also capped so their float64 frames stay near it.
        max_gap: gaps of at most this many rows between needed rows are read through.

    Memory: one chunk of output plus its read buffer; per item only the index arrays
    (8-16 bytes). Works across ``fork``/``spawn`` (files are opened per process, lazily).
    """

    def __init__(self, acts, layers: Sequence[int], rows: np.ndarray | None = None, lo: np.ndarray | None = None,
                 hi: np.ndarray | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_gap: int = MAX_GAP,
                 _files: list[_LayerFile] | None = None) -> None:  # fmt: skip
        if (rows is None) == (lo is None or hi is None):
            raise ValueError("CacheFeatures takes either rows (frame items) or lo and hi (segment items)")
        self.layers = [int(k) for k in layers]
        if not self.layers:
            raise ValueError("CacheFeatures needs at least one layer")
        self.files = _files if _files is not None else [
            _LayerFile(acts.layer(k), f"cache {getattr(acts, 'path', '?')} layer {k}") for k in self.layers]  # fmt: skip
        dims = {f.dim for f in self.files}
        if len(dims) != 1:
            raise ValueError(f"layers {self.layers} of cache {getattr(acts, 'path', '?')} have different widths {dims}")
        self.dim = dims.pop()
        self.total_rows = self.files[0].rows
        self.cache_dtype = self.files[0].dtype
        self.chunk_bytes, self.max_gap = int(chunk_bytes), int(max_gap)
        if rows is not None:
            self.rows, self.lo, self.hi = np.asarray(rows, dtype=np.int64), None, None
            n, bad = len(self.rows), (self.rows < 0) | (self.rows >= self.total_rows)
        else:
            self.rows, self.lo, self.hi = None, np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
            if self.lo.shape != self.hi.shape:
                raise ValueError(f"lo {self.lo.shape} and hi {self.hi.shape} differ in shape")
            if len(self.lo) and int((self.hi - self.lo).min()) < 1:
                raise ValueError("empty segment range (hi <= lo) among the items")
            n, bad = len(self.lo), (self.lo < 0) | (self.hi > self.total_rows)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise IndexError(f"item {j} reads rows outside the cache's {self.total_rows} rows "
                             f"({self.files[0].path})")  # fmt: skip
        self.n = n
        self._fds: dict[int, list[int]] = {}  # pid -> one descriptor per layer

    @classmethod
    def from_data(cls, acts, data, layers: Sequence[int], **kw) -> CacheFeatures:
        """The items of a `ProbeData` (frames ``rows`` or segments ``lo``/``hi``)."""
        if data.rows is not None:
            return cls(acts, layers, rows=data.rows, **kw)
        return cls(acts, layers, lo=data.lo, hi=data.hi, **kw)

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n, len(self.layers), self.dim)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def pooled(self) -> bool:
        return self.rows is None

    def __repr__(self) -> str:
        kind = "segments" if self.pooled else "frames"
        return f"CacheFeatures({self.n} {kind} x layers {self.layers} x {self.dim}, {self.files[0].path})"

    def _new(self, rows=None, lo=None, hi=None) -> CacheFeatures:
        return CacheFeatures(None, self.layers, rows=rows, lo=lo, hi=hi, chunk_bytes=self.chunk_bytes,
                             max_gap=self.max_gap, _files=self.files)  # fmt: skip

    def subset(self, keep) -> CacheFeatures:
        """Items selected by a bool mask ``(N,)`` or an index array (a new source, nothing read)."""
        keep = np.asarray(keep)
        if self.pooled:
            return self._new(lo=self.lo[keep], hi=self.hi[keep])
        return self._new(rows=self.rows[keep])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}  # descriptors do not travel to other processes
        return state

    def __del__(self) -> None:
        for fds in getattr(self, "_fds", {}).values():
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # ------------------------------------------------------------------ reading
    def _fd(self, j: int) -> int:
        pid = os.getpid()
        if pid not in self._fds:
            self._fds = {pid: [os.open(f.path, os.O_RDONLY) for f in self.files]}
        return self._fds[pid][j]

    def _runs(self, need: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted unique rows -> runs ``(start (R,), stop (R,), buffer position of each run start (R,))``."""
        return row_runs(need, self.max_gap)

    def _read_rows(self, j: int, starts: np.ndarray, stops: np.ndarray, pos: np.ndarray, buf: np.ndarray) -> None:
        """Read rows ``[starts[r], stops[r])`` of layer position j into ``buf[pos[r]:...]`` (buf: (R_total, D))."""
        f = self.files[j]
        pread_runs(self._fd(j), f.path, f.offset, f.row_bytes, starts, stops, pos, buf)

    def _read(self, rows: np.ndarray | None, lo: np.ndarray | None, hi: np.ndarray | None,
              layer_pos: Sequence[int]) -> Tensor:  # fmt: skip
        """Features of the given items (in their order) at layer positions ``layer_pos``: (n, len(layer_pos), D) float32."""
        n = len(rows) if rows is not None else len(lo)
        if rows is None and n > 1 and int((hi - lo).sum()) > self._frame_cap():
            # bound the float64 frames of one read: pool the segments in pieces of <= frame_cap frames
            cum = np.concatenate([[0], np.cumsum(hi - lo)])
            parts, i = [], 0
            while i < n:
                j = max(i + 1, int(np.searchsorted(cum, cum[i] + self._frame_cap(), side="right")) - 1)
                parts.append(self._read(None, lo[i:j], hi[i:j], layer_pos))
                i = j
            return torch.cat(parts)
        out = np.empty((n, len(layer_pos), self.dim), dtype=np.float32)  # (n, L', D)
        if n == 0:
            return torch.from_numpy(out)
        if rows is not None:
            need, inv = np.unique(rows, return_inverse=True)  # sorted reads
        else:
            lens = hi - lo  # (n,)
            total = int(lens.sum())
            first = np.repeat(lo - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)  # (total,)
            frames = first + np.arange(total)  # every frame row of every segment, segment by segment
            need, inv = np.unique(frames, return_inverse=True)
            seg_starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        starts, stops, pos = self._runs(need)
        nbuf = int((stops - starts).sum())
        run = np.searchsorted(starts, need, side="right") - 1  # (u,) the run holding each needed row
        where = pos[run] + (need - starts[run])  # (u,) its row in buf
        buf = np.empty((nbuf, self.dim), dtype=self.cache_dtype)  # (rows read, D)
        for jj, j in enumerate(layer_pos):
            self._read_rows(j, starts, stops, pos, buf)
            if rows is not None:
                out[:, jj] = buf[where[inv]]
            else:
                fr = buf[where[inv]].astype(np.float64)  # (total, D) frames in float64, as alignment.pool
                mean = np.add.reduceat(fr, seg_starts, axis=0) / lens[:, None]  # (n, D)
                out[:, jj] = mean.astype(self.cache_dtype)  # rounded as the in-memory path stores it
        return torch.from_numpy(out)

    def _frame_cap(self) -> int:
        """Frames pooled in one read: their float64 copy of one layer stays near ``chunk_bytes``."""
        return max(1, self.chunk_bytes // (self.dim * 8))

    def _bounds(self, max_items: int | None) -> list[tuple[int, int]]:
        """Chunks of exactly ``max_items`` items (the last shorter): callers may rely on the boundaries."""
        per_item = len(self.layers) * self.dim * 4
        m = max(1, self.chunk_bytes // per_item) if max_items is None else max(1, int(max_items))
        return [(i, min(self.n, i + m)) for i in range(0, self.n, m)]

    def chunks(self, max_items: int | None = None, layers: Sequence[int] | None = None
               ) -> Iterator[tuple[int, int, Tensor]]:  # fmt: skip
        """``(start, stop, x (stop - start, L, D) float32)`` over consecutive items, all of them once.

        max_items: items per chunk (default: ``chunk_bytes`` of float32 output). layers:
        positions among ``self.layers`` to read (default all); x then has that many columns.
        """
        from src.progress import progress

        pos = list(range(len(self.layers))) if layers is None else [int(j) for j in layers]
        bounds = self._bounds(max_items)
        desc = f"pass over cached features ({self.n} items x {len(pos)} layers)"
        for a, b in progress(bounds, desc=desc, unit="chunk"):  # a line only when the pass takes > 20 s
            if self.pooled:
                yield a, b, self._read(None, self.lo[a:b], self.hi[a:b], pos)
            else:
                yield a, b, self._read(self.rows[a:b], None, None, pos)

    def take(self, idx, layers: Sequence[int] | None = None) -> Tensor:
        """Features of items ``idx`` (any order, repeats allowed), in that order: (len(idx), L, D) float32.

        Reads are sorted by row; memory is that of the result (take in pieces for large idx).
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (int(idx.min()) < -self.n or int(idx.max()) >= self.n):
            raise IndexError(f"item index out of range for {self.n} items")
        pos = list(range(len(self.layers))) if layers is None else [int(j) for j in layers]
        if self.pooled:
            return self._read(None, self.lo[idx], self.hi[idx], pos)
        return self._read(self.rows[idx], None, None, pos)

    def materialize(self) -> Tensor:
        """All features in memory: (N, L, D) float32 (for small sources and tests)."""
        out = torch.empty(self.shape, dtype=torch.float32)
        for a, b, x in self.chunks():
            out[a:b] = x
        return out


def as_tensor(x) -> Tensor:
    """An in-memory tensor stays as it is; a `CacheFeatures` is read whole (small sources only)."""
    return x.materialize() if isinstance(x, CacheFeatures) else x


# ---------------------------------------------------------------------- Lightning data
class ProbeDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``(x (B, L, D), y (B, ...))`` batches over in-memory or cached features.

    ``__getitems__(indices)`` (torch's batched fetch) returns the whole batch; use it with
    ``collate_fn=collate_batch``. Over a `CacheFeatures` it reads whole *blocks* of
    ``block`` consecutive items and keeps the ``keep_blocks`` most recently used in memory,
    so a block-shuffled epoch (`GlobalBatchSampler` with ``block``) reads each block once
    (each DDP rank reads the blocks itself).
    """

    def __init__(self, x, y: Tensor, block: int | None = None, keep_blocks: int = 8) -> None:
        if len(x) != len(y):
            raise ValueError(f"features have {len(x)} items but targets {len(y)}")
        self.x, self.y = x, y
        self.streaming = isinstance(x, CacheFeatures)
        self.block = int(block) if block else 0
        self.keep_blocks = int(keep_blocks)
        self._blocks: OrderedDict[int, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        xb, yb = self.__getitems__([i])
        return xb[0], yb[0]

    def _features(self, idx: np.ndarray) -> Tensor:
        if not self.streaming:
            return self.x.index_select(0, torch.from_numpy(idx))  # = x[idx]; 3x faster than advanced indexing
        if not self.block:
            return self.x.take(idx)
        bid = idx // self.block
        for b in np.unique(bid).tolist():
            if b in self._blocks:
                self._blocks.move_to_end(b)
                continue
            a = b * self.block
            self._blocks[b] = self.x.take(np.arange(a, min(len(self.x), a + self.block)))  # (block, L, D)
            while len(self._blocks) > max(self.keep_blocks, len(np.unique(bid))):
                self._blocks.popitem(last=False)
        out = torch.empty((len(idx), *self.x.shape[1:]), dtype=torch.float32)
        for b in np.unique(bid).tolist():
            m = bid == b
            out[torch.from_numpy(m)] = self._blocks[b][torch.from_numpy(idx[m] - b * self.block)]
        return out

    def __getitems__(self, indices) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        x, y = self._features(idx), self.y[torch.from_numpy(idx)]
        w = getattr(indices, "weights", None)  # a DDP share of a global batch (`RankShare`)
        return (x, y) if w is None else (x, y, torch.as_tensor(w, dtype=torch.float64))


class RankShare(list):
    """One rank's item indices of a global batch, with the per-item loss weights that make DDP exact.

    DDP averages the W ranks' gradients. With ``weights = W / B`` for each of this rank's items
    of a global batch of ``B`` items (0 for an item repeated only to give the rank a step), the
    average of the ranks' weighted loss sums is the global batch's mean loss, whatever the split
    of an uneven last batch.
    """

    def __init__(self, items: list[int], weights: list[float]) -> None:
        super().__init__(items)
        self.weights = weights


def collate_batch(batch):
    """The DataLoader collate of `ProbeDataset`: its ``__getitems__`` already returns the batch."""
    return batch


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Batches of item indices in one global order; under DDP each rank takes its share of each batch.

    Order of one epoch (``iter`` draws from ``generator``, so epochs differ and runs repeat):
    - ``shuffle=False``: consecutive batches ``0..B-1, B..2B-1, ...``;
    - ``shuffle=True, block=None``: ``torch.randperm(N, generator)`` cut into batches, exactly
      the order of ``DataLoader(shuffle=True, generator=g)`` (RandomSampler + BatchSampler, with
      the same generator draws per epoch: pass ``generator=g`` to the DataLoader too);
    - ``shuffle=True, block=b`` (streaming): a *block shuffle*: the items are cut into blocks of
      ``b`` consecutive items, the blocks are put in a random order, and the items of each
      window of ``window`` consecutive blocks (in that order) are shuffled together, then cut
      into batches. A batch mixes at most ``window`` blocks (``2 * window`` across a window edge), so reads
      stay sequential; it departs from a full shuffle in that items from distant blocks never
      share a batch within a window (items are grouped by utterance, so a block is a run of
      utterances).

    DDP: every rank builds the same global batches (same generator state); rank r of W
    yields ``batch[r::W]`` as a `RankShare` carrying per-item loss weights ``W / B``, so the
    average of the ranks' weighted loss sums is the global batch's mean loss even when a batch
    does not split evenly: DDP training follows the single-process run.
    ``rank``/``world`` default to the initialised process group (else 0/1) at iteration time.
    ``pad`` (training): when the last batch has fewer items than ranks, a rank left without
    one repeats an item of that batch with weight 0, so every rank takes the same number of
    steps (DDP hangs otherwise); validation leaves it off (an empty share is skipped, no item counts twice).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                 block: int | None = None, window: int = 4, rank: int | None = None,
                 world: int | None = None, pad: bool = False) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle = int(n), int(batch_size), bool(shuffle)
        self.generator = generator
        self.block, self.window = (int(block) if block else None), max(1, int(window))
        self.rank, self.world, self.pad = rank, world, bool(pad)

    def _rank_world(self) -> tuple[int, int]:
        r, w = rank_and_world()
        return (r if self.rank is None else int(self.rank)), (w if self.world is None else int(self.world))

    def global_order(self) -> Tensor:
        """The item order of the next epoch (advances the generator when shuffling): (N,) int64."""
        if not self.shuffle:
            return torch.arange(self.n)
        if self.block is None:
            order = torch.randperm(self.n, generator=self.generator)
            # RandomSampler evaluates one more randperm per epoch (sliced to its num_samples % n = 0
            # items): drawn here too, so the generator advances as DataLoader(shuffle=True) advances it
            torch.randperm(self.n, generator=self.generator)
            return order
        nb = math.ceil(self.n / self.block)
        blocks = torch.randperm(nb, generator=self.generator).tolist()
        parts = []
        for w in range(0, nb, self.window):
            items = torch.cat([torch.arange(b * self.block, min(self.n, (b + 1) * self.block)) for b in blocks[w : w + self.window]])
            parts.append(items[torch.randperm(len(items), generator=self.generator)])
        return torch.cat(parts) if parts else torch.arange(0)

    def global_batches(self) -> list[list[int]]:
        order = self.global_order().tolist()
        return [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]

    def __iter__(self):
        r, w = self._rank_world()
        if w > self.batch_size:
            raise ValueError(f"batch_size {self.batch_size} is smaller than the {w} DDP processes: every rank needs "
                             "items of every batch; raise batch_size")  # fmt: skip
        for b in self.global_batches():
            mine = b[r::w]
            if w == 1:
                yield mine  # one process: plain batches (the probe takes the mean loss, as before)
                continue
            weights = [w / len(b)] * len(mine)
            if not mine and self.pad:
                mine, weights = [b[r % len(b)]], [0.0]  # fewer items than ranks: repeat one, weight 0 (training)
            if mine:
                yield RankShare(mine, weights)

    def __len__(self) -> int:
        r, w = self._rank_world()
        full, rest = divmod(self.n, self.batch_size)
        return full + int(rest > 0 and (self.pad or r < rest))
