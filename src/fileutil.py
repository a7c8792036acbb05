"""File-system helpers shared by every on-disk build (corpora, activation caches).

A single file is written atomically with :func:`atomic_write` (bytes or text) or, for a
writer that wants a path (``torch.save``, ``csv``, ``shutil.copyfile``), :func:`atomic_path`:
the data goes to a hidden temporary file beside the target (same filesystem) that is renamed
over it with ``os.replace`` once complete, so a crash leaves the old file and no temporary.

Each build is made in a temporary place and renamed into place when complete; an
exclusive ``fcntl`` lock lets parallel processes (multirun jobs) share one build.

Rows of a cache layer file are read with ``os.preadv`` (:func:`row_runs`, :func:`pread_runs`),
never through its memory map: pages of a map that a pass touches stay resident and count in
the process RSS, so a pass over a large cache would make RSS grow with the corpus. Used by
the probes' `CacheFeatures` and the analyses' `read_rows`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: str | Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing); other processes wait here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s", what or path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def temp_path(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` for an atomic write (same filesystem, so
    ``os.replace`` is atomic): ``.<name>.<pid>.<random>.tmp``.  Opened with mode "x", the file
    gets the usual umask permissions (``tempfile.mkstemp`` would make it 0600)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it onto
    ``path`` (``os.replace``).  On error the temporary file is removed and ``path`` is untouched.
    ``fsync``: flush the file to disk before the rename.  The folder of ``path`` must exist."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | Path, data: bytes | str, fsync: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text encoded with ``encoding``) to ``path`` atomically (see
    :func:`atomic_path`); returns ``path``."""
    path = Path(path)
    raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "xb") as fh:
        fh.write(raw)
    return path


def read_manifest(path: str | Path) -> dict | None:
    """The JSON manifest a complete build writes last, or None when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def row_runs(need: np.ndarray, max_gap: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique rows (non-empty) -> runs ``(starts (R,), stops (R,), pos (R,))``: rows
    ``[starts[r], stops[r])`` land at ``pos[r]`` of a buffer of ``sum(stops - starts)`` rows.
    A gap of at most ``max_gap`` rows between needed rows is read through (reads stay sequential)."""
    cut = np.flatnonzero(np.diff(need) > max_gap + 1) + 1  # a new run after a larger gap
    starts = need[np.concatenate([[0], cut])]
    stops = need[np.concatenate([cut - 1, [len(need) - 1]])] + 1
    pos = np.concatenate([[0], np.cumsum(stops - starts)[:-1]])
    return starts, stops, pos


def pread_runs(fd: int, path: str, offset: int, row_bytes: int, starts: np.ndarray, stops: np.ndarray,
               pos: np.ndarray, buf: np.ndarray) -> None:  # fmt: skip
    """Read rows ``[starts[r], stops[r])`` of a row-major file (row 0 at byte ``offset``, ``row_bytes``
    per row; ``fd`` open on ``path``) into rows ``pos[r]...`` of ``buf`` (C-contiguous, same row width)."""
    flat = memoryview(buf.reshape(-1).view(np.uint8))
    for a, b, p in zip(starts.tolist(), stops.tolist(), pos.tolist()):
        view, at = flat[p * row_bytes : (p + b - a) * row_bytes], offset + a * row_bytes
        got = 0
        while got < len(view):  # short reads are legal: continue where one stopped
            k = os.preadv(fd, [view[got:]], at + got)
            if k <= 0:
                raise OSError(f"short read from {path}: rows {a}..{b - 1} gave {got} of {len(view)} bytes "
                              "(file truncated?)")  # fmt: skip
            got += k


class UnreadableCheckpoint(ValueError):
    """A ``.pt`` file that ``torch.load(weights_only=True)`` cannot read. ``why`` says what is wrong in plain
    words (never torch's advice to retry with ``weights_only=False``); ``kind`` is the original error's type."""

    def __init__(self, path, why: str, kind: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path, self.why, self.kind = path, why, kind


def load_plain_checkpoint(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)``: tensors and plain data only, nothing in the file is run.

    Any failure (a damaged or truncated file, a foreign pickle, not a torch file at all) is an
    :class:`UnreadableCheckpoint`; callers add what the file should have been and how to rebuild it."""
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / EOF errors of every kind
        text = str(e)
        if "Unsupported global" in text or "Unsupported operand" in text:
            why = "it holds Python objects other than tensors and plain data, which are not loaded"
        elif "central directory" in text or isinstance(e, (EOFError, zipfile.BadZipFile)):
            why = "not a complete tensor archive (truncated or another file type)"
        else:  # torch's own first line, unless it is the advice to retry with weights_only=False
            first = text.split("\n")[0]
            why = "unreadable" if ("weights_only" in first or "Weights only" in first) else first[:160]
        raise UnreadableCheckpoint(path, why, type(e).__name__) from None
