"""NIST SPHERE audio (TIMIT ``.WAV``, MOCHA-TIMIT ``.wav``/``.lar``): header and PCM samples.

Written by hand rather than through soundfile/libsndfile because (1) the readers need the
header alone (sample count and rate) to plan a corpus without touching the samples, in a
few microseconds per file; (2) a shorten/wavpack-compressed file must be refused with the
conversion command, where libsndfile gives a generic "format not recognised".

Layout (docs/corpora.md, ../shared/CORPORA.md §5.2): bytes 0-7 ``NIST_1A\\n``, bytes 8-15
the header size in bytes (``   1024\\n``), then ``name -type value`` lines (``-i`` int,
``-r`` real, ``-sN`` string of N characters) up to ``end_head``; the samples start at the
header size.  ``sample_byte_format`` ``01`` is little-endian, ``10`` big-endian (``1`` for
one-byte samples); a ``sample_coding`` other than ``pcm`` (shorten, wavpack, ulaw, ...)
or a byte format such as ``shortpack-v0`` is refused with the ``sph2pipe`` command.

:func:`read_audio_file` sniffs the first bytes (``NIST_1A`` vs anything else, which goes
to soundfile), so a redistribution with RIFF files under ``.wav`` names reads the same.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from src.datamodules.corpus import CorpusError, read_audio, resample

MAGIC = b"NIST_1A"
CONVERT_HINT = "convert it to PCM first, e.g. `sph2pipe -f wav {path} out.wav` (or `sox {path} out.wav`)"


@dataclass(frozen=True)
class SphereHeader:
    path: str
    header_size: int
    fields: dict  # name -> int | float | str
    sample_count: int  # per channel
    sample_rate: int
    channel_count: int
    sample_n_bytes: int
    byte_order: str  # "<" or ">"

    @property
    def data_bytes(self) -> int:
        return self.sample_count * self.channel_count * self.sample_n_bytes


def _parse_fields(text: str, path: str) -> dict:
    """``name -type value`` lines up to ``end_head``; a fast pass for well-formed headers (one space
    between the parts, as NIST writes them), else the tolerant line parser naming a bad line."""
    body, sep, _ = text.partition("\nend_head")
    if sep:
        fields: dict = {}
        try:
            for line in body.split("\n"):
                if not line:
                    continue
                name, typ, value = line.split(" ", 2)
                t = typ[:2]
                if t == "-i":
                    fields[name] = int(value)
                elif t == "-s" and len(value) == int(typ[2:]):
                    fields[name] = value
                elif t == "-r":
                    fields[name] = float(value)
                else:
                    raise ValueError
            return fields
        except ValueError:
            pass
    return _parse_lines(text, path)


def _parse_lines(text: str, path: str) -> dict:
    fields: dict = {}
    for line in text.split("\n"):
        line = line.strip("\r")
        if not line.strip():
            continue
        if line.strip() == "end_head":
            return fields
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[1].startswith("-"):
            if len(parts) >= 1 and parts[0].startswith(";"):
                continue  # comment line
            raise CorpusError(f"SPHERE file {path}: bad header line {line!r} (expected 'name -type value')")
        name, typ, value = parts
        try:
            if typ == "-i":
                fields[name] = int(value.split()[0])
            elif typ == "-r":
                fields[name] = float(value.split()[0])
            elif typ.startswith("-s"):
                n = int(typ[2:])
                # the value is exactly n characters after the separating space; keep it verbatim
                raw = line.split(None, 2)[2] if n else ""
                fields[name] = raw[:n] if len(raw) >= n else raw
            else:
                raise ValueError(f"unknown type {typ!r}")
        except ValueError as e:
            raise CorpusError(f"SPHERE file {path}: bad header line {line!r}: {e}") from e
    raise CorpusError(f"SPHERE file {path}: header has no 'end_head' line within its declared size")


def parse_sphere_header(head: bytes, path: str | Path, file_size: int | None = None) -> SphereHeader:
    """Parse the header from the file's first bytes (at least the declared header size)."""
    path = str(path)
    if not head.startswith(MAGIC):
        raise CorpusError(f"{path} is not a NIST SPHERE file (first bytes {head[:8]!r}, expected {MAGIC!r})")
    try:
        size = int(head[8:16].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as e:
        raise CorpusError(f"SPHERE file {path}: bad header size field {head[8:16]!r}") from e
    if size < 16 or size > len(head):
        raise CorpusError(f"SPHERE file {path}: header size {size} bytes, but the file has {len(head)} bytes")
    end = head.find(b"end_head", 16, size)
    text = head[16 : size if end < 0 else end + 8].decode("latin-1")  # the padding after end_head is not read
    fields = _parse_fields(text, path)
    coding = str(fields.get("sample_coding", "pcm")).strip().lower()
    fmt = str(fields.get("sample_byte_format", "")).strip().lower()
    if coding.split(",")[0] != "pcm" or any(c in coding for c in ("shorten", "wavpack", "shortpack")) or (
        fmt and fmt not in {"01", "10", "1"}
    ):
        what = f"sample_coding {coding!r}" if coding != "pcm" else f"sample_byte_format {fmt!r}"
        raise CorpusError(
            f"SPHERE file {path} is compressed or not linear PCM ({what}); this reader decodes PCM only: "
            + CONVERT_HINT.format(path=path)
        )
    for key in ("sample_count", "sample_rate"):
        if not isinstance(fields.get(key), int):
            raise CorpusError(f"SPHERE file {path}: header lacks the integer field {key!r} (it has {sorted(fields)})")
    nbytes = int(fields.get("sample_n_bytes", 2))
    if nbytes not in (1, 2, 4):
        raise CorpusError(f"SPHERE file {path}: sample_n_bytes {nbytes} is not supported (1, 2 or 4)")
    if nbytes > 1 and fmt not in {"01", "10"}:
        raise CorpusError(f"SPHERE file {path}: sample_byte_format {fmt!r}; expected '01' (little-endian) or '10' (big-endian)")
    channels = int(fields.get("channel_count", 1))
    if channels < 1:
        raise CorpusError(f"SPHERE file {path}: channel_count {channels}")
    hdr = SphereHeader(
        path=path, header_size=size, fields=fields, sample_count=int(fields["sample_count"]),
        sample_rate=int(fields["sample_rate"]), channel_count=channels, sample_n_bytes=nbytes,
        byte_order=">" if fmt == "10" else "<",
    )  # fmt: skip
    if file_size is not None and file_size < size + hdr.data_bytes:
        raise CorpusError(
            f"SPHERE file {path} is truncated: the header declares {hdr.sample_count} samples x {channels} channel(s) x "
            f"{nbytes} bytes after a {size}-byte header ({size + hdr.data_bytes} bytes), but the file has {file_size} bytes"
        )
    return hdr


def read_small_file(path: str | Path) -> bytes:
    """A whole (small) file in one or two ``os.read`` calls: label files are read by the thousand."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks) if len(chunks) > 1 else chunks[0]


def read_sphere_header(path: str | Path) -> SphereHeader:
    """The header alone (reads the first 1024 bytes, more only for a larger header)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CorpusError(f"cannot read audio file {path}: {e}") from e
    try:
        size = os.fstat(fd).st_size
        head = os.read(fd, 1024)
        if head.startswith(MAGIC) and len(head) >= 16:
            try:
                declared = int(head[8:16].strip() or 0)
            except ValueError:
                declared = 0
            if declared > len(head):
                head += os.read(fd, declared - len(head))
    finally:
        os.close(fd)
    return parse_sphere_header(head, path, size)


def read_sphere(path: str | Path) -> tuple[np.ndarray, SphereHeader]:
    """Samples as float32 ``(n, channels)`` in [-1, 1) (int16 / 32768, as soundfile scales PCM_16) and the header."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise CorpusError(f"cannot read audio file {path}: {e}") from e
    hdr = parse_sphere_header(data[:4096] if len(data) > 4096 else data, path, len(data))
    if hdr.header_size > 4096:
        hdr = parse_sphere_header(data, path, len(data))
    n = hdr.sample_count * hdr.channel_count
    start = hdr.header_size
    if hdr.sample_n_bytes == 1:  # 8-bit PCM: signed
        x = np.frombuffer(data, dtype=np.int8, count=n, offset=start).astype(np.float32) * (1.0 / 128)
    else:
        dt = np.dtype(f"{hdr.byte_order}i{hdr.sample_n_bytes}")
        scale = 1.0 / (2 ** (8 * hdr.sample_n_bytes - 1))
        x = np.frombuffer(data, dtype=dt, count=n, offset=start).astype(np.float32) * np.float32(scale)
    return x.reshape(hdr.sample_count, hdr.channel_count), hdr  # (n, C)


def is_sphere(path: str | Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(7) == MAGIC
    except OSError as e:
        raise CorpusError(f"cannot read audio file {path}: {e}") from e


def read_audio_file(path: str | Path, sample_rate: int) -> np.ndarray:
    """float32 mono at ``sample_rate`` from a SPHERE or any soundfile-readable file (sniffed, not by extension).

    Same conventions as :func:`src.datamodules.corpus.read_audio`: downmix and resampling
    with a warning naming the file, empty or non-finite audio is an error.
    """
    if not is_sphere(path):
        return read_audio(path, sample_rate)
    x, hdr = read_sphere(path)  # (n, C)
    if hdr.channel_count > 1:
        warnings.warn(f"{path}: {hdr.channel_count} channels, downmixed to mono", stacklevel=2)
        audio = x.mean(axis=1)
    else:
        audio = x[:, 0]
    if hdr.sample_rate != sample_rate:
        warnings.warn(f"{path}: sample rate {hdr.sample_rate} Hz, resampled to {sample_rate} Hz", stacklevel=2)
        audio = resample(audio, hdr.sample_rate, sample_rate)
    if audio.size == 0:
        raise CorpusError(f"audio file {path} is empty")
    return np.ascontiguousarray(audio, dtype=np.float32)


def read_native(path: str | Path) -> tuple[np.ndarray, int]:
    """``(samples (n, C) float32, file sample rate)`` of a SPHERE or soundfile-readable file (sniffed)."""
    if is_sphere(path):
        x, hdr = read_sphere(path)
        return x, hdr.sample_rate
    import soundfile as sf

    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        raise CorpusError(f"cannot read audio file {path}: {e}") from e
    return x, int(sr)


def audio_info(path: str | Path) -> tuple[int, int]:
    """(frames, sample rate) from the header alone: SPHERE parsed here, anything else by soundfile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CorpusError(f"cannot read audio file {path}: {e}") from e
    try:
        head = os.read(fd, 1024)
        if head.startswith(MAGIC):
            size = os.fstat(fd).st_size
            try:
                declared = int(head[8:16].strip() or 0)
            except ValueError:
                declared = 0
            if declared > len(head):
                head += os.read(fd, declared - len(head))
            hdr = parse_sphere_header(head, path, size)
            return hdr.sample_count, hdr.sample_rate
    finally:
        os.close(fd)
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        raise CorpusError(f"cannot read audio file {path}: {e}") from e
    return int(info.frames), int(info.samplerate)


def resampled_length(frames: int, orig_sr: int, target_sr: int) -> int:
    """Length after :func:`src.datamodules.corpus.resample` (resample_poly's output length)."""
    if orig_sr == target_sr:
        return int(frames)
    r = Fraction(target_sr, orig_sr)
    return int(math.ceil(frames * r.numerator / r.denominator))
