"""Edinburgh Speech Tools (EST) Track files: the ``.ema`` files of mngu0 and MOCHA-TIMIT.

Format (docs/corpora.md; ../shared/CORPORA.md §2):

- ASCII header: ``EST_File Track``, then ``Key Value`` lines (any order, blank lines
  allowed) up to ``EST_Header_End``.  Keys read: ``DataType ascii|binary`` (default
  binary), ``ByteOrder 01|10`` (little / big endian; binary only), ``NumFrames``,
  ``NumChannels``, ``BreaksPresent true``, ``Channel_<i> <name>``.  A channel name is
  everything after the first space, so ``Channel_12 v_x `` keeps its trailing space in
  :attr:`EstTrack.raw_names`; :attr:`EstTrack.names` has it stripped (use those for
  lookup).  ``****`` marks an unused channel (MOCHA channels 13 and 18).
- Body: per frame the time in seconds, the break/valid flag when ``BreaksPresent`` is
  true (1 = data, 0 = break), then the channels; binary is packed float32 in the header's
  byte order with no padding, ASCII is whitespace-separated, one frame per line.

Every inconsistency is a :class:`CorpusError` naming the file: a header whose channel
count disagrees with its ``Channel_i`` lines or with the body, a truncated binary body, an
ASCII line with the wrong number of values, a missing ``NumFrames``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.datamodules.corpus import CorpusError, Track

HEADER_END = b"EST_Header_End"
UNUSED = "****"
_CHANNEL = re.compile(r"Channel_(\d+)$")


@dataclass(frozen=True)
class EstTrack:
    path: str
    times: np.ndarray  # (T,) float64 seconds
    valid: np.ndarray  # (T,) bool: False where the break flag is 0
    values: np.ndarray  # (T, K) float32, all channels in header order (unused ones included)
    raw_names: tuple[str, ...]  # verbatim, trailing spaces kept
    header: dict  # every key/value line (values verbatim, stripped of the line end)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.raw_names)

    @property
    def used(self) -> list[int]:
        """Indices of the channels that carry data (not ``****``)."""
        return [i for i, n in enumerate(self.names) if n and n != UNUSED]

    def channel(self, name: str) -> np.ndarray:
        names = self.names
        if name not in names:
            raise CorpusError(f"EST file {self.path}: no channel {name!r}; it has {[names[i] for i in self.used]}")
        return self.values[:, names.index(name)]

    def rate(self) -> float:
        """Frame rate from the time column (median step)."""
        if len(self.times) < 2:
            raise CorpusError(f"EST file {self.path}: {len(self.times)} frame(s), cannot tell the frame rate")
        step = float(np.median(np.diff(self.times)))
        if not step > 0:
            raise CorpusError(f"EST file {self.path}: the time column does not increase")
        return 1.0 / step


def _split_header(data: bytes, path: str) -> tuple[list[str], int]:
    """Header lines (decoded, line ends removed) and the offset of the body."""
    if not data.startswith(b"EST_File"):
        raise CorpusError(f"{path} is not an EST file (first bytes {data[:16]!r}, expected b'EST_File Track')")
    lines, pos = [], 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise CorpusError(f"EST file {path}: no 'EST_Header_End' line")
        line = data[pos:nl]
        pos = nl + 1
        if line.rstrip(b"\r") == HEADER_END:
            return lines, pos
        try:
            lines.append(line.rstrip(b"\r").decode("ascii"))
        except UnicodeDecodeError as e:
            raise CorpusError(f"EST file {path}: non-ASCII header line {line[:60]!r} before 'EST_Header_End'") from e


def _int(header: dict, key: str, path: str, default: int | None = None) -> int:
    if key not in header:
        if default is None:
            raise CorpusError(f"EST file {path}: header has no {key!r} line")
        return default
    try:
        return int(header[key].strip())
    except ValueError as e:
        raise CorpusError(f"EST file {path}: {key} {header[key]!r} is not an integer") from e


def read_est(path: str | Path) -> EstTrack:
    """Read an EST Track file (ASCII or binary, either byte order)."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise CorpusError(f"cannot read EST file {path}: {e}") from e
    lines, body_at = _split_header(data, path)
    if lines[0].strip() != "EST_File Track":
        raise CorpusError(f"EST file {path}: first line {lines[0]!r}, expected 'EST_File Track'")
    header: dict[str, str] = {}
    chans: dict[int, str] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        key, _, value = line.partition(" ")
        if "\t" in key:  # a tab-separated key
            key, _, value = line.partition("\t")
        m = _CHANNEL.match(key)
        if m:
            chans[int(m.group(1))] = value  # verbatim: trailing spaces are part of the name
        else:
            header[key] = value.strip()
    n_ch = _int(header, "NumChannels", path)
    n_fr = _int(header, "NumFrames", path)
    if _int(header, "NumAuxChannels", path, 0):
        raise CorpusError(f"EST file {path}: auxiliary channels (NumAuxChannels {header['NumAuxChannels']}) are not supported")
    if sorted(chans) != list(range(n_ch)):
        raise CorpusError(
            f"EST file {path}: the header declares NumChannels {n_ch} but names channels {sorted(chans)} "
            f"(expected Channel_0 .. Channel_{n_ch - 1})"
        )
    breaks = header.get("BreaksPresent", "false").strip().lower() in {"true", "1", "yes"}
    n_col = n_ch + 1 + int(breaks)  # time, [break flag], channels
    dtype = header.get("DataType", "binary").strip().lower()
    body = data[body_at:]
    if dtype == "binary":
        order = header.get("ByteOrder", "01").strip()
        if order not in {"01", "10"}:
            raise CorpusError(f"EST file {path}: ByteOrder {order!r}, expected 01 (little-endian) or 10 (big-endian)")
        want = n_fr * n_col * 4
        if len(body) != want:
            extra = ""
            if n_fr and len(body) % (4 * n_fr) == 0:
                extra = (
                    f"; the body holds {len(body) // (4 * n_fr)} float32 columns per frame, so the header's "
                    f"NumChannels {n_ch} disagrees with the body"
                )
            what = "truncated" if len(body) < want else "longer than its header declares"
            raise CorpusError(
                f"EST file {path} is {what}: the header declares {n_fr} frames x {n_col} float32 columns "
                f"(time{', break' if breaks else ''} and {n_ch} channels) = {want} bytes, the body has {len(body)} bytes{extra}"
            )
        mat = np.frombuffer(body, dtype=np.dtype("<f4" if order == "01" else ">f4")).reshape(n_fr, n_col)
    elif dtype == "ascii":
        rows = [ln.split() for ln in body.decode("ascii", errors="replace").splitlines() if ln.strip()]
        for k, r in enumerate(rows):
            if len(r) != n_col:
                raise CorpusError(
                    f"EST file {path}: body line {k + 1} has {len(r)} values, but the header declares NumChannels {n_ch} "
                    f"({n_col} values per frame with time{' and break flag' if breaks else ''})"
                )
        if len(rows) != n_fr:
            raise CorpusError(f"EST file {path}: the header declares NumFrames {n_fr}, the body has {len(rows)} frames")
        try:
            mat = np.array(rows, dtype=np.float64).reshape(n_fr, n_col)
        except ValueError as e:
            raise CorpusError(f"EST file {path}: non-numeric value in the body: {e}") from e
    else:
        raise CorpusError(f"EST file {path}: DataType {dtype!r}, expected ascii or binary")
    times = mat[:, 0].astype(np.float64)
    valid = mat[:, 1] != 0 if breaks else np.ones(n_fr, dtype=bool)
    values = np.array(mat[:, 1 + int(breaks) :], dtype=np.float32)  # (T, K), native byte order
    return EstTrack(path, times, valid, values, tuple(chans[i] for i in range(n_ch)), header)


