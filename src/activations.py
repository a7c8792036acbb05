"""The seam of the framework: an on-disk cache of every layer's activations.

The backbone runs once per corpus; every stored hidden state is written in that one pass,
and every probe and analysis reads memory-mapped slices of it.

Layout of one cache directory (``<root>/<backbone>__<corpus>__<key>``)::

    meta.json        names, fingerprints, frame rate/offset, dtype, layers, per-layer value
                     statistics, per-file shape/dtype/bytes/checksums, complete (written last)
    index.npz        ids, speakers, offsets, lengths (frames), num_samples, per utterance
    layer_00.npy     (total_frames, D) one array per stored state, np.lib.format (memmap-able)
    ...

Layers (src/layers.py): one file per stored state, in ``backbone.layer_names`` order: the
residual states ``"0".."N"`` (state 0 = input to the first transformer layer, state k =
output of layer k, before any final norm), then named extras such as ``"final_norm"``.
``meta["num_layers"]`` counts the residual states only; ``meta["layer_names"]`` lists every
stored state and ``meta["layer_convention"]`` says what they mean.  ``Activations.layer(i)``
takes ``0..num_states-1`` (negative ints count from the end of the residual states) or a
name (``"final_norm"``, ``"3"``).

Values (checked at extraction, on the float32 output of the model, before any cast):

- a non-finite value (inf / nan) in any stored state is a ``CacheError`` naming the layer
  and the utterance: the model is broken, no dtype gives a good number;
- with ``dtype=float16``, ``|x| > 65504`` (the float16 range) is a ``CacheError`` naming the
  layer, the utterance and the abs-max, saying to use ``cache.dtype=float32``.  There is no
  silent fallback: the dtype is part of the cache key, and a cache that is float16 for some
  corpora and float32 for others would be a surprise;
- ``meta["layer_stats"]`` records per state the min / max / abs-max of the float32 values.

A build that fails on values removes its ``.partial`` directory (it fails the same way
when run again); nothing is ever renamed into place unless complete.

Integrity (every open, any process; opening never writes to the cache directory):
``meta["files"]`` records per layer file its shape, dtype, byte size, a sha256 of sampled
blocks (``CHECKSUM_BLOCKS`` evenly spaced blocks of ``CHECKSUM_BLOCK`` bytes, the first one
holding the .npy header; the whole file when it is smaller) and a sha256 of the whole file.
``Activations(path, verify=...)``: the index checksum and every file's existence and size
are checked when the cache is opened; a layer's header (shape, dtype) and checksum when it
is first opened: ``verify="sampled"`` (default: a checksum of about 1 MiB of sampled blocks,
then one min/max pass over the layer (``torch.aminmax`` over ``preadv`` chunks: measured
1.0 GB/s from the page cache, against 0.4 GB/s for the full hash): every value must be finite and inside the min/max ``layer_stats``
recorded at build time, so an overwrite between sampled blocks is seen unless it writes
in-range values), ``"full"`` (hashes the whole file), ``"off"`` (header and size only).
Any mismatch is a ``CacheError`` naming the file, saying "damaged" (a NaN in a complete cache
is damage: values were checked at build time, it is never a float16 overflow) and to delete
the directory and rebuild.

Atomicity: a build writes into ``<dir>.partial`` and renames it into place only when every
utterance is written and ``meta.json`` says ``complete``; a reader only ever opens the
final name, so a partial cache is never read.  A file lock (``<dir>.lock``, fcntl) lets
parallel multirun jobs share one build: the first builds, the others wait and open it.
A killed build resumes: ``done.npy`` records the utterances whose frames were flushed
(layers and value statistics are flushed before ``done.npy`` is replaced), so a restart
extracts only the rest.

Space: frame offsets are known before extraction (``backbone.num_frames`` is
deterministic), so the size is known: a build checks the free space of the target file
system first (``CacheError`` with GB needed / free and the path), then reserves every
layer file with ``posix_fallocate`` (where the file system supports it), so a full disk is
an error before extraction, never a SIGBUS during a memory-mapped write.  A missing cache
under a read-only root is an error that says so and how to build elsewhere.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.backbones.base import SpeechBackbone
from src.datamodules.corpus import Corpus
from src.distributed import rank_and_world as _rank_and_world  # module name: tests patch it
from src.fileutil import atomic_write, file_lock
from src.layers import LAYER_CONVENTION, LayerSpecError, default_layer_names, resolve_for

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: one file per stored state (layer_names), value stats, file checksums
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
CHECKSUM_BLOCK = 1 << 16  # bytes per sampled block
CHECKSUM_BLOCKS = 16  # sampled blocks per file
VERIFY = ("sampled", "full", "off")


class CacheError(RuntimeError):
    pass


class LayerIndexError(IndexError, LayerSpecError):
    """A layer index or name the cache does not hold (an IndexError and a LayerSpecError)."""


def backbone_layer_names(backbone: SpeechBackbone) -> list[str]:
    """Names of the states a backbone returns: ``"0".."N"`` then extras (``final_norm``)."""
    names = getattr(backbone, "layer_names", None)
    return [str(n) for n in names] if names else default_layer_names(int(backbone.num_layers))


# ----------------------------------------------------------------------------- checksums


def sampled_blocks(size: int, block: int | None = None, blocks: int | None = None) -> list[tuple[int, int]]:
    """``(offset, length)`` of the blocks the sampled checksum reads: ``blocks`` evenly spaced
    blocks from the start (the .npy header) to the end of the file; the whole file when small."""
    block, blocks = block or CHECKSUM_BLOCK, blocks or CHECKSUM_BLOCKS
    if size <= block * blocks:
        return [(0, size)]
    step = (size - block) / (blocks - 1)
    return [(int(round(j * step)), block) for j in range(blocks)]


def sampled_sha256(path: Path, block: int | None = None, blocks: int | None = None) -> str:
    size = os.path.getsize(path)
    h = hashlib.sha256(f"{size}:".encode())
    with open(path, "rb") as fh:
        for off, n in sampled_blocks(size, block, blocks):
            fh.seek(off)
            h.update(fh.read(n))
    return h.hexdigest()


def full_sha256(path: Path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while buf := fh.read(chunk):
            h.update(buf)
    return h.hexdigest()


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh)
    if fortran:
        raise ValueError("Fortran-ordered array")
    return tuple(int(s) for s in shape), np.dtype(dtype)


# ----------------------------------------------------------------------------- reading


class Activations:
    """Read-only views of a complete cache.  Rows of ``layer(i)`` are frames of all
    utterances, concatenated in corpus order; ``offsets``/``lengths`` index them.

    Args:
        path: the cache directory.
        verify: ``sampled`` (default), ``full`` or ``off``: how a layer file is checked the
            first time it is opened (see the module docstring).  Opening never writes.
    """

    def __init__(self, path: str | Path, verify: str = "sampled") -> None:
        if verify not in VERIFY:
            raise ValueError(f"verify must be one of {', '.join(VERIFY)}, got {verify!r}")
        self.path = Path(path)
        self.verify = verify
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise CacheError(f"{self.path} is not an activation cache (no meta.json)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise self._damaged(meta_path, f"unreadable ({e})") from e
        if not self.meta.get("complete"):
            raise CacheError(f"activation cache {self.path} is incomplete; rebuild it")
        if self.meta.get("format") != CACHE_FORMAT:
            raise CacheError(
                f"activation cache {self.path} has format {self.meta.get('format')}, this code reads format "
                f"{CACHE_FORMAT}; delete the directory {self.path} and rebuild it"
            )
        names = self.meta.get("layer_names") or default_layer_names(self.num_layers)
        self.layer_names: list[str] = [str(n) for n in names]
        self._files: list[dict] = list(self.meta.get("files") or [])
        if len(self._files) != len(self.layer_names):
            raise self._damaged(meta_path, f"{len(self._files)} layer files listed for {len(self.layer_names)} states")
        self._load_index()
        for entry in self._files:  # cheap: existence and size of every file
            self._check_size(entry)
        self._layers: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | Path, verify: str = "sampled") -> Activations:
        return cls(path, verify=verify)

    def _damaged(self, file: Path, what: str) -> CacheError:
        return CacheError(
            f"activation cache file {file} is damaged: {what}. Delete the directory {self.path} and rebuild it "
            "(the next run that needs it builds it again)"
        )

    def _load_index(self) -> None:
        f = self.path / "index.npz"
        if not f.is_file():
            raise self._damaged(f, "the file is missing")
        want = self.meta.get("index_sha256")
        if self.verify != "off" and want and full_sha256(f) != want:
            raise self._damaged(f, "checksum mismatch")
        try:
            with np.load(f, allow_pickle=False) as idx:
                self.ids: list[str] = [str(x) for x in idx["ids"]]
                self.speakers: list[str] = [str(x) for x in idx["speakers"]]
                self.offsets: np.ndarray = idx["offsets"].astype(np.int64)
                self.lengths: np.ndarray = idx["lengths"].astype(np.int64)
                self.num_samples: np.ndarray = idx["num_samples"].astype(np.int64)
        except Exception as e:  # zip/npy errors of every kind
            raise self._damaged(f, f"unreadable ({type(e).__name__}: {e})") from e
        n = len(self.ids)
        if not (len(self.offsets) == len(self.lengths) == len(self.speakers) == n) or (
            n and int((self.offsets + self.lengths).max()) > self.total_frames
        ):
            raise self._damaged(f, "offsets/lengths do not fit the layer files")
        self._pos = {u: i for i, u in enumerate(self.ids)}

    def _check_size(self, entry: dict) -> Path:
        f = self.path / entry["file"]
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            raise self._damaged(f, "the file is missing") from None
        if size != int(entry["bytes"]):
            raise self._damaged(f, f"{size} bytes, expected {entry['bytes']} (truncated or replaced)")
        return f

    def _open_layer(self, i: int) -> np.ndarray:
        entry = self._files[i]
        f = self._check_size(entry)
        try:
            shape, dtype = _npy_header(f)
        except Exception as e:
            raise self._damaged(f, f"not a readable .npy header ({e})") from e
        if list(shape) != list(entry["shape"]) or dtype.str != entry["dtype"]:
            raise self._damaged(f, f"shape {shape} dtype {dtype.str}, expected {tuple(entry['shape'])} {entry['dtype']}")
        if self.verify == "sampled":
            ck = self.meta.get("checksum", {})
            got = sampled_sha256(f, int(ck.get("block_bytes", CHECKSUM_BLOCK)), int(ck.get("blocks", CHECKSUM_BLOCKS)))
            if got != entry["sha256_sampled"]:
                raise self._damaged(f, "checksum of sampled blocks mismatch")
        elif self.verify == "full" and full_sha256(f) != entry["sha256"]:
            raise self._damaged(f, "checksum mismatch")
        try:
            arr = np.load(f, mmap_mode="r")
        except Exception as e:
            raise self._damaged(f, f"cannot be memory-mapped ({e})") from e
        if self.verify == "sampled":  # "full" hashed every byte already; "off" checks nothing more
            self._check_value_range(i, f, arr)
        return arr

    def _check_value_range(self, i: int, f: Path, arr: np.ndarray, chunk_bytes: int = 1 << 24) -> None:
        """One pass over layer file ``f``: every value must be finite and inside the [min, max]
        ``meta["layer_stats"]`` recorded at build time (the float32 model values, rounded to
        the stored dtype: rounding is monotone, so a good value never falls outside).

        Catches damage the sampled checksum cannot see (bytes overwritten between its blocks)
        whenever it leaves a value outside the recorded range or non-finite; an overwrite with
        in-range values needs ``verify="full"``.  Rows are read with ``preadv`` into one
        reusable buffer (no pages of the map stay resident), min/max by ``torch.aminmax``
        (numpy's float16 min/max is about 100x slower)."""
        stats = self.layer_stats
        if i >= len(stats) or not {"min", "max"} <= set(stats[i]) or arr.ndim != 2 or arr.shape[0] == 0:
            return  # nothing recorded to compare against (or nothing to read)
        from src.fileutil import pread_runs

        lo_ok, hi_ok = arr.dtype.type(stats[i]["min"]), arr.dtype.type(stats[i]["max"])  # rounded like the data
        n, d = arr.shape
        row_bytes = d * arr.dtype.itemsize
        rows = max(1, chunk_bytes // max(1, row_bytes))
        buf = np.empty((min(rows, n), d), arr.dtype)
        fd = os.open(f, os.O_RDONLY)
        try:
            for a in range(0, n, rows):
                b = min(n, a + rows)
                view = buf[: b - a]
                pread_runs(fd, str(f), int(arr.offset), row_bytes, np.array([a]), np.array([b]), np.array([0]), view)
                t = torch.from_numpy(view)  # (rows, D)
                lo, hi = (float(v) for v in torch.aminmax(t))
                if np.isfinite(lo) and np.isfinite(hi) and lo >= lo_ok and hi <= hi_ok:
                    continue
                bad = (~torch.isfinite(t)) | (t < float(lo_ok)) | (t > float(hi_ok))  # (rows, D)
                r, c = (int(x[0]) for x in torch.nonzero(bad, as_tuple=True))
                row = a + r
                u = int(np.searchsorted(self.offsets, row, side="right")) - 1
                where = f"utterance {self.ids[u]!r} frame {row - int(self.offsets[u])}" if 0 <= u < len(self.ids) else "?"
                n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
                raise self._damaged(
                    f,
                    f"row {row} ({where}), column {c} holds {float(t[r, c]):.6g}, outside the range "
                    f"[{stats[i]['min']:.6g}, {stats[i]['max']:.6g}] its values had when the cache was built "
                    f"(rows {a}..{b - 1}: {int(bad.sum())} such values, {n_nan} NaN, {n_inf} inf); every value "
                    "was checked when the cache was built, so the file changed since",
                )
        finally:
            os.close(fd)

    # metadata ------------------------------------------------------------------------
    num_layers = property(lambda self: int(self.meta["num_layers"]))  # residual states 0..N
    hidden_size = property(lambda self: int(self.meta["hidden_size"]))
    frame_rate = property(lambda self: float(self.meta["frame_rate"]))
    frame_offset = property(lambda self: float(self.meta["frame_offset"]))
    sample_rate = property(lambda self: int(self.meta["sample_rate"]))
    backbone = property(lambda self: str(self.meta["backbone"]))
    corpus = property(lambda self: str(self.meta["corpus"]))
    total_frames = property(lambda self: int(self.meta["total_frames"]))
    layer_stats = property(lambda self: list(self.meta.get("layer_stats", [])))

    @property
    def num_states(self) -> int:
        """Every stored state: the residual ones and the named extras."""
        return len(self.layer_names)

    @property
    def extra_states(self) -> list[str]:
        """Names of the states stored after the residual ones (e.g. ``["final_norm"]``)."""
        return self.layer_names[self.num_layers :]

    def resolve_layers(self, spec, what: str = "layers") -> list[int]:
        """State indices named by a layer spec (src/layers.py), extras included."""
        return resolve_for(self, spec, what=what)

    def layer_index(self, i: int | str) -> int:
        """Index of a state given as an int (negative: from the end of the residual states) or a name."""
        valid = (f"cache {self.path.name} holds states 0..{self.num_states - 1} "
                 f"({', '.join(self.layer_names)}; negative ints count from the end of 0..{self.num_layers - 1})")  # fmt: skip
        if isinstance(i, str):
            if i in self.layer_names:
                return self.layer_names.index(i)
            try:
                i = int(i)
            except ValueError:
                raise LayerIndexError(f"layer {i!r} is not in the cache: {valid}") from None
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise LayerIndexError(f"layer {i!r} is not an int or a name: {valid}")
        k = int(i) + self.num_layers if i < 0 else int(i)
        if not 0 <= k < self.num_states:
            raise LayerIndexError(f"layer {i} out of range: {valid}")
        return k

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, utt: str | int) -> int:
        if isinstance(utt, (int, np.integer)):
            return int(utt)
        if utt not in self._pos:
            raise KeyError(f"utterance {utt!r} is not in activation cache {self.path}")
        return self._pos[utt]

    # data ----------------------------------------------------------------------------
    def layer(self, i: int | str) -> np.ndarray:
        """Memory-mapped ``(total_frames, D)`` array of state ``i`` (an index or a name)."""
        k = self.layer_index(i)
        if k not in self._layers:
            self._layers[k] = self._open_layer(k)
        return self._layers[k]

    def rows(self, utt: str | int) -> slice:
        u = self.index_of(utt)
        return slice(int(self.offsets[u]), int(self.offsets[u] + self.lengths[u]))

    def frames(self, utt: str | int, layer: int | str) -> np.ndarray:
        """``(T, D)`` frames of one utterance at one state."""
        return self.layer(layer)[self.rows(utt)]

    def frame_times(self, utt: str | int) -> np.ndarray:
        """Time (s) each frame of ``utt`` stands for: ``frame_offset + i / frame_rate``."""
        from src.datamodules.alignment import frame_times

        return frame_times(int(self.lengths[self.index_of(utt)]), self.frame_rate, self.frame_offset)

    def __repr__(self) -> str:
        extra = f" + {', '.join(self.extra_states)}" if self.extra_states else ""
        return (
            f"Activations({self.backbone} x {self.corpus}: {len(self)} utterances, {self.total_frames} frames, "
            f"{self.num_layers} layers{extra} x {self.hidden_size}, {self.meta['dtype']})"
        )


# ----------------------------------------------------------------------------- building


class _UtteranceDataset(torch.utils.data.Dataset):
    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int):
        return i, torch.from_numpy(self.corpus[i].audio)  # lengths were checked in _plan; the writer checks frames


