"""A corpus planned up front as a list of entries: the shared machinery of the corpus readers
(Buckeye, LibriSpeech, lhotse manifests, Hugging Face datasets).

A reader builds one :class:`Entry` per utterance (id, speaker, text, tiers, the audio it
reads and its length in samples read from a header or a manifest, filterable fields) and
hands the list to :meth:`ListedCorpus._finish`, which, before any audio is decoded or any
activation extracted:

- applies ``filters`` (``{field: value or [values]}``); a filter that keeps nothing is a
  :class:`CorpusError` naming the values present;
- checks every interval: ``start < end`` and ``end <= duration + time_tolerance``; an
  interval past the audio is a :class:`CorpusError` naming the label file, the utterance,
  the tier, the label and both times.

Audio is returned float32 mono at ``sample_rate`` (resampled with the exact polyphase
ratio of :func:`~src.datamodules.corpus.resample` otherwise).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from src.datamodules.corpus import Corpus, CorpusError, Interval, Utterance, audio_hashes, resample


@dataclass
class Entry:
    """One planned utterance.

    ``load()`` returns ``(audio (n,) or (n, C) float32, native sample rate)``;
    ``native_samples`` / ``native_rate`` are its length and rate from a header or manifest
    (no decoding); ``audio_file`` (a path) is hashed for the fingerprint, else ``content_key``
    (a string identifying the audio content) is.
    """

    id: str
    speaker: str
    text: str
    tiers: dict[str, list[Interval]]
    load: Callable[[], tuple[np.ndarray, int]]
    native_samples: int
    native_rate: int
    label_file: str = ""  # the file the tiers came from (error messages)
    audio_file: str | None = None
    content_key: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    tier_files: dict[str, str] = field(default_factory=dict)  # tier -> its file, where tiers come from several


def num_samples_at(n: int, orig_sr: int, target_sr: int) -> int:
    """Length of ``n`` samples at ``orig_sr`` after :func:`resample` to ``target_sr``."""
    if orig_sr == target_sr:
        return int(n)
    r = Fraction(int(target_sr), int(orig_sr))
    return int(math.ceil(n * r.numerator / r.denominator))


def as_list(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (str, int, float)):
        return [str(v)]
    return [str(x) for x in v]


def drop_blank_tiers(tiers: Mapping[str, list[Interval]]) -> dict[str, list[Interval]]:
    """Tiers with empty-label intervals removed (silences written as "" in MFA / CorentinJ / lhotse)."""
    return {k: [iv for iv in v if str(iv.label).strip()] for k, v in tiers.items()}


class ListedCorpus(Corpus):
    """Base of the list-planned readers (see the module docstring)."""

    sample_rate: int = 16000
    time_tolerance: float = 0.02
    _version = "listed-v1"

    def _finish(self, entries: list[Entry], filters: Mapping | None, where: str) -> None:
        entries = self._apply_filters(entries, filters or {}, where)
        if not entries:
            raise CorpusError(f"{where}: no utterances found")
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            seen, dup = set(), None
            for x in ids:
                if x in seen:
                    dup = x
                    break
                seen.add(x)
            raise CorpusError(f"{where}: duplicate utterance id {dup!r}")
        for e in entries:
            self._check_times(e)
        self._entries = entries
        self._ids = ids
        self._annotations: dict[int, Utterance] = {}

    @staticmethod
    def _apply_filters(entries: list[Entry], filters: Mapping, where: str) -> list[Entry]:
        for key, allowed in dict(filters).items():
            if allowed is None:
                continue
            want = set(as_list(allowed))
            present = sorted({e.fields.get(key, "") for e in entries})
            if all(key not in e.fields for e in entries):
                known = sorted({k for e in entries for k in e.fields})
                raise CorpusError(f"{where}: data.filters.{key}: no such field; the utterances have the fields {known}")
            kept = [e for e in entries if e.fields.get(key) in want]
            if not kept:
                shown = present[:30] + (["..."] if len(present) > 30 else [])
                raise CorpusError(
                    f"{where}: data.filters.{key}={sorted(want)} selects no utterance; the values present are {shown}"
                )
            entries = kept
        return entries

    def _check_times(self, e: Entry) -> None:
        dur = e.native_samples / e.native_rate
        for name, ivs in e.tiers.items():
            src = e.tier_files.get(name, e.label_file) or e.id
            for iv in ivs:
                if not (iv.end > iv.start) or not (math.isfinite(iv.start) and math.isfinite(iv.end)):
                    raise CorpusError(
                        f"{src}: utterance {e.id!r} tier {name!r} interval {iv.label!r} "
                        f"[{iv.start}, {iv.end}) has end <= start"
                    )
                if iv.end > dur + self.time_tolerance:
                    raise CorpusError(
                        f"{src}: utterance {e.id!r} tier {name!r} label {iv.label!r} ends at "
                        f"{iv.end:.4f} s, past the end of its audio ({dur:.4f} s = {e.native_samples} samples at "
                        f"{e.native_rate} Hz{', ' + e.audio_file if e.audio_file else ''})"
                    )

    # -- Corpus ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def entry(self, i: int) -> Entry:
        return self._entries[i]

    def speaker(self, i: int) -> str:
        return self._entries[i].speaker

    def num_samples(self, i: int) -> int:
        e = self._entries[i]
        return num_samples_at(e.native_samples, e.native_rate, self.sample_rate)

    def _utterance(self, i: int, audio: np.ndarray) -> Utterance:
        e = self._entries[i]
        return Utterance(
            id=e.id, audio=audio, sample_rate=self.sample_rate, speaker=e.speaker, text=e.text,
            tiers={k: list(v) for k, v in e.tiers.items()}, path=e.audio_file or e.label_file,
        )  # fmt: skip

    def annotation(self, i: int) -> Utterance:
        if i not in self._annotations:
            self._annotations[i] = self._utterance(i, np.zeros(0, np.float32))
        return self._annotations[i]

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(i) % len(self)
        e = self._entries[i]
        try:
            data, sr = e.load()
        except CorpusError:
            raise
        except Exception as err:
            raise CorpusError(f"utterance {e.id!r}: cannot read its audio ({e.audio_file or e.content_key}): {err}") from err
        data = np.asarray(data, dtype=np.float32)
        audio = data.mean(axis=1) if data.ndim == 2 else data  # (n,)
        if int(sr) != self.sample_rate:
            audio = resample(audio, int(sr), self.sample_rate)
        if audio.size == 0:
            raise CorpusError(f"utterance {e.id!r}: its audio ({e.audio_file or e.content_key}) is empty")
        if not np.isfinite(audio).all():
            raise CorpusError(f"utterance {e.id!r}: its audio ({e.audio_file or e.content_key}) has NaN or inf samples")
        return self._utterance(i, np.ascontiguousarray(audio, np.float32))

    def _hash_root(self) -> Path | None:
        """Folder for the cached audio hashes (None: do not cache)."""
        return None

    @property
    def fingerprint(self) -> str:
        """Hash of the reader version, sample rate, ids, audio (file sha256 or content key) and segment bounds."""
        files = sorted({Path(e.audio_file) for e in self._entries if e.audio_file})
        root = self._hash_root()
        hashes = audio_hashes(files, root / ".audio_hashes.json" if root else None, root or Path("/")) if files else {}
        h = hashlib.sha256(f"{self._version}:{self.sample_rate}".encode())
        for e in self._entries:
            a = hashes[Path(e.audio_file)] if e.audio_file else e.content_key
            h.update(f"{e.id}:{a}:{e.content_key if e.audio_file else ''}:{e.native_samples}\n".encode())
        return h.hexdigest()[:16]
