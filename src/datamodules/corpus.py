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
- a track must last as long as its audio: ``n_rows / rate`` may differ from the audio
  duration by at most ``max(track_tolerance, track_tolerance_fraction * duration)``
  (0.1 s and 5 % by default), else :class:`CorpusError` names the file, both durations
  and the rate that would fit (a wrong declared rate, e.g. 100 Hz for 200 Hz data,
  otherwise gives a silently misaligned probe); then the rate the data implies
  (``n_rows / audio duration``) must match the declared rate within 2 rows + 1 %
  (``track_rate_tolerance``): 210 Hz declared for 200 Hz data passes the 5 % duration
  tolerance but is an error naming the implied rate.
- track values may be NaN (a missing sample) but never inf: an inf is a :class:`CorpusError`
  naming the file, the track, the channel and the row, at read time.
- ``<id>.tracks.npz`` is read with ``allow_pickle=False``: ``names`` must be a string
  array (``np.asarray(list_of_str)``), never an object array.
- the fingerprint hashes the audio file contents (sha256); hashes are cached in
  ``<root>/.audio_hashes.json`` keyed by (path, size, mtime_ns, ctime_ns, inode), so
  unchanged files are not re-read on every run (ctime is in the key because ``mtime``
  can be set back; it cannot). A read-only root hashes without caching.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from src.fileutil import atomic_path

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
        if self.values.dtype.kind == "f":
            inf = np.isinf(self.values)  # (T, K); NaN is allowed: a missing sample (see track_items)
            if inf.any():
                t, k = (int(v[0]) for v in np.nonzero(inf))
                per = inf.sum(axis=0)
                chans = ", ".join(f"{self.names[j]!r} ({int(per[j])})" for j in np.flatnonzero(per))
                raise CorpusError(
                    f"channel {self.names[k]!r} holds {self.values[t, k]} at row {t} (t = {t / self.rate:.3f} s); "
                    f"inf values per channel: {chans}. Mark missing samples as NaN, not inf"
                )


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

    def _blank_speakers(self) -> list[int]:
        return [i for i in range(len(self)) if not str(self.speaker(i)).strip()]

    def speakers_known(self) -> bool:
        """True when every utterance has a (non-blank) speaker: a speaker split is meaningful."""
        return not self._blank_speakers()

    def _speaker_hint(self) -> str:
        return "give every utterance a speaker"

    def require_speakers(self, what: str = "split.by=speaker") -> None:
        """Raise :class:`CorpusError` (naming a file and the fix) unless ``speakers_known()``."""
        blank = self._blank_speakers()
        if blank:
            u = self.annotation(blank[0])
            raise CorpusError(
                f"{what} needs a speaker for every utterance, but {len(blank)} of {len(self)} utterances of "
                f"corpus {self.name!r} have none (e.g. {u.path or u.id}); {self._speaker_hint()}"
            )


