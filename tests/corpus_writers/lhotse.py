"""lhotse manifests written by lhotse itself (CORPORA.md section 8): ``recordings.jsonl.gz`` +
``supervisions.jsonl.gz`` or ``cuts.jsonl.gz``, one whole-file supervision per recording with
``alignment={"word": [...], "phone": [...]}`` (times in seconds from the recording start)."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from tests.corpus_writers import pcm16


def write_lhotse(root, utts, kind: str = "sets", prefix: str = "corpus", part: str = "all") -> dict[str, Path]:
    """Write ``<root>/audio/<id>.wav`` and the manifests; returns the manifest paths by kind."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.supervision import AlignmentItem

    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    recs, sups = [], []
    for u in utts:
        wav = root / "audio" / f"{u.id}.wav"
        sf.write(wav, pcm16(u.audio), u.sample_rate, subtype="PCM_16")
        rec = Recording.from_file(wav, recording_id=u.id)
        recs.append(rec)
        ali = {kind_: [AlignmentItem(symbol=iv.label, start=iv.start, duration=round(iv.end - iv.start, 8)) for iv in u.tiers[tier]]
               for kind_, tier in (("word", "words"), ("phone", "phones")) if tier in u.tiers}  # fmt: skip
        sups.append(SupervisionSegment(id=u.id, recording_id=u.id, start=0.0, duration=rec.duration, channel=0,
                                       text=u.text, language="English", speaker=u.speaker, alignment=ali))  # fmt: skip
    rs, ss = RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)
    out = {}
    if kind == "sets":
        out["recordings"] = root / f"{prefix}_recordings_{part}.jsonl.gz"
        out["supervisions"] = root / f"{prefix}_supervisions_{part}.jsonl.gz"
        rs.to_file(out["recordings"])
        ss.to_file(out["supervisions"])
    else:
        out["cuts"] = root / f"{prefix}_cuts_{part}.jsonl.gz"
        CutSet.from_manifests(recordings=rs, supervisions=ss).to_file(out["cuts"])
    return out