def est_to_track(
    est: EstTrack, channels: list[str], scale: dict[str, float] | float = 1.0, rate: float | None = None,
    rename: dict[str, str] | None = None, rate_tolerance: float = 0.005,
) -> Track:  # fmt: skip
    """A :class:`Track` of the named channels on the framework's grid (row ``j`` at ``j / rate`` s).

    - frames whose break flag is 0 become NaN (in every channel);
    - ``scale``: one factor, or per channel (missing channels: 1), to convert to mm;
    - ``rate``: the expected frame rate; the time column must agree within
      ``rate_tolerance`` (relative), else the error names both (``None``: take it from the times);
    - times that are not ``j / rate`` (a first frame at t0 > 0, or a half-frame offset) are
      linearly interpolated onto the grid ``0, 1/rate, ...`` up to the last frame; NaN propagates.
    """
    cols = []
    for c in channels:
        if c not in est.names or c == UNUSED:
            raise CorpusError(f"EST file {est.path}: no channel {c!r}; it has {[est.names[i] for i in est.used]}")
        cols.append(est.names.index(c))
    file_rate = est.rate()
    if rate is None:
        rate = file_rate
    elif abs(file_rate - rate) > rate_tolerance * rate:
        raise CorpusError(
            f"EST file {est.path}: frames are {1000 / file_rate:.4g} ms apart ({file_rate:.6g} Hz), "
            f"but the corpus rate is {rate:g} Hz (set the reader's ema_rate)"
        )
    v = est.values[:, cols].astype(np.float64)  # (T, C)
    v[~est.valid] = np.nan
    if isinstance(scale, dict):
        v *= np.array([scale.get(c, 1.0) for c in channels], dtype=np.float64)
    else:
        v *= float(scale)
    grid_pos = est.times * rate  # (T,) position in grid steps
    if np.allclose(grid_pos, np.round(grid_pos[0]) + np.arange(len(grid_pos)), atol=0.01):
        k0 = int(round(grid_pos[0]))  # times are j / rate from j = k0: pad k0 NaN rows in front
        if k0 < 0:
            raise CorpusError(f"EST file {est.path}: the first frame is at {est.times[0]:.4g} s < 0")
        out = np.concatenate([np.full((k0, len(cols)), np.nan), v], axis=0)
    else:
        if (np.diff(est.times) <= 0).any():
            raise CorpusError(f"EST file {est.path}: the time column is not increasing")
        n = int(np.floor(est.times[-1] * rate + 1e-6)) + 1
        g = np.arange(n) / rate  # (n,)
        out = np.empty((n, len(cols)))
        j = np.searchsorted(est.times, g, side="right") - 1  # frame at or before each grid time
        for k in range(len(cols)):
            out[:, k] = np.interp(g, est.times, v[:, k], left=np.nan)
        lo = np.clip(j, 0, len(est.times) - 1)
        hi = np.clip(j + 1, 0, len(est.times) - 1)
        upper = (g > est.times[lo])[:, None]  # (n, 1): the next frame matters
        bad = np.isnan(v[lo]) | (np.isnan(v[hi]) & upper) | (j < 0)[:, None]  # np.interp does not reliably propagate NaN
        out[bad] = np.nan
    names = tuple((rename or {}).get(c, c) for c in channels)
    return Track(float(rate), out.astype(np.float32), names)


