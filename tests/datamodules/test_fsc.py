"""FSC datamodule on tiny fakes of both layouts (the release folder, an HF save_to_disk dataset)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.commands import command_item
from src.datamodules.corpus import CorpusError, Interval, write_textgrid
from src.datamodules.fsc import FSCCorpus

ROWS = [  # speaker, uuid, transcription, action, object, location
    ("spkA", "u1", "Turn on the lights in the kitchen", "activate", "lights", "kitchen"),
    ("spkA", "u2", "Bring me my shoes", "bring", "shoes", "none"),
    ("spkB", "u3", "Volume up", "increase", "volume", "none"),
]


def _tone(n: int, f: float, sr: int = 16000) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


@pytest.fixture
def fsc_folder(tmp_path):
    root = tmp_path / "fsc"
    (root / "data").mkdir(parents=True)
    lines = [",path,speakerId,transcription,action,object,location"]
    for j, (spk, u, text, a, o, loc) in enumerate(ROWS):
        p = root / "wavs" / "speakers" / spk / f"{u}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), _tone(8000 + 1600 * j, 200 + 50 * j), 16000, subtype="FLOAT")
        lines.append(f"{j},wavs/speakers/{spk}/{u}.wav,{spk},{text},{a},{o},{loc}")
    (root / "data" / "test_data.csv").write_text("\n".join(lines) + "\n")
    (root / "data" / "train_data.csv").write_text(lines[0] + "\n0,wavs/speakers/spkA/u1.wav,spkA,x,deactivate,lamp,bedroom\n")
    return root


def test_folder_layout_reads_slots_audio_and_classes(fsc_folder):
    c = FSCCorpus(fsc_folder, split="test")
    assert c.layout == "folder" and len(c) == 3
    assert c.ids == ["spkA__u1", "spkA__u2", "spkB__u3"]
    assert c.speaker(2) == "spkB"
    u = c[1]
    np.testing.assert_allclose(u.audio, _tone(9600, 250), atol=1e-7)
    assert u.text == "Bring me my shoes" and "words" not in u.tiers
    # classes: every value of every split file, sorted
    assert c.slot_classes()["action"] == ["activate", "bring", "deactivate", "increase"]
    assert c.slot_classes()["location"] == ["bedroom", "kitchen", "none"]
    item = command_item(c, 0)
    assert item.slots == {"action": "activate", "object": "lights", "location": "kitchen"}
    assert item.slot_words == {"action": (), "object": (), "location": ()}  # no alignment, no slot words
    with pytest.raises(CorpusError, match="spkA__u1.*no 'words' tier: it has no alignment.*textgrid_dir"):
        c.annotation(0).tier("words")
    assert c.num_samples(2) == 11200
    assert len(c.fingerprint) == 16 and c.fingerprint == FSCCorpus(fsc_folder).fingerprint


def test_folder_layout_with_textgrids_gives_words_and_literal_slot_words(fsc_folder, tmp_path):
    tg = tmp_path / "tg"
    tg.mkdir()
    words = [Interval(0.05, 0.1, "turn"), Interval(0.1, 0.15, "on"), Interval(0.15, 0.2, "the"),
             Interval(0.2, 0.3, "lights"), Interval(0.3, 0.35, "in"), Interval(0.35, 0.4, "the"),
             Interval(0.4, 0.5, "kitchen")]  # fmt: skip
    write_textgrid(tg / "u1.TextGrid", {"words": words}, 0.5)
    c = FSCCorpus(fsc_folder, textgrid_dir=tg)
    assert [w.label for w in c.annotation(0).tier("words")] == [w.label for w in words]
    item = c.command_item(0)
    assert item.slot_words == {"action": (), "object": (3,), "location": (6,)}
    assert c.command_item(1).slot_words["object"] == ()  # no TextGrid for u2: no words


def test_folder_layout_errors_name_the_problem(tmp_path, fsc_folder):
    with pytest.raises(CorpusError, match="valid_data.csv"):
        FSCCorpus(fsc_folder, split="valid")
    with pytest.raises(CorpusError, match="split must be one of"):
        FSCCorpus(fsc_folder, split="dev")
    with pytest.raises(CorpusError, match="does not exist"):
        FSCCorpus(tmp_path / "nope")


@pytest.fixture
def fsc_hf(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({
        "audio": datasets.Audio(sampling_rate=16000),
        "transcription": datasets.Value("string"),
        "action": datasets.ClassLabel(names=["activate", "bring", "change language", "deactivate", "decrease", "increase"]),
        "object": datasets.ClassLabel(names=["lights", "none_object", "shoes", "volume"]),
        "location": datasets.ClassLabel(names=["kitchen", "none_location"]),
        "textgrid": {"words": [{"text": datasets.Value("string"), "xmin": datasets.Value("float64"),
                                "xmax": datasets.Value("float64")}]},
    })  # fmt: skip
    cols = {k: [] for k in feats}
    for j, (_spk, u, text, a, o, loc) in enumerate(ROWS):
        buf = io.BytesIO()
        sf.write(buf, _tone(8000 + 1600 * j, 200 + 50 * j), 16000, format="WAV", subtype="FLOAT")
        cols["audio"].append({"bytes": buf.getvalue(), "path": f"{u}.wav"})
        cols["transcription"].append(text)
        cols["action"].append(feats["action"].names.index(a))
        cols["object"].append(feats["object"].names.index(o if o != "none" else "none_object"))
        cols["location"].append(feats["location"].names.index(loc if loc != "none" else "none_location"))
        ws = text.lower().split()
        cols["textgrid"].append({"words": [{"text": "", "xmin": 0.0, "xmax": 0.05}]
                                 + [{"text": w, "xmin": 0.05 + 0.05 * k, "xmax": 0.1 + 0.05 * k} for k, w in enumerate(ws)]})  # fmt: skip
    # Audio's storage is struct<bytes, path>; written as that struct because encoding through
    # datasets.Audio needs torchcodec (not installed), then declared Audio in the saved features
    plain = datasets.Features({**feats, "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    ds = datasets.Dataset.from_dict(cols, features=plain)
    path = tmp_path / "FSC_test_sampled"
    datasets.DatasetDict({"test": ds}).save_to_disk(str(path))
    # as the tutorial's dataset: a decoding Audio feature (writing one here would need torchcodec)
    info = path / "test" / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["features"]["audio"] = {"sampling_rate": 16000, "decode": True, "_type": "Audio"}
    info.write_text(json.dumps(meta))
    assert datasets.load_from_disk(str(path))["test"].features["audio"].decode
    return path


def test_hf_layout_class_labels_textgrid_and_audio(fsc_hf):
    c = FSCCorpus(fsc_hf, split=None)
    assert c.layout == "hf" and c.ids == ["u1", "u2", "u3"]
    assert c.slot_classes()["object"] == ["lights", "none_object", "shoes", "volume"]
    item = c.command_item(1)
    assert item.slots == {"action": "bring", "object": "shoes", "location": "none_location"}
    assert item.slot_words["object"] == (3,) and item.slot_words["location"] == ()
    u = c[2]
    np.testing.assert_allclose(u.audio, _tone(11200, 300), atol=1e-7)
    assert [w.label for w in u.tier("words")] == ["volume", "up"]  # the silence entry is dropped
    assert u.tier("words")[0] == Interval(0.05, 0.1, "volume")


def test_hf_layout_shuffle_matches_datasets_shuffle(fsc_hf):
    import datasets

    ref = datasets.load_from_disk(str(fsc_hf))["test"].shuffle(seed=42)
    c = FSCCorpus(fsc_hf, split="test", shuffle_seed=42)
    assert [c.annotation(i).text for i in range(len(c))] == ref["transcription"]
    # the tutorial's example: row 0 of the seed-85 shuffle of the seed-42-shuffled dataset
    from src.datamodules.fsc import shuffled_row

    twice = ref.shuffle(seed=85)["transcription"]
    for row in range(len(c)):
        assert c.annotation(shuffled_row(len(c), 85, row)).text == twice[row]
    one = FSCCorpus(fsc_hf, split="test", shuffle_seed=42, rows=[0], rows_shuffle_seed=85)  # the tutorial's item
    assert len(one) == 1 and one.annotation(0).text == twice[0]
    k = [r[2] for r in ROWS].index(twice[0])
    np.testing.assert_allclose(one[0].audio, _tone(8000 + 1600 * k, 200 + 50 * k), atol=1e-7)
    assert FSCCorpus(fsc_hf, rows=[2, 0]).ids == ["u3", "u1"]
    with pytest.raises(CorpusError, match="row 5 is outside"):
        FSCCorpus(fsc_hf, rows=[5])
    with pytest.raises(CorpusError, match="splits \\['test'\\], not 'train'"):
        FSCCorpus(fsc_hf, split="train")
