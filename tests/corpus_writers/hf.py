"""Hugging Face datasets in the two common alignment layouts (CORPORA.md section 9), saved with save_to_disk:

- ``timit``: the ``timit_asr`` schema (``file``, ``audio``, ``text``, ``phonetic_detail`` / ``word_detail`` as
  ``Sequence({"start": int64, "stop": int64, "utterance": string})`` in 16 kHz sample indices,
  ``dialect_region``, ``sentence_type``, ``speaker_id``, ``id``);
- ``librispeech``: the ``gilkeyio/librispeech-alignments`` schema (``sex``, ``subset``, ``id``, ``audio``,
  ``transcript``, ``words: [{end, start, word}]``, ``phonemes: [{end, phoneme, start}]`` in seconds).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import soundfile as sf

from tests.corpus_writers import pcm16


def _wav_bytes(u) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm16(u.audio), u.sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def write_hf(path, utts, layout: str = "timit", split: str | None = None):
    """Save the utterances as a dataset (a DatasetDict when ``split`` is given); returns the Dataset."""
    import datasets

    if layout == "timit":
        def detail(ivs, sr):
            return {"start": [round(iv.start * sr) for iv in ivs], "stop": [round(iv.end * sr) for iv in ivs],
                    "utterance": [iv.label for iv in ivs]}  # fmt: skip

        seq = datasets.Sequence({"start": datasets.Value("int64"), "stop": datasets.Value("int64"),
                                 "utterance": datasets.Value("string")})  # fmt: skip
        features = datasets.Features({
            "file": datasets.Value("string"), "audio": datasets.Audio(sampling_rate=16000), "text": datasets.Value("string"),
            "phonetic_detail": seq, "word_detail": seq, "dialect_region": datasets.Value("string"),
            "sentence_type": datasets.Value("string"), "speaker_id": datasets.Value("string"), "id": datasets.Value("string"),
        })  # fmt: skip
        data = {
            "file": [f"/data/TRAIN/DR1/{u.speaker}/{u.id}.WAV" for u in utts],
            "audio": [{"bytes": _wav_bytes(u), "path": f"{u.id}.WAV"} for u in utts],
            "text": [u.text for u in utts],
            "phonetic_detail": [detail(u.tiers["phones"], u.sample_rate) for u in utts],
            "word_detail": [detail(u.tiers["words"], u.sample_rate) for u in utts],
            "dialect_region": ["DR1" for _ in utts],
            "sentence_type": ["SX" for _ in utts],
            "speaker_id": [u.speaker for u in utts],
            "id": [u.id for u in utts],
        }
    elif layout == "librispeech":
        features = datasets.Features({
            "sex": datasets.Value("string"), "subset": datasets.Value("string"), "id": datasets.Value("string"),
            "audio": datasets.Audio(sampling_rate=16000), "transcript": datasets.Value("string"),
            "words": datasets.List({"end": datasets.Value("float64"), "start": datasets.Value("float64"),
                                    "word": datasets.Value("string")}),
            "phonemes": datasets.List({"end": datasets.Value("float64"), "phoneme": datasets.Value("string"),
                                       "start": datasets.Value("float64")}),
            "speaker": datasets.Value("string"),
        })  # fmt: skip
        data = {
            "sex": ["F" for _ in utts], "subset": ["dev_clean" for _ in utts], "id": [u.id for u in utts],
            "audio": [{"bytes": _wav_bytes(u), "path": f"{u.id}.flac"} for u in utts],
            "transcript": [u.text for u in utts],
            "words": [[{"end": w.end, "start": w.start, "word": w.label} for w in u.tiers["words"]] for u in utts],
            "phonemes": [[{"end": p.end, "phoneme": p.label, "start": p.start} for p in u.tiers["phones"]] for u in utts],
            "speaker": [u.speaker for u in utts],
        }
    else:
        raise ValueError(layout)
    # Audio's storage is struct<bytes, path>: written as that struct (encoding through datasets.Audio needs
    # torchcodec, not installed), then declared Audio(sampling_rate=16000) in the saved features, as on the hub
    plain = datasets.Features({**features, "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    ds = datasets.Dataset.from_dict(data, features=plain)
    path = Path(path)
    (datasets.DatasetDict({split: ds}) if split else ds).save_to_disk(str(path))
    info = (path / split if split else path) / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["features"]["audio"] = {"sampling_rate": 16000, "decode": True, "_type": "Audio"}
    info.write_text(json.dumps(meta))
    return ds