class TextGridCorpus(Corpus):
    """A folder of ``<id>.wav`` + ``<id>.TextGrid`` (MFA layout; nested speaker folders allowed).

    Args:
        root: the folder.
        sample_rate: audio is returned at this rate (resampled with a warning otherwise).
        speaker_from: ``dir`` (parent folder name), ``prefix`` (id up to the first ``_``) or ``none``.
        require_textgrid: error when a wav has no TextGrid (else the utterance has no tiers).
        max_utterances: keep only the first N (sorted by id), for quick runs.
        track_tolerance, track_tolerance_fraction: a track may differ from its audio in
            duration by ``max(track_tolerance s, track_tolerance_fraction * duration)``.
        track_rate_tolerance, track_rate_tolerance_frames: the rate a track's data implies
            (rows / audio duration) must match its declared rate within
            ``track_rate_tolerance_frames`` rows + ``track_rate_tolerance`` (2 rows + 1 %);
            ``track_rate_tolerance=None`` skips this check (see :func:`check_track_durations`).
        hash_cache: file caching the audio hashes of the fingerprint (default
            ``<root>/.audio_hashes.json``); not written when the folder is read-only.
    """

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        speaker_from: str = "dir",
        require_textgrid: bool = True,
        max_utterances: int | None = None,
        name: str | None = None,
        track_tolerance: float = 0.1,
        track_tolerance_fraction: float = 0.05,
        hash_cache: str | Path | None = None,
        track_rate_tolerance: float | None = 0.01,
        track_rate_tolerance_frames: float = 2.0,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"corpus folder {self.root} does not exist")
        self.sample_rate = int(sample_rate)
        if speaker_from not in ("dir", "prefix", "none"):
            raise CorpusError(f"speaker_from must be 'dir', 'prefix' or 'none', got {speaker_from!r}")
        self.speaker_from = speaker_from
        self.track_tolerance = float(track_tolerance)
        self.track_tolerance_fraction = float(track_tolerance_fraction)
        self.track_rate_tolerance = None if track_rate_tolerance is None else float(track_rate_tolerance)
        self.track_rate_tolerance_frames = float(track_rate_tolerance_frames)
        self.hash_cache = Path(hash_cache) if hash_cache is not None else self.root / HASH_CACHE_NAME
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

    def _speaker_hint(self) -> str:
        if self.speaker_from == "dir":
            return (
                "speaker_from='dir' takes the speaker from the parent folder, and these files lie directly in "
                f"{self.root}: use data.speaker_from=prefix (speaker = file name up to the first '_') "
                "or put each speaker's files in a sub-folder"
            )
        return f"speaker_from={self.speaker_from!r} gives no speaker: use data.speaker_from=dir or prefix"

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
            n = len(audio) if with_audio else self.num_samples(i)
            check_track_durations(
                tracks, n / self.sample_rate, tp, self.track_tolerance, self.track_tolerance_fraction,
                self.track_rate_tolerance, self.track_rate_tolerance_frames,
            )
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
        """Hash of the sample rate, the ids and every audio file's contents (sha256).

        File hashes are cached (see the module docstring): a run re-reads only files whose
        size, mtime, ctime or inode changed.
        """
        hashes = audio_hashes(self._wavs, self.hash_cache, self.root)
        h = hashlib.sha256()
        h.update(f"content-v2:{self.sample_rate}".encode())
        for uid, p in zip(self._ids, self._wavs):
            h.update(f"{uid}:{hashes[p]}".encode())
        return h.hexdigest()[:16]


HASH_CACHE_NAME = ".audio_hashes.json"


def _file_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_sha256(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as e:
        raise CorpusError(f"cannot read audio file {path}: {e}") from e


def audio_hashes(paths: Sequence[Path], cache_file: Path | None, root: Path) -> dict[Path, str]:
    """sha256 of each file, reusing ``cache_file`` entries whose stat key is unchanged.

    The cache is JSON ``{relative path: [size, mtime_ns, ctime_ns, inode, sha256]}``,
    written atomically (a temporary file renamed); when it cannot be written (read-only
    folder) the hashes are computed and not cached.
    """
    cache: dict = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
            if not isinstance(cache, dict):
                cache = {}
        except (OSError, ValueError):
            cache = {}
    out, changed = {}, False
    for p in paths:
        try:
            st = p.stat()
        except OSError as e:
            raise CorpusError(f"cannot read audio file {p}: {e}") from e
        rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
        key = _file_key(st)
        hit = cache.get(rel)
        if isinstance(hit, list) and len(hit) == 5 and hit[:4] == key:
            out[p] = str(hit[4])
            continue
        out[p] = file_sha256(p)
        cache[rel] = [*key, out[p]]
        changed = True
    if changed and cache_file is not None:
        keep = {(p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)) for p in paths}
        # entries of files not in this corpus view (max_utterances) are kept: other views use them
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache_file) as tmp, open(tmp, "x") as fh:
                json.dump(cache, fh)
        except OSError as e:
            log.info("audio hashes not cached (%s is not writable: %s); %d files hashed", cache_file, e, len(keep))
    return out


