"""Corpus data types and readers.

Every corpus reader yields :class:`Utterance` objects, whatever the file format.  The
layout read here is the one the Montreal Forced Aligner users already have: a folder
(possibly nested, e.g. one sub-folder per speaker) of ``<id>.wav`` files, each with a
``<id>.TextGrid`` beside it.  Optional ``<id>.tracks.npz`` files hold continuous tracks
(e.g. EMA) as ``rate``, ``values (T, K)`` and ``names``.

Conventions (tested in tests/datamodules/test_corpus.py):
- audio is float32 mono in [-1, 1] at the corpus sample rate; other rates are resampled
  (with a warning naming the file), stereo is downmixed (with a warning).
- intervals are half-open ``[start, end)`` in seconds; empty labels are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class CorpusError(ValueError):
    """Bad corpus input; the message names the file or utterance."""


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    label: str


@dataclass(frozen=True)
class Track:
    """A continuous track sampled at ``rate`` Hz: ``values[t]`` stands for time ``t / rate``."""

    rate: float
    values: np.ndarray  # (T, K)
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise CorpusError(f"track values {self.values.shape} do not match {len(self.names)} names")


@dataclass
class Utterance:
    id: str
    audio: np.ndarray  # (n,) float32 mono
    sample_rate: int
    speaker: str = ""
    text: str = ""
    tiers: dict[str, list[Interval]] = field(default_factory=dict)
    tracks: dict[str, Track] = field(default_factory=dict)
    path: str = ""

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def tier(self, name: str) -> list[Interval]:
        if name not in self.tiers:
            raise CorpusError(
                f"utterance {self.id!r} ({self.path or 'in memory'}) has no tier {name!r}; "
                f"it has {sorted(self.tiers)}"
            )
        return self.tiers[name]


# ----------------------------------------------------------------------------- audio


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact rational ratio."""
    if orig_sr == target_sr:
        return audio
    from scipy.signal import resample_poly

    ratio = Fraction(target_sr, orig_sr)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read a sound file as float32 mono at ``sample_rate``; clear errors name the file."""
    import soundfile as sf

    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (n, C)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        raise CorpusError(f"cannot read audio file {path}: {e}") from e
    if data.shape[1] > 1:
        warnings.warn(f"{path}: {data.shape[1]} channels, downmixed to mono", stacklevel=2)
    audio = data.mean(axis=1)  # (n,)
    if sr != sample_rate:
        warnings.warn(f"{path}: sample rate {sr} Hz, resampled to {sample_rate} Hz", stacklevel=2)
        audio = resample(audio, sr, sample_rate)
    if audio.size == 0:
        raise CorpusError(f"audio file {path} is empty")
    if not np.isfinite(audio).all():
        raise CorpusError(f"audio file {path} contains NaN or inf samples")
    return np.ascontiguousarray(audio, dtype=np.float32)


# ----------------------------------------------------------------------------- TextGrid


def read_textgrid(path: str | Path) -> dict[str, list[Interval]]:
    """Interval tiers of a Praat TextGrid (praatio), empty labels dropped."""
    from praatio import textgrid

    path = Path(path)
    try:
        tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    except Exception as e:
        raise CorpusError(f"cannot read TextGrid {path}: {e}") from e
    tiers: dict[str, list[Interval]] = {}
    for name in tg.tierNames:
        tier = tg.getTier(name)
        if tier.tierType != textgrid.INTERVAL_TIER:
            continue
        tiers[name] = [Interval(float(s), float(e), str(lab)) for s, e, lab in tier.entries if str(lab).strip()]
    return tiers


def write_textgrid(path: str | Path, tiers: dict[str, list[Interval]], duration: float) -> None:
    from praatio import textgrid

    tg = textgrid.Textgrid(minTimestamp=0.0, maxTimestamp=duration)
    for name, intervals in tiers.items():
        entries = [(i.start, min(i.end, duration), i.label) for i in intervals if i.end > i.start]
        tg.addTier(textgrid.IntervalTier(name, entries, 0.0, duration))
    tg.save(str(path), format="long_textgrid", includeBlankSpaces=True)


def validate_alignment(utt: Utterance, tolerance: float = 0.02, duration: float | None = None) -> None:
    """Intervals must lie inside the audio (plus ``tolerance`` s) and have start < end."""
    dur = utt.duration if duration is None else duration
    for name, intervals in utt.tiers.items():
        for iv in intervals:
            if not (iv.end > iv.start):
                raise CorpusError(f"utterance {utt.id!r} ({utt.path}): tier {name!r} interval {iv} has end <= start")
            if iv.end > dur + tolerance:
                raise CorpusError(
                    f"utterance {utt.id!r} ({utt.path}): tier {name!r} interval {iv.label!r} ends at "
                    f"{iv.end:.3f} s, beyond the audio end {dur:.3f} s"
                )


# ----------------------------------------------------------------------------- corpus


class Corpus(Sequence[Utterance]):
    """An ordered, indexable collection of utterances with a content fingerprint."""

    name: str = "corpus"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i):  # type: ignore[override]
        raise NotImplementedError

    def __iter__(self) -> Iterator[Utterance]:
        for i in range(len(self)):
            yield self[i]

    @property
    def ids(self) -> list[str]:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    def num_samples(self, i: int) -> int:
        """Audio length of utterance ``i`` in samples at the corpus sample rate (cheap)."""
        return len(self[i].audio)

    def speaker(self, i: int) -> str:
        return self[i].speaker

    def annotation(self, i: int) -> Utterance:
        """Utterance ``i`` with its tiers, tracks and text (audio may be left out: cheap)."""
        return self[i]


class TextGridCorpus(Corpus):
    """A folder of ``<id>.wav`` + ``<id>.TextGrid`` (MFA layout; nested speaker folders allowed).

    Args:
        root: the folder.
        sample_rate: audio is returned at this rate (resampled with a warning otherwise).
        speaker_from: ``dir`` (parent folder name), ``prefix`` (id up to the first ``_``) or ``none``.
        require_textgrid: error when a wav has no TextGrid (else the utterance has no tiers).
        max_utterances: keep only the first N (sorted by id), for quick runs.
    """

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        speaker_from: str = "dir",
        require_textgrid: bool = True,
        max_utterances: int | None = None,
        name: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"corpus folder {self.root} does not exist")
        self.sample_rate = int(sample_rate)
        self.speaker_from = speaker_from
        self.name = name or self.root.name
        wavs = sorted(self.root.rglob("*.wav"), key=lambda p: (p.relative_to(self.root).as_posix()))
        if not wavs:
            raise CorpusError(f"corpus folder {self.root} holds no .wav files")
        if max_utterances is not None:
            wavs = wavs[: int(max_utterances)]
        self._wavs = wavs
        self._ids = [self._id_of(p) for p in wavs]
        if len(set(self._ids)) != len(self._ids):
            raise CorpusError(f"corpus folder {self.root}: duplicate utterance ids")
        if require_textgrid:
            missing = [str(p) for p in wavs if not p.with_suffix(".TextGrid").exists()]
            if missing:
                raise CorpusError(f"{len(missing)} wav files have no TextGrid beside them, e.g. {missing[0]}")
        self._annotations: dict[int, Utterance] = {}

    def _id_of(self, p: Path) -> str:
        return p.relative_to(self.root).with_suffix("").as_posix().replace("/", "__")

    def _speaker_of(self, p: Path) -> str:
        if self.speaker_from == "dir":
            return p.parent.name if p.parent != self.root else ""
        if self.speaker_from == "prefix":
            return p.stem.split("_")[0]
        return ""

    def __len__(self) -> int:
        return len(self._wavs)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def speaker(self, i: int) -> str:
        return self._speaker_of(self._wavs[i])

    def annotation(self, i: int) -> Utterance:
        # memoised: tiers and tracks are small, and tasks, splits and analyses all read them
        if i not in self._annotations:
            self._annotations[i] = self._load(i, with_audio=False)
        return self._annotations[i]

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        return self._load(i, with_audio=True)

    def _load(self, i: int, with_audio: bool) -> Utterance:
        p = self._wavs[i]
        audio = read_audio(p, self.sample_rate) if with_audio else np.zeros(0, np.float32)
        tg = p.with_suffix(".TextGrid")
        tiers = read_textgrid(tg) if tg.exists() else {}
        tracks = {}
        tp = p.with_suffix(".tracks.npz")
        if tp.exists():
            tracks = load_tracks(tp)
        meta = p.with_suffix(".json")
        text = ""
        if meta.exists():
            text = json.loads(meta.read_text()).get("text", "")
        utt = Utterance(
            id=self._ids[i],
            audio=audio,
            sample_rate=self.sample_rate,
            speaker=self._speaker_of(p),
            text=text,
            tiers=tiers,
            tracks=tracks,
            path=str(p),
        )
        validate_alignment(utt, duration=None if with_audio else self.num_samples(i) / self.sample_rate)
        return utt

    def num_samples(self, i: int) -> int:
        import soundfile as sf

        p = self._wavs[i]
        try:
            info = sf.info(str(p))
        except Exception as e:
            raise CorpusError(f"cannot read audio file {p}: {e}") from e
        if info.samplerate == self.sample_rate:
            return int(info.frames)
        r = Fraction(self.sample_rate, info.samplerate)  # resample_poly's output length
        return int(math.ceil(info.frames * r.numerator / r.denominator))

    @property
    def fingerprint(self) -> str:
        """Hash of ids, file sizes and modification times (cheap; changes when files change)."""
        h = hashlib.sha256()
        h.update(f"{self.sample_rate}".encode())
        for uid, p in zip(self._ids, self._wavs):
            st = p.stat()
            h.update(f"{uid}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def save_tracks(path: str | Path, tracks: dict[str, Track]) -> None:
    arrays = {}
    for key, tr in tracks.items():
        arrays[f"{key}.values"] = tr.values
        arrays[f"{key}.rate"] = np.asarray(tr.rate)
        arrays[f"{key}.names"] = np.asarray(tr.names)
    np.savez(path, **arrays)


def load_tracks(path: str | Path) -> dict[str, Track]:
    try:
        z = np.load(path)
    except Exception as e:
        raise CorpusError(f"cannot read tracks file {path}: {e}") from e
    keys = sorted({k.rsplit(".", 1)[0] for k in z.files})
    return {
        k: Track(float(z[f"{k}.rate"]), z[f"{k}.values"].astype(np.float32), tuple(str(n) for n in z[f"{k}.names"]))
        for k in keys
    }
