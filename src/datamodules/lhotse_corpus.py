"""lhotse manifests as a corpus: any ``RecordingSet`` + ``SupervisionSet``, or a ``CutSet`` (``.jsonl`` /
``.jsonl.gz``), whose supervisions carry ``alignment`` tiers (``word``, ``phone``, ...), so every
corpus with a lhotse recipe (TIMIT, LibriSpeech with alignments, ...) works without a reader of ours.

lhotse imports torch when imported: it is imported only inside :class:`LhotseCorpus`, never by
modules that do not read lhotse manifests (install it with ``pip install -e '.[corpora]'``).

Conventions (../shared/CORPORA.md section 8):
- one utterance per supervision segment, id = the supervision id, speaker = ``speaker``,
  text = ``text``; audio = the segment's span of its recording (all channels mixed to mono),
  loaded with ``Recording.load_audio``; its length in samples comes from the manifest
  (``num_samples`` for a whole recording, else ``compute_num_samples(duration)``);
- alignment item times are relative to the **recording** (lhotse's ``AlignmentItem.start``;
  ``SupervisionSegment.with_offset`` does not move them), so a tier interval is
  ``[item.start - segment start, item.end - segment start)`` with ``item.end`` lhotse's
  ``round(start + duration, 8)``; ``alignment_times: supervision`` reads them as relative to
  the segment instead. Items with an empty symbol (silences in the LibriSpeech recipe) are dropped;
- tiers are renamed by ``tiers`` (default ``word -> words``, ``phone -> phones``; other
  alignment types keep their name);
- filters on ``speaker``, ``recording``, ``language``, ``gender`` and scalar ``custom`` fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.listed import Entry, ListedCorpus

DEFAULT_TIERS = {"word": "words", "phone": "phones"}


def _import_lhotse():
    try:
        import lhotse
    except ImportError as e:
        raise CorpusError("data=lhotse needs the package lhotse: pip install -e '.[corpora]'") from e
    return lhotse


class LhotseCorpus(ListedCorpus):
    """Utterances from lhotse manifests (see the module docstring).

    Args:
        cuts: a CutSet manifest, or
        recordings, supervisions: a RecordingSet and a SupervisionSet manifest, or
        manifest_dir + part: the recipe output ``<dir>/*_recordings_<part>.jsonl.gz`` and
            ``*_supervisions_<part>.jsonl.gz`` (e.g. part ``TRAIN`` for TIMIT, ``dev-clean`` for LibriSpeech).
        tiers: alignment type -> tier name.
        alignment_times: ``recording`` (lhotse's convention) or ``supervision``.
        filters: ``{speaker|recording|language|gender|<custom field>: value or [values]}``.
    """

    _version = "lhotse-v1"

    def __init__(
        self,
        cuts: str | Path | None = None,
        recordings: str | Path | None = None,
        supervisions: str | Path | None = None,
        manifest_dir: str | Path | None = None,
        part: str | None = None,
        tiers: Mapping[str, str] | None = None,
        alignment_times: str = "recording",
        filters: Mapping | None = None,
        sample_rate: int = 16000,
        time_tolerance: float = 0.02,
        max_utterances: int | None = None,
        name: str | None = None,
    ) -> None:
        if alignment_times not in ("recording", "supervision"):
            raise CorpusError(f"data.alignment_times must be recording or supervision; got {alignment_times!r}")
        self.sample_rate, self.time_tolerance = int(sample_rate), float(time_tolerance)
        self.tier_names = {**DEFAULT_TIERS, **dict(tiers or {})}
        if manifest_dir is not None:
            recordings, supervisions = self._find(Path(manifest_dir).expanduser(), part)
        if cuts is None and (recordings is None or supervisions is None):
            raise CorpusError("data=lhotse needs data.cuts, or data.recordings and data.supervisions, "
                              "or data.manifest_dir and data.part")  # fmt: skip
        lhotse = _import_lhotse()
        where = str(cuts or supervisions)
        self._manifest_dir = Path(where).expanduser().resolve().parent
        self.name = name or "lhotse"
        items = []  # (supervision, recording, segment start in the recording)
        if cuts is not None:
            for c in self._load(lhotse, cuts, lhotse.CutSet):
                rec = getattr(c, "recording", None)
                if rec is None:
                    raise CorpusError(f"{cuts}: cut {c.id!r} has no recording (only mono cuts with audio are read)")
                for s in c.supervisions:
                    items.append((s, rec, round(float(c.start) + float(s.start), 8)))
        else:
            recs = self._load(lhotse, recordings, lhotse.RecordingSet)
            by_id = {r.id: r for r in recs}
            for s in self._load(lhotse, supervisions, lhotse.SupervisionSet):
                if s.recording_id not in by_id:
                    raise CorpusError(f"{supervisions}: supervision {s.id!r} refers to recording {s.recording_id!r}, "
                                      f"which {recordings} does not hold")  # fmt: skip
                items.append((s, by_id[s.recording_id], float(s.start)))
        entries = [self._entry(s, rec, start, alignment_times, where) for s, rec, start in items]
        self._finish(entries, filters, f"lhotse manifest {where}")
        if max_utterances is not None:
            self._entries, self._ids = self._entries[: int(max_utterances)], self._ids[: int(max_utterances)]

    def _hash_root(self) -> Path:
        return self._manifest_dir  # the audio hashes are cached beside the manifest

    @staticmethod
    def _find(d: Path, part: str | None) -> tuple[Path, Path]:
        if part is None:
            raise CorpusError("data.manifest_dir needs data.part (e.g. TRAIN, dev-clean)")
        out = []
        for kind in ("recordings", "supervisions"):
            hits = sorted(d.glob(f"*{kind}_{part}.jsonl*"))
            if len(hits) != 1:
                have = sorted(p.name for p in d.glob("*.jsonl*"))
                raise CorpusError(f"{d}: {'no' if not hits else 'several'} *{kind}_{part}.jsonl[.gz] manifest; "
                                  f"it holds {have}")  # fmt: skip
            out.append(hits[0])
        return out[0], out[1]

    @staticmethod
    def _load(lhotse, path, kind):
        p = Path(path).expanduser()
        if not p.exists():
            raise CorpusError(f"lhotse manifest {p} does not exist")
        try:
            m = lhotse.load_manifest(p)
        except Exception as e:
            raise CorpusError(f"cannot read lhotse manifest {p}: {type(e).__name__}: {e}") from e
        if not isinstance(m, kind):
            raise CorpusError(f"lhotse manifest {p} is a {type(m).__name__}, expected a {kind.__name__}")
        return m

    def _entry(self, s, rec, start: float, alignment_times: str, where: str) -> Entry:
        from lhotse.utils import compute_num_samples

        sr = int(rec.sampling_rate)
        whole = start == 0 and abs(float(s.duration) - float(rec.duration)) < 0.5 / sr
        n = int(rec.num_samples) if whole else compute_num_samples(float(s.duration), sr)
        shift = start if alignment_times == "recording" else 0.0
        tiers: dict[str, list[Interval]] = {}
        for kind, ali in (s.alignment or {}).items():
            name = self.tier_names.get(kind, kind)
            tiers[name] = [
                Interval(round(it.start - shift, 8), round(it.end - shift, 8), str(it.symbol))
                for it in ali if str(it.symbol).strip()
            ]  # fmt: skip
        files = [src.source for src in rec.sources if src.type == "file"]
        audio_file = str(Path(files[0]).resolve()) if len(files) == 1 and len(rec.sources) == 1 else None
        key = f"{start}:{s.duration}" if audio_file else hashlib.sha256(
            (json.dumps(rec.to_dict(), sort_keys=True, default=str) + f"{start}:{s.duration}").encode()).hexdigest()  # fmt: skip

        def load(rec=rec, start=start, dur=float(s.duration), whole=whole, n=n):
            data = rec.load_audio() if whole else rec.load_audio(offset=start, duration=dur)  # (C, n)
            return data.T[:n], sr

        fields = {"speaker": str(s.speaker or ""), "recording": str(rec.id), "language": str(s.language or ""),
                  "gender": str(s.gender or "")}  # fmt: skip
        for k, v in (s.custom or {}).items():
            if isinstance(v, (str, int, float, bool)):
                fields.setdefault(k, str(v))
        return Entry(id=str(s.id), speaker=str(s.speaker or ""), text=str(s.text or ""), tiers=tiers, load=load,
                     native_samples=n, native_rate=sr, label_file=f"{where} (supervision {s.id})", audio_file=audio_file,
                     content_key=key, fields=fields)  # fmt: skip