# ----------------------------------------------------------------------------- corpora with EST EMA tracks


def find_files(root: Path, ext: str, sub: str | None, what: str) -> dict[str, Path]:
    """``{stem: path}`` of the ``*.<ext>`` files under ``root`` (or ``root/sub``); a stem found twice is
    an error naming both files and the option that picks one folder."""
    base = root / sub if sub else root
    if sub and not base.is_dir():
        raise CorpusError(f"{what} folder {base} does not exist")
    out: dict[str, Path] = {}
    for p in sorted(base.rglob(f"*.{ext}"), key=lambda q: q.relative_to(base).as_posix()):
        if p.stem in out:
            raise CorpusError(f"two {what} files for {p.stem!r}: {out[p.stem]} and {p}; name the folder to read "
                              f"with the reader's {ext}_dir option")  # fmt: skip
        out[p.stem] = p
    return out


def is_est(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"EST_File"


def select_channels(est: EstTrack, channels, default: list[str], what: str) -> list[str]:
    """``channels``: ``None`` -> ``default``; ``all`` -> every used channel; else the list (names stripped)."""
    if channels is None:
        channels = default
    if isinstance(channels, str):
        if channels != "all":
            raise CorpusError(f"{what}: data.channels must be a list of channel names or 'all', got {channels!r}")
        return [est.names[i] for i in est.used]
    chans = [str(c).strip() for c in channels]
    missing = [c for c in chans if c not in est.names or c == UNUSED]
    if missing:
        raise CorpusError(f"EST file {est.path}: no channels {missing} (data.channels); it has "
                          f"{[est.names[i] for i in est.used]}")  # fmt: skip
    return chans