class _FixedBatches(torch.utils.data.Sampler):
    """A batch sampler over precomputed batches, sharded by rank when run under DDP
    (rank r takes batches r, r + W, ...; every rank writes its frames in place).

    With fewer batches than ranks, a rank left without one runs the last batch again and
    writes nothing (Lightning refuses an empty loader on any rank; see ``CacheWriter``)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def _mine(self) -> list[list[int]]:
        rank, world = _rank_and_world()
        mine = self.batches[rank::world]
        return mine if mine or not self.batches else [self.batches[-1]]

    def __iter__(self):
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


def _collate(items):
    return [i for i, _ in items], [a for _, a in items]


def plan_batches(indices: Sequence[int], num_samples: Sequence[int], batch_size: int, padding_safe: bool) -> list[list[int]]:
    """Batches sorted by length; when padding is not safe only equal-length utterances share a batch."""
    order = sorted(indices, key=lambda i: (num_samples[i], i))
    batches: list[list[int]] = []
    for i in order:
        if (
            batches
            and len(batches[-1]) < batch_size
            and (padding_safe or num_samples[batches[-1][0]] == num_samples[i])
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class CacheValueError(CacheError):
    """The model gave values the cache cannot store faithfully (non-finite, or beyond float16)."""


def check_values(hidden: torch.Tensor, lengths, ids: Sequence[str], names: Sequence[str], dtype: np.dtype):
    """Per-item min / max of every state over its valid frames, ``(S, B)`` each, float32.

    Raises CacheValueError naming the state and the utterance on a non-finite value, or on
    ``|x| > 65504`` when storing float16.  NaN and inf propagate through min/max, so one
    pass finds them.
    """
    S, B = hidden.shape[0], hidden.shape[1]
    mn = np.empty((S, B), np.float32)
    mx = np.empty((S, B), np.float32)
    for b in range(B):
        h = hidden[:, b, : int(lengths[b])].reshape(S, -1).float()
        lo, hi = torch.aminmax(h, dim=1)
        lo, hi = lo.cpu().numpy(), hi.cpu().numpy()
        bad = ~(np.isfinite(lo) & np.isfinite(hi))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            row = h[k]
            n_nan, n_inf = int(torch.isnan(row).sum()), int(torch.isinf(row).sum())
            raise CacheValueError(
                f"utterance {ids[b]!r}: layer {names[k]} of the model output has {n_nan} NaN and {n_inf} inf "
                f"values (layers affected: {', '.join(names[j] for j in np.flatnonzero(bad))}); the model is "
                "broken for this input (no cache dtype can store it); nothing was cached"
            )
        if dtype == np.float16:
            am = np.maximum(np.abs(lo), np.abs(hi))
            over = am > FLOAT16_MAX
            if over.any():
                k = int(np.flatnonzero(over)[0])
                raise CacheValueError(
                    f"utterance {ids[b]!r}: layer {names[k]} has values up to |x| = {float(am[k]):.6g}, beyond the "
                    f"float16 range ({FLOAT16_MAX:.0f}); use cache.dtype=float32 for this model; nothing was cached"
                )
        mn[:, b], mx[:, b] = lo, hi
    return mn, mx


def _extraction_module(backbone: SpeechBackbone, dtype: np.dtype, ids: Sequence[str], names: Sequence[str]):
    import lightning as L

    class Extraction(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def predict_step(self, batch, batch_idx):
            idx, waves = batch
            enc = self.backbone.encode(waves)
            hidden = enc.hidden  # (S, B, T, D), float32 as the model computed it
            if hidden.shape[0] != len(names):
                raise CacheError(
                    f"{backbone.name} returned {hidden.shape[0]} hidden states, its layer_names list "
                    f"{len(names)} ({', '.join(names)})"
                )
            lengths = enc.lengths.cpu().numpy()
            mn, mx = check_values(hidden, lengths, [ids[u] for u in idx], names, dtype)  # before any cast
            out = hidden.to(torch.float16 if dtype == np.float16 else torch.float32)
            return idx, out.cpu().numpy(), lengths, mn, mx

    return Extraction()


def _load_stats(partial: Path, num_states: int) -> np.ndarray:
    """``(S, 2)`` running [min, max] merged over every rank's flushed ``stats*.npy``."""
    stats = np.tile(np.array([np.inf, -np.inf], np.float64), (num_states, 1))
    for f in partial.glob("stats*.npy"):
        if f.name.endswith(".tmp.npy"):
            continue
        s = np.load(f)
        stats[:, 0] = np.minimum(stats[:, 0], s[:, 0])
        stats[:, 1] = np.maximum(stats[:, 1], s[:, 1])
    return stats


