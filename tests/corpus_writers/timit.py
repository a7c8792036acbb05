"""The TIMIT layout (../shared/CORPORA.md §5): NIST SPHERE ``.WAV`` + ``.PHN`` / ``.WRD`` / ``.TXT``.

Written from the specification, not with the reader's code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sphere_header(fields: list[tuple[str, str, object]], size: int = 1024) -> bytes:
    """``NIST_1A\\n   1024\\n`` + ``name -type value`` lines + ``end_head``, padded with spaces to ``size``."""
    lines = [b"NIST_1A\n", f"{size:7d}\n".encode()]
    for name, typ, value in fields:
        if typ == "s":
            v = str(value)
            lines.append(f"{name} -s{len(v)} {v}\n".encode())
        else:
            lines.append(f"{name} -{typ} {value}\n".encode())
    lines.append(b"end_head\n")
    head = b"".join(lines)
    assert len(head) <= size, "header longer than its declared size"
    return head + b" " * (size - len(head))


def write_sphere(path, samples: np.ndarray, sample_rate: int = 16000, byte_format: str = "01",
                 utterance_id: str = "cjf0_sa1", extra: list[tuple[str, str, object]] | None = None,
                 coding: str | None = None, sample_min: int | None = None, sample_max: int | None = None) -> Path:  # fmt: skip
    """An int16 SPHERE file with TIMIT's header (CORPORA.md §5.2); ``samples``: int16 ``(n,)`` or ``(n, C)``.

    ``byte_format`` ``01`` writes little-endian samples, ``10`` big-endian; ``coding`` adds a
    ``sample_coding`` field (e.g. ``pcm,embedded-shorten-v2.00`` for a compressed file)."""
    x = np.asarray(samples)
    assert x.dtype == np.int16
    x2 = x.reshape(len(x), -1)  # (n, C)
    fields = [
        ("database_id", "s", "TIMIT"),
        ("database_version", "s", "1.0"),
        ("utterance_id", "s", utterance_id),
        ("channel_count", "i", x2.shape[1]),
        ("sample_count", "i", x2.shape[0]),
        ("sample_rate", "i", int(sample_rate)),
        ("sample_min", "i", sample_min if sample_min is not None else (int(x.min()) if x.size else 0)),
        ("sample_max", "i", sample_max if sample_max is not None else (int(x.max()) if x.size else 0)),
        ("sample_n_bytes", "i", 2),
        ("sample_byte_format", "s", byte_format),
        ("sample_sig_bits", "i", 16),
    ]
    if coding is not None:
        fields.append(("sample_coding", "s", coding))
    fields += list(extra or [])
    dt = "<i2" if byte_format == "01" else ">i2"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sphere_header(fields) + x2.astype(dt).tobytes())
    return path


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float in [-1, 1) -> int16 (x * 32768, rounded, clipped): exact for audio read from PCM_16 files."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768), -32768, 32767).astype(np.int16)


def write_sample_labels(path, intervals, sample_rate: int) -> None:
    """``start end label`` lines, times in samples (``round(t * rate)``)."""
    lines = [f"{round(iv.start * sample_rate)} {round(iv.end * sample_rate)} {iv.label}\n" for iv in intervals]
    Path(path).write_text("".join(lines))


def write_timit(utterances, root, subset: str = "TRAIN", dialect: str = "DR1", lower_case: bool = False,
                byte_format: str = "01") -> list[tuple[str, str]]:  # fmt: skip
    """Write framework :class:`Utterance` objects in the TIMIT layout; returns ``[(utterance id, TIMIT id)]``.

    Each utterance goes to ``<root>/<subset>/<dialect>/<SPEAKER>/SX<k>.{WAV,PHN,WRD,TXT}``
    (``SPEAKER`` = its speaker upper-cased, ``SPK0`` when blank; ``k`` counts the speaker's
    utterances from 1001 in the given order, so the reader's sorted order is the given
    order within a speaker).  Audio is written as 16-bit PCM SPHERE (``to_int16``: exact
    only for audio on the int16 grid, e.g. read from PCM_16 files); ``phones`` -> .PHN,
    ``words`` -> .WRD (times rounded to samples), ``text`` -> .TXT.  ``lower_case`` writes
    the whole tree in lower case (the other convention).  The reader's id is
    ``<SPEAKER>_SX<k>``.
    """
    root = Path(root)
    counts: dict[str, int] = {}
    out = []
    for u in utterances:
        spk = (u.speaker or "spk0").upper()
        k = 1001 + counts.get(spk, 0)
        counts[spk] = k - 1000
        stem = f"SX{k}"
        d = root / subset / dialect / spk
        name = stem
        if lower_case:
            d = root / subset.lower() / dialect.lower() / spk.lower()
            name = stem.lower()
        d.mkdir(parents=True, exist_ok=True)
        ext = (lambda e: e.lower()) if lower_case else (lambda e: e)
        x = to_int16(u.audio)
        write_sphere(d / f"{name}.{ext('WAV')}", x, u.sample_rate, byte_format=byte_format,
                     utterance_id=f"{spk.lower()}_{stem.lower()}")  # fmt: skip
        if "phones" in u.tiers:
            write_sample_labels(d / f"{name}.{ext('PHN')}", u.tiers["phones"], u.sample_rate)
        if "words" in u.tiers:
            write_sample_labels(d / f"{name}.{ext('WRD')}", u.tiers["words"], u.sample_rate)
        (d / f"{name}.{ext('TXT')}").write_text(f"0 {len(x)} {u.text}\n")
        out.append((u.id, f"{spk}_{stem}"))
    return out
