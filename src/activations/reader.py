"""Reading an activation cache: ``Activations`` (read-only, memory-mapped views of a complete cache: layers,
frames, the utterance index) and ``read_rows`` (rows of a layer without keeping its pages resident).

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

A reader only ever opens a complete cache's final name (``meta["complete"]``); the builder
(src/activations/builder.py) writes it. This module imports no torch until a layer's values are checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from src.layers import LayerSpecError, default_layer_names, resolve_for

if TYPE_CHECKING:
    from src.backbones.base import SpeechBackbone

CACHE_FORMAT = 2  # 2: one file per stored state (layer_names), value stats, file checksums
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
        import torch

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


# ----------------------------------------------------------------------------- reading rows at scale


def release_pages(layer) -> None:
    """Drop this process's resident pages of a memory-mapped layer (``np.memmap`` or a view of one).

    Pages of a memory map that a process has touched count in its resident set (RSS) until the
    kernel reclaims them; a pass over a 3 GB layer file therefore shows as 3 GB of RSS, and an
    analysis over a 100 h cache would look (and, under a cgroup memory limit, be accounted) as if
    it held the whole cache.  ``madvise(MADV_DONTNEED)`` unmaps them from this process: the data
    stay in the OS page cache (a re-read is a minor fault, no disk read) and the file is unchanged
    (the cache is opened read-only).  Arrays that are not memory maps are left alone; so is a
    platform without ``madvise``.  Cost: about 10 us per call on a 1 GB mapping (measured)."""
    import mmap

    mm = getattr(layer, "_mmap", None)  # np.memmap and its views share the parent's mmap object
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed map or a platform that refuses: nothing resident to drop
        return


def read_rows(layer, rows: np.ndarray, dtype=np.float32, release: bool = True) -> np.ndarray:
    """``layer[rows]`` as a dense ``(len(rows), D)`` array of ``dtype`` (any row order, repeats allowed).

    The one reader of frame rows in the analyses; the values are those of
    ``src.datamodules.alignment.gather``. For a memory-mapped ``.npy`` layer (what
    ``Activations.layer`` returns) the rows are read with ``os.preadv`` from the file (sorted,
    runs of consecutive rows in one read), never through the map, so nothing of the layer
    becomes resident in this process: reading a cache in minibatches keeps resident memory
    ``O(len(rows) * D)`` whatever the cache size (the OS page cache holds the file). Other
    arrays are indexed in memory. ``release``: also drop pages of the map that other code
    touched (:func:`release_pages`)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    filename, offset = getattr(layer, "filename", None), getattr(layer, "offset", None)
    if filename is None or offset is None or layer.ndim != 2 or not layer.flags.c_contiguous:
        from src.datamodules.alignment import gather

        return gather(layer, rows, dtype)
    n_rows, dim = layer.shape
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
        raise IndexError(f"rows outside 0..{n_rows - 1} of {filename}")
    need, inv = np.unique(rows, return_inverse=True)  # sorted unique rows: sequential reads
    buf = np.empty((len(need), dim), dtype=layer.dtype)  # (u, D) in the cache dtype
    if len(need):
        from src.fileutil import pread_runs, row_runs

        fd = os.open(filename, os.O_RDONLY)
        try:  # runs of consecutive rows only (max_gap 0): buf holds exactly the unique rows
            pread_runs(fd, str(filename), int(offset), dim * layer.dtype.itemsize, *row_runs(need), buf)
        finally:
            os.close(fd)
    if release:
        release_pages(layer)
    return buf[inv].astype(dtype, copy=False)  # (n, D) in the order asked for