def _writer(flush_every: int):
    """The prediction writer of an extraction.  It is created with the trainer (before the
    partial directory may exist, so that every rank knows its rank before anything is
    written) and told what to write by ``configure`` before ``predict``; its files are opened
    when prediction starts."""
    from lightning.pytorch.callbacks import BasePredictionWriter

    class CacheWriter(BasePredictionWriter):
        """Writes each batch's frames in place; flushes layers and stats, then the done bitmap."""

        def __init__(self) -> None:
            super().__init__(write_interval="batch")
            self.target: tuple | None = None
            self.layers: list[np.ndarray] = []

        def configure(self, partial: Path, offsets: np.ndarray, lengths: np.ndarray, num_states: int,
                      write: bool = True) -> None:  # fmt: skip
            """``write=False``: a rank that only runs another rank's batch (fewer batches than ranks)."""
            self.target, self.write = (partial, offsets, lengths, num_states), write

        def on_predict_start(self, trainer, pl_module) -> None:
            if self.target is None:
                raise CacheError("internal: CacheWriter.configure was not called before predict")
            partial, _, _, num_states = self.target
            self.layers = [np.load(partial / f"layer_{k:02d}.npy", mmap_mode="r+") for k in range(num_states)]
            self.done = np.load(partial / "done.npy")
            self.stats = _load_stats(partial, num_states)
            self.pending = 0
            rank = trainer.global_rank
            suffix = "" if rank == 0 else f"_rank{rank}"
            self.done_file = partial / f"done{suffix}.npy"
            self.stats_file = partial / f"stats{suffix}.npy"

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
            _, offsets, lengths, num_states = self.target
            if not self.write:
                return
            idx, hidden, got, mn, mx = prediction
            for b, u in enumerate(idx):
                if int(got[b]) != int(lengths[u]):
                    raise CacheError(
                        f"utterance #{u}: backbone gave {int(got[b])} frames, expected {int(lengths[u])} "
                        "(num_frames disagrees with the model)"
                    )
                rows = slice(int(offsets[u]), int(offsets[u] + lengths[u]))
                for k in range(num_states):
                    self.layers[k][rows] = hidden[k, b, : lengths[u]]
                self.done[u] = True
            self.stats[:, 0] = np.minimum(self.stats[:, 0], mn.min(axis=1))
            self.stats[:, 1] = np.maximum(self.stats[:, 1], mx.max(axis=1))
            self.pending += 1
            if self.pending >= flush_every:
                self.flush()

        def _save(self, path: Path, arr: np.ndarray) -> None:
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, path)

        def flush(self) -> None:
            for arr in self.layers:
                arr.flush()
            self._save(self.stats_file, self.stats)  # stats cover at least the utterances marked done
            self._save(self.done_file, self.done)
            self.pending = 0

        def on_predict_end(self, trainer, pl_module) -> None:
            self.flush()
            self.layers = []
            trainer.strategy.barrier()  # every rank's frames are flushed before rank 0 finalises

    return CacheWriter()