def check_track_durations(
    tracks: dict[str, Track],
    audio_duration: float,
    path: str | Path,
    tolerance: float = 0.1,
    tolerance_fraction: float = 0.05,
    rate_tolerance: float | None = 0.01,
    rate_tolerance_frames: float = 2.0,
) -> None:
    """Every track must last as long as the audio (``rows / rate``), within the tolerance.

    The allowed difference is ``max(tolerance, tolerance_fraction * audio_duration)`` s.
    Then the rate the data implies (``rows / audio duration``) must agree with the declared
    one: ``|rows - rate * duration| <= rate_tolerance_frames + rate_tolerance * rate * duration``
    (2 rows + 1 % by default; ``rate_tolerance=None`` skips this check).  The duration check
    alone lets a 5 % rate error through (210 Hz declared for 200 Hz data), which misaligns the
    end of every utterance by 5 % of its length; 2 rows cover tracks framed with or without a
    closing row (VocalTractLab's tract states: ``samples / 110 + 1``).
    """
    allowed = max(float(tolerance), float(tolerance_fraction) * audio_duration)
    for key, tr in tracks.items():
        n = tr.values.shape[0]
        dur = n / tr.rate
        if abs(dur - audio_duration) > allowed:
            fits = f"; {n} rows over {audio_duration:.3f} s would be {n / audio_duration:.4g} Hz" if audio_duration > 0 else ""
            raise CorpusError(
                f"tracks file {path}: track {key!r} lasts {dur:.3f} s ({n} rows at the declared {tr.rate:g} Hz) "
                f"but the audio lasts {audio_duration:.3f} s (allowed difference {allowed:.3f} s){fits}; "
                "is the declared rate right?"
            )
        if rate_tolerance is None or audio_duration <= 0:
            continue
        expected = tr.rate * audio_duration  # rows the declared rate gives over the audio
        slack = float(rate_tolerance_frames) + float(rate_tolerance) * expected
        if abs(n - expected) > slack:
            implied = n / audio_duration
            raise CorpusError(
                f"tracks file {path}: track {key!r} has {n} rows over {audio_duration:.3f} s of audio: the data "
                f"implies {implied:.4g} Hz, but {tr.rate:g} Hz is declared ({expected:.1f} rows expected, allowed "
                f"{rate_tolerance_frames:g} rows + {rate_tolerance:.0%}: {slack:.1f}). A wrong rate misaligns every "
                f"frame after the first; fix the rate in the file, or, when the track deliberately starts or ends "
                f"away from the audio, set ++data.track_rate_tolerance=null"
            )


def save_tracks(path: str | Path, tracks: dict[str, Track]) -> None:
    arrays = {}
    for key, tr in tracks.items():
        arrays[f"{key}.values"] = tr.values
        arrays[f"{key}.rate"] = np.asarray(tr.rate)
        arrays[f"{key}.names"] = np.asarray(tr.names)
    np.savez(path, **arrays)


def load_tracks(path: str | Path) -> dict[str, Track]:
    """Tracks of an ``.npz`` written by :func:`save_tracks`: ``<key>.values``, ``.rate``, ``.names``.

    Read with ``allow_pickle=False``; every error names the file.
    """
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise CorpusError(f"cannot read tracks file {path}: {e}") from e
    if not hasattr(z, "files"):
        raise CorpusError(f"tracks file {path} is a single array, not an .npz archive of tracks")
    out = {}
    with z:
        keys = sorted({k.rsplit(".", 1)[0] for k in z.files})
        for k in keys:
            missing = [f"{k}.{f}" for f in ("values", "rate", "names") if f"{k}.{f}" not in z.files]
            if missing:
                raise CorpusError(f"tracks file {path}: track {k!r} lacks {missing} (it has {sorted(z.files)})")
            arrays = {}
            for f in ("values", "rate", "names"):
                try:
                    arrays[f] = z[f"{k}.{f}"]
                except ValueError as e:  # an object array: numpy refuses to unpickle it
                    what = (
                        "names must be a string array (np.asarray(list_of_str)), not an object array"
                        if f == "names"
                        else f"{f} must be a numeric array, not an object array"
                    )
                    raise CorpusError(f"tracks file {path}: {k}.{f} cannot be read without pickle: {what}") from e
                except Exception as e:
                    raise CorpusError(f"cannot read tracks file {path} ({k}.{f}): {e}") from e
            names, values, rate = arrays["names"], arrays["values"], arrays["rate"]
            if names.dtype.kind not in "US" or names.ndim != 1:
                raise CorpusError(
                    f"tracks file {path}: {k}.names must be a 1-D string array, got dtype {names.dtype} shape {names.shape}"
                )
            if rate.size != 1 or rate.dtype.kind not in "iuf" or not (np.isfinite(rate).all() and float(rate) > 0):
                raise CorpusError(f"tracks file {path}: {k}.rate must be one positive number, got {rate!r}")
            if values.dtype.kind not in "iuf":
                raise CorpusError(f"tracks file {path}: {k}.values must be numeric, got dtype {values.dtype}")
            try:
                out[k] = Track(float(rate), values.astype(np.float32), tuple(str(n) for n in names))
            except CorpusError as e:
                raise CorpusError(f"tracks file {path}: track {k!r}: {e}") from e
    return out
