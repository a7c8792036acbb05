"""Write utterances in the HPRC layout (../shared/CORPORA.md sections 1.2, 1.6), for reader tests.

``write_hprc(utterances, root)`` writes ``<root>/<participant>/data/<stem>.mat``: a MATLAB v5
file (``scipy.io.savemat``, zlib-compressed as the real files) holding one variable named
after the stem, a 1 x C struct array with the fields ``NAME, SRATE, SIGNAL, SOURCE, SENTENCE,
WORDS, PHONES, LABELS``:

- entry 0 ``AUDIO``: SIGNAL (N, 1) float32 at the utterance's sample rate (or ``audio_rate``,
  resampled), SOURCE, SENTENCE = ``utt.text``, WORDS / PHONES from the ``words`` / ``phones``
  tiers (LABEL, OFFS [start, end] s), LABELS = the words in ms (NAME, OFFSET, VALUE, HOOK);
- one entry per sensor of the track ``track`` (channels named ``<SENSOR>_<axis>``, axis x/y/z):
  SIGNAL (T, 6) float32, columns 0-2 = x, y, z (axes the track lacks are 0), 3-5 orientation
  (0 here), SRATE = the track rate; the other fields empty (1, 0) arrays, as in real files.

Stems: ``utt.id`` when it is an HPRC name (``F02_B01_S26_R01_N``), else
``<speaker>_B01_S<nn>_R01_N`` with ``nn`` = the utterance's position (1-based); the speaker is
reduced to letters and digits.  Returns ``{utt.id: path}``.  Tiers other than words/phones
(e.g. syllables) have no place in HPRC and are not written.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

FIELDS = ("NAME", "SRATE", "SIGNAL", "SOURCE", "SENTENCE", "WORDS", "PHONES", "LABELS")
_HPRC = re.compile(r"^[A-Za-z0-9]+_B\d+_S\d+_R\d+_[NF]$")


def _empty() -> np.ndarray:
    return np.zeros((1, 0))  # what real files hold in unused fields


def _tier_struct(intervals) -> np.ndarray:
    if not intervals:
        return _empty()
    s = np.empty((1, len(intervals)), dtype=[("LABEL", object), ("OFFS", object)])
    for k, iv in enumerate(intervals):
        s[0, k] = (str(iv.label), np.array([[float(iv.start), float(iv.end)]]))
    return s


def _labels_struct(words) -> np.ndarray:
    if not words:
        return _empty()
    s = np.empty(
        (1, len(words)), dtype=[("NAME", object), ("OFFSET", object), ("VALUE", object), ("HOOK", object)]
    )
    for k, iv in enumerate(words):
        s[0, k] = (
            str(iv.label),
            float(iv.start) * 1000.0,
            (float(iv.end) - float(iv.start)) * 1000.0,
            _empty(),
        )
    return s


def stem_for(utt, position: int) -> str:
    if _HPRC.match(utt.id):
        return utt.id
    spk = re.sub(r"[^A-Za-z0-9]", "", utt.speaker or "X01") or "X01"
    return f"{spk}_B01_S{position:02d}_R01_N"


def hprc_struct(utt, track: str = "ema", audio_rate: int | None = None, source: str = "") -> np.ndarray:
    """The 1 x C struct array of one utterance."""
    audio = np.asarray(utt.audio, dtype=np.float32)
    rate = utt.sample_rate
    if audio_rate is not None and audio_rate != rate:
        from fractions import Fraction

        from scipy.signal import resample_poly

        r = Fraction(int(audio_rate), int(rate))
        audio = resample_poly(audio.astype(np.float64), r.numerator, r.denominator).astype(np.float32)
        rate = int(audio_rate)
    sensors: dict[str, dict[str, np.ndarray]] = {}
    tr = utt.tracks.get(track)
    if tr is not None:
        for k, name in enumerate(tr.names):
            sensor, _, axis = name.rpartition("_")
            if not sensor or axis.lower() not in ("x", "y", "z"):
                raise ValueError(f"utterance {utt.id!r}: track channel {name!r} is not <SENSOR>_<x|y|z>")
            sensors.setdefault(sensor, {})[axis.lower()] = tr.values[:, k]
    arr = np.empty((1, 1 + len(sensors)), dtype=[(f, object) for f in FIELDS])
    words, phones = utt.tiers.get("words", []), utt.tiers.get("phones", [])
    arr[0, 0] = ("AUDIO", float(rate), audio.reshape(-1, 1), source or utt.id, utt.text,
                 _tier_struct(words), _tier_struct(phones), _labels_struct(words))  # fmt: skip
    for j, (sensor, axes) in enumerate(sensors.items(), start=1):
        T = len(next(iter(axes.values())))
        sig = np.zeros((T, 6), np.float32)
        for a, col in axes.items():
            sig[:, "xyz".index(a)] = col
        arr[0, j] = (sensor, float(tr.rate), sig, _empty(), _empty(), _empty(), _empty(), _empty())
    return arr


def write_hprc(
    utterances, root: str | Path, track: str = "ema", audio_rate: int | None = None
) -> dict[str, Path]:
    """Write every utterance as ``<root>/<participant>/data/<stem>.mat``; returns ``{utt.id: path}``."""
    import scipy.io

    root = Path(root)
    out = {}
    for pos, utt in enumerate(utterances, start=1):
        stem = stem_for(utt, pos)
        d = root / stem.split("_")[0] / "data"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{stem}.mat"
        scipy.io.savemat(str(path), {stem: hprc_struct(utt, track, audio_rate)}, do_compression=True)
        out[utt.id] = path
    return out