def _merged_done(partial: Path) -> np.ndarray:
    """Utterances flushed by any rank (``done.npy`` of rank 0, ``done_rank<r>.npy`` of the others)."""
    done = np.load(partial / "done.npy")
    for f in partial.glob("done_rank*.npy"):
        if not f.name.endswith(".tmp.npy"):
            done |= np.load(f)
    return done


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _reserve(path: Path) -> None:
    """Allocate every block of ``path`` now (no sparse holes left to fault on a full disk)."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            return  # the file system cannot reserve: the free-space check is all we have
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise CacheError(
                f"no space left to reserve {_gb(size)} for {path} ({_gb(free)} free there); free space or build "
                "the cache elsewhere with paths.cache_dir=... (or cache.root=...)"
            ) from e
        raise
    finally:
        os.close(fd)


_LAUNCH_ID_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID",
                   "TORCHELASTIC_RESTART_COUNT")  # with the rendezvous address: which launch a handshake is for
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class _Layout:
    """Where every utterance's frames go; the same on every rank."""

    partial: Path
    num_samples: np.ndarray  # (U,) samples per utterance
    lengths: np.ndarray  # (U,) frames per utterance
    offsets: np.ndarray  # (U,) first row of each utterance
    names: list[str]  # stored states
    plan: dict  # what a resumable .partial must match


class ActivationCache:
    """Builds (once) and opens activation caches.

    Args:
        root: folder holding caches.
        dtype: ``float16`` (half the disk; values beyond its range are an error) or ``float32``.
        batch_size: utterances per forward pass (models that cannot be padded get equal-length batches only).
        flush_every: batches between durable checkpoints of a build (resume granularity).
        trainer: extra ``lightning.Trainer`` kwargs for extraction (e.g. ``accelerator``, ``devices``).
        progress: report extraction progress (a bar on a terminal, log lines elsewhere: src.progress).
        verify: how opened layer files are checked: ``sampled`` | ``full`` | ``off`` (see Activations).
        wait_timeout: seconds a rank > 0 of a distributed extraction waits for rank 0 (its plan,
            then the finished cache) before a CacheError.
    """

    def __init__(
        self,
        root: str | Path = "cache",
        dtype: str = "float16",
        batch_size: int = 8,
        flush_every: int = 16,
        trainer: dict | None = None,
        progress: bool = True,
        verify: str = "sampled",
        wait_timeout: float = 14400.0,
    ) -> None:
        if dtype not in {"float16", "float32"}:
            raise ValueError(f"cache.dtype must be float16 or float32, got {dtype!r}")
        if verify not in VERIFY:
            raise ValueError(f"cache.verify must be one of {', '.join(VERIFY)}, got {verify!r}")
        self.root = Path(root).expanduser()
        self.dtype = np.dtype(dtype)
        self.batch_size = int(batch_size)
        self.flush_every = int(flush_every)
        self.trainer_kwargs = dict(trainer or {})
        self.progress = progress
        self.verify = verify
        self.wait_timeout = float(wait_timeout)

    def key(self, backbone: SpeechBackbone, corpus: Corpus) -> str:
        blob = json.dumps(
            {"format": CACHE_FORMAT, "backbone": backbone.fingerprint, "corpus": corpus.fingerprint, "dtype": self.dtype.name},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def path_for(self, backbone: SpeechBackbone, corpus: Corpus) -> Path:
        return self.root / f"{backbone.name}__{corpus.name}__{self.key(backbone, corpus)}"

    def get(self, backbone: SpeechBackbone, corpus: Corpus) -> Activations:
        """Open the cache for (backbone, corpus), building it first if it is not complete.

        Single-process extraction (``cache.trainer`` of world size 1, the default): the
        first process takes the lock and builds; parallel jobs wait on the lock, then open.
        Distributed extraction (``cache.trainer={strategy: ddp, devices: N, ...}``, or
        ranks launched by torchrun / srun): see ``_build_rank0`` and ``_join_build``.
        """
        final = self.path_for(backbone, corpus)
        if (final / "meta.json").exists():
            return Activations(final, verify=self.verify)  # no lock, no write: works on read-only storage
        self._check_writable(final)
        trainer = self._extraction_trainer()  # knows its global rank and world size before launching
        rank, world = int(trainer.global_rank), int(trainer.world_size)
        if world == 1:
            with file_lock(final.with_name(final.name + ".lock"), final.name):
                if not (final / "meta.json").exists():  # another job may have built it meanwhile
                    self._refuse_unfinished(final)
                    self._build(backbone, corpus, final, trainer)
        elif rank == 0:
            self._build_rank0(backbone, corpus, final, trainer)
        else:
            self._join_build(backbone, corpus, final, trainer, rank)
        return Activations(final, verify=self.verify)

    # ---------------------------------------------------------------------------------
    def _check_writable(self, final: Path) -> None:
        where = _existing_ancestor(self.root)
        if not os.access(where, os.W_OK):
            raise CacheError(
                f"no complete activation cache at {final}, and it cannot be built there: {where} is read-only. "
                "Build it in a writable place with paths.cache_dir=/writable/dir (or cache.root=/writable/dir), "
                "or copy a complete cache to that name"
            )

    @staticmethod
    def _refuse_unfinished(final: Path) -> None:
        if final.exists():
            raise CacheError(
                f"{final} exists but is not a complete activation cache (no meta.json); delete the "
                "directory and rebuild it"
            )

    def _check_space(self, final: Path, need: int) -> None:
        where = _existing_ancestor(final.parent)
        free = shutil.disk_usage(where).free
        if need > free:
            raise CacheError(
                f"not enough disk space for activation cache {final.name}: it needs {_gb(need)} in {where}, "
                f"{_gb(free)} are free there. Free space, build elsewhere with paths.cache_dir=... "
                f"(or cache.root=...){', or use cache.dtype=float16 (half the size)' if self.dtype == np.float32 else ''}"
            )

    def _plan(self, backbone: SpeechBackbone, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
        """Samples and frames per utterance; errors name the utterance before anything is written."""
        ns = np.array([corpus.num_samples(i) for i in range(len(corpus))], dtype=np.int64)
        ids = corpus.ids
        for i, n in enumerate(ns):
            backbone.check_input(int(n), ids[i])
        nf = np.array([backbone.num_frames(int(n)) for n in ns], dtype=np.int64)
        return ns, nf

    def _extraction_trainer(self):
        """The ``lightning.Trainer`` of an extraction (``cache.trainer`` overrides the CPU defaults).

        Built before anything is written: ``trainer.global_rank`` / ``world_size`` are exact
        from the first moment (Lightning sets them from the launcher's environment)."""
        import lightning as L

        kwargs = dict(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=self.progress,
            use_distributed_sampler=False,
        )
        kwargs.update(self.trainer_kwargs)
        if "callbacks" in kwargs:
            raise ValueError("cache.trainer.callbacks is not supported: the extraction writer is the only callback")
        kwargs["callbacks"] = [_writer(self.flush_every)]
        if self.progress:  # log lines when stderr is not a terminal (Lightning's bar is unreadable there)
            from src.progress import lightning_callback

            kwargs["callbacks"].append(lightning_callback("extraction"))
        warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
        return L.Trainer(**kwargs)

    def _layout(self, backbone: SpeechBackbone, corpus: Corpus, final: Path) -> _Layout:
        num_samples, lengths = self._plan(backbone, corpus)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        L_, D = int(backbone.num_layers), int(backbone.hidden_size)
        names = backbone_layer_names(backbone)
        if names[:L_] != default_layer_names(L_) or len(set(names)) != len(names):
            raise CacheError(f"{backbone.name}: layer_names {names} must be '0'..'{L_ - 1}' then unique extra names")
        plan = {"format": CACHE_FORMAT, "key": final.name, "total_frames": int(lengths.sum()), "num_layers": L_,
                "layer_names": names, "hidden_size": D, "dtype": self.dtype.name}  # fmt: skip
        return _Layout(final.with_name(final.name + ".partial"), num_samples, lengths, offsets, names, plan)

    def _prepare(self, backbone: SpeechBackbone, corpus: Corpus, final: Path) -> tuple[_Layout, list[list[int]]]:
        """Create (or resume) ``<final>.partial``: reserved layer files, ``done.npy`` merged over
        every rank of earlier attempts, the plan.  Returns the layout and the batches left to do."""
        lay = self._layout(backbone, corpus, final)
        partial, S, D, total = lay.partial, len(lay.names), lay.plan["hidden_size"], lay.plan["total_frames"]
        plan_path = partial / "plan.json"
        if partial.exists() and not (plan_path.exists() and json.loads(plan_path.read_text()) == lay.plan):
            log.warning("discarding an unusable partial cache at %s", partial)
            shutil.rmtree(partial)
        if not partial.exists():
            self._check_space(final, S * (total * D * self.dtype.itemsize + 4096) + 64 * len(corpus) + (1 << 20))
            tmp = final.with_name(final.name + ".partial-new")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                for k in range(S):
                    f = tmp / f"layer_{k:02d}.npy"
                    np.lib.format.open_memmap(f, mode="w+", dtype=self.dtype, shape=(total, D))
                    _reserve(f)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            np.save(tmp / "done.npy", np.zeros(len(corpus), dtype=bool))
            (tmp / "plan.json").write_text(json.dumps(lay.plan))
            os.replace(tmp, partial)
        else:
            for k in range(S):
                _reserve(partial / f"layer_{k:02d}.npy")  # a resumed build is reserved too (no-op when it was)
        done = _merged_done(partial)
        np.save(partial / "done.npy", done)
        todo = [i for i in range(len(corpus)) if not done[i]]
        if len(todo) < len(corpus):
            log.info("resuming cache build %s: %d of %d utterances left", final.name, len(todo), len(corpus))
        batches = plan_batches(todo, lay.num_samples, self.batch_size, backbone.padding_safe) if todo else []
        return lay, batches

    def _extract(self, trainer, backbone: SpeechBackbone, corpus: Corpus, lay: _Layout, batches: list[list[int]]) -> None:
        """One ``trainer.predict`` over ``batches`` (sharded by rank under DDP); frames written in place."""
        loader = torch.utils.data.DataLoader(
            _UtteranceDataset(corpus), batch_sampler=_FixedBatches(batches), collate_fn=_collate, num_workers=0
        )
        writer = next(c for c in trainer.callbacks if hasattr(c, "configure"))
        owns = bool(batches[trainer.global_rank :: trainer.world_size])  # else it re-runs another rank's batch
        writer.configure(lay.partial, lay.offsets, lay.lengths, len(lay.names), write=owns)
        log.info("extracting %d states of %s for %d utterances of %s (rank %d of %d)", len(lay.names), backbone.name,
                 sum(map(len, batches)), corpus.name, trainer.global_rank, trainer.world_size)  # fmt: skip
        for cb in trainer.callbacks:
            if type(cb).__name__ == "ProgressLog":
                cb.desc = f"extraction {backbone.name} on {corpus.name}"
        module = _extraction_module(backbone, self.dtype, corpus.ids, lay.names)
        try:
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        except CacheValueError:
            if trainer.global_rank == 0:  # it would fail the same way again: free the disk
                shutil.rmtree(lay.partial, ignore_errors=True)
            raise

    def _build(self, backbone: SpeechBackbone, corpus: Corpus, final: Path, trainer) -> None:
        """Single-process build (the caller holds the lock)."""
        t0 = time.perf_counter()
        lay, batches = self._prepare(backbone, corpus, final)
        if batches:
            self._extract(trainer, backbone, corpus, lay, batches)
        self._finalise(backbone, corpus, final, lay, t0)

    # distributed extraction ----------------------------------------------------------
    #
    # Lightning's subprocess launcher starts ranks 1..N-1 only inside ``trainer.predict``, by
    # re-running the script; torchrun / srun start every rank at once.  Either way:
    #   rank 0: takes the lock (held until the cache is renamed into place), prepares
    #     ``.partial`` and publishes the batches in ``<final>.ddp.json`` (with a token naming
    #     this launch) BEFORE ``predict``; after ``predict`` (every rank flushed: barrier in the
    #     writer) it finalises, renames, removes the handshake file;
    #   ranks > 0: never touch the lock; wait for the handshake of this launch (or for the
    #     complete cache), join the same ``predict`` (each writes its own batches in place and
    #     its own done/stats files), then wait for ``meta.json`` of the final cache.
    # A failure of rank 0 is published too (state "failed"), so the others stop with its
    # message instead of waiting for the timeout.  After the build every rank destroys the
    # process group: the probe trainer that follows may be single-process, or a DDP trainer
    # that initialises its own.

    @staticmethod
    def _handshake(final: Path) -> Path:
        return final.with_name(final.name + ".ddp.json")

    @staticmethod
    def _token(trainer) -> str:
        env = trainer.strategy.cluster_environment
        parts = [f"{env.main_address}:{env.main_port}", str(trainer.world_size)]
        parts += [os.environ.get(k, "") for k in _LAUNCH_ID_VARS]
        return "|".join(parts)

    def _publish(self, final: Path, **msg) -> None:
        f = self._handshake(final)
        atomic_write(f, json.dumps(msg))

    def _build_rank0(self, backbone: SpeechBackbone, corpus: Corpus, final: Path, trainer) -> None:
        from src.distributed import destroy_process_group

        token = self._token(trainer)  # fixes the port Lightning's launcher hands to the other ranks
        with file_lock(final.with_name(final.name + ".lock"), final.name):
            t0 = time.perf_counter()
            try:
                if (final / "meta.json").exists():  # built by another job meanwhile
                    self._publish(final, token=token, state="complete", batches=[])
                    return
                self._refuse_unfinished(final)
                lay, batches = self._prepare(backbone, corpus, final)
                self._publish(final, token=token, state="predict", batches=batches,
                              total_frames=lay.plan["total_frames"])  # fmt: skip
                if batches:
                    self._extract(trainer, backbone, corpus, lay, batches)
                self._finalise(backbone, corpus, final, lay, t0)
            except BaseException as e:
                self._publish(final, token=token, state="failed", error=f"{type(e).__name__}: {e}", batches=[])
                raise
            finally:
                destroy_process_group()
            self._handshake(final).unlink(missing_ok=True)

    def _wait(self, final: Path, token: str, rank: int, what: str, until) -> dict | None:
        """Poll until ``until(msg)`` is true (``msg``: the handshake of this launch, or None);
        a published failure of rank 0, rank 0's exit (Lightning-launched ranks) or the
        timeout (``cache.wait_timeout``) is a CacheError."""
        f, deadline, parent = self._handshake(final), time.monotonic() + self.wait_timeout, os.getppid()
        lightning_child = "LOCAL_RANK" in os.environ and "RANK" not in os.environ
        while True:
            msg = None
            try:
                got = json.loads(f.read_text())
                msg = got if got.get("token") == token else None
            except (OSError, ValueError):
                pass
            if msg is not None and msg.get("state") == "failed":
                raise CacheError(f"the distributed build of {final.name} failed on rank 0: {msg.get('error')}")
            if until(msg):
                return msg
            if lightning_child and os.getppid() != parent:
                raise CacheError(f"rank 0 exited while this rank waited for {what} of {final.name}")
            if time.monotonic() > deadline:
                raise CacheError(
                    f"rank {rank} waited {self.wait_timeout:.0f} s for {what} of activation cache "
                    f"{final} (handshake file {f}); rank 0 did not get there. Raise cache.wait_timeout if rank 0 "
                    "is waiting for another job's build of the same cache"
                )
            time.sleep(_POLL_SECONDS)

    def _join_build(self, backbone: SpeechBackbone, corpus: Corpus, final: Path, trainer, rank: int) -> None:
        from src.distributed import destroy_process_group

        token = self._token(trainer)
        complete = lambda: (final / "meta.json").exists()  # noqa: E731
        try:
            msg = self._wait(final, token, rank, "rank 0's plan", lambda m: m is not None or complete())
            if msg is not None and msg.get("batches"):
                lay = self._layout(backbone, corpus, final)
                if lay.plan["total_frames"] != msg.get("total_frames"):
                    raise CacheError(
                        f"rank {rank} plans {lay.plan['total_frames']} frames for {final.name}, rank 0 planned "
                        f"{msg.get('total_frames')}: the ranks do not see the same corpus or backbone"
                    )
                self._extract(trainer, backbone, corpus, lay, msg["batches"])
            self._wait(final, token, rank, "the finished cache", lambda m: complete())
        finally:
            destroy_process_group()

    def _finalise(self, backbone: SpeechBackbone, corpus: Corpus, final: Path, lay: _Layout, t0: float) -> None:
        """Index, checksums, meta.json (last), rename into place.  Rank 0 only."""
        partial, names = lay.partial, lay.names
        done = _merged_done(partial)
        if not done.all():
            raise CacheError(f"cache build {partial} ended with {int((~done).sum())} utterances missing")
        stats = _load_stats(partial, len(names))
        np.savez(
            partial / "index.npz",
            ids=np.array(corpus.ids),
            speakers=np.array([corpus.speaker(i) for i in range(len(corpus))]),
            offsets=lay.offsets,
            lengths=lay.lengths,
            num_samples=lay.num_samples,
        )
        files = []
        for k, name in enumerate(names):
            f = partial / f"layer_{k:02d}.npy"
            shape, dt = _npy_header(f)
            files.append({"file": f.name, "name": name, "shape": list(shape), "dtype": dt.str,
                          "bytes": f.stat().st_size, "sha256_sampled": sampled_sha256(f), "sha256": full_sha256(f)})  # fmt: skip
        layer_stats = [
            {"name": name, "min": float(lo), "max": float(hi), "absmax": float(max(abs(lo), abs(hi)))}
            for name, (lo, hi) in zip(names, stats)
        ]
        meta = {
            "format": CACHE_FORMAT,
            "backbone": backbone.name,
            "backbone_fingerprint": backbone.fingerprint,
            "corpus": corpus.name,
            "corpus_fingerprint": corpus.fingerprint,
            "num_layers": lay.plan["num_layers"],
            "layer_names": names,
            "layer_convention": LAYER_CONVENTION,
            "hidden_size": lay.plan["hidden_size"],
            "frame_rate": backbone.frame_rate,
            "frame_offset": backbone.frame_offset,
            "sample_rate": backbone.sample_rate,
            "dtype": self.dtype.name,
            "num_utterances": len(corpus),
            "total_frames": lay.plan["total_frames"],
            "layer_stats": layer_stats,
            "files": files,
            "index_sha256": full_sha256(partial / "index.npz"),
            "checksum": {"algorithm": "sha256", "block_bytes": CHECKSUM_BLOCK, "blocks": CHECKSUM_BLOCKS},
            "build_seconds": round(time.perf_counter() - t0, 3),
            "complete": True,
        }
        for f in [*partial.glob("done*.npy"), *partial.glob("stats*.npy"), partial / "plan.json"]:
            f.unlink(missing_ok=True)
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))  # last file written
        os.replace(partial, final)
        log.info("activation cache ready: %s (%.1f s)", final, meta["build_seconds"])
