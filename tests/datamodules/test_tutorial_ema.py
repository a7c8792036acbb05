"""data=tutorial_ema: the tutorial's pickle + CSV written as the notebooks read them (CORPORA.md 1.4), read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.datamodules.corpus import CorpusError
from src.datamodules.tutorial_ema import CSV_CHANNELS, TutorialEMACorpus
from tests.conftest import ROOT

# the pickle's row order is not sorted (the notebook prints S26, S57, S49, ... first); B02 rows interleave
ROWS = [("F02_B01_S26_R01_N.mat", "Two blue fish swam in the tank."), ("F02_B02_S03_R01_N.mat", "A B02 sentence."),
        ("F02_B01_S57_R01_N.mat", "March the soldiers past the next hill."),
        ("F02_B01_S49_R01_N.mat", "The friendly gang left the drug store.")]  # fmt: skip


def write_tutorial(root: Path, participant: str = "F02", rows=ROWS, seed: int = 0, drop_csv_for: str | None = None,
                   ema_frames_extra: int = 0) -> dict:  # fmt: skip
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    audio, ema, lab_rows = {}, {}, []
    for fn, sent in rows:
        fn = fn.replace("F02", participant)
        n = int(rng.integers(16000, 24000))
        audio[fn] = rng.uniform(-0.3, 0.3, n).astype(np.float32)
        T = n // 320 + ema_frames_extra
        ema[fn] = rng.standard_normal((T, 12)) * 10
        if fn == drop_csv_for:
            continue
        for t in range(T):
            lab_rows.append(
                {"FILENAME": fn, "SENTENCE": sent, "TIMESTEP": t, **dict(zip(CSV_CHANNELS, ema[fn][t]))}
            )
    df = pd.DataFrame({"FILENAME": list(audio), "SENTENCE": [s for _, s in rows], "AUDIO": list(audio.values())},
                      index=[0, 2, 4, 5][: len(rows)])  # a non-contiguous index, as the real pickle  # fmt: skip
    df.to_pickle(root / f"ema_audio_{participant}.pkl")
    pd.DataFrame(lab_rows).to_csv(
        root / f"ema_labels_{participant}.csv", index=False
    )  # no index column, as the real CSV
    return {"audio": audio, "ema": ema}


def test_pickle_needs_the_opt_in(tmp_path):
    write_tutorial(tmp_path)
    with pytest.raises(CorpusError, match=r"ema_audio_F02.pkl is a pickle.*data.allow_pickle=true.*"
                       r"python -m src.datamodules.tutorial_ema convert"):  # fmt: skip
        TutorialEMACorpus(tmp_path)


def test_every_field_read_back_from_the_pickle(tmp_path):
    held = write_tutorial(tmp_path)
    with pytest.warns(UserWarning, match="reading the pickle"):
        c = TutorialEMACorpus(tmp_path, allow_pickle=True)
    assert c.ids == [fn.removesuffix(".mat") for fn, _ in ROWS]  # the pickle's order
    for i, (fn, sent) in enumerate(ROWS):
        u = c[i]
        assert u.text == sent and u.speaker == "F02" and u.sample_rate == 16000 and u.tiers == {}
        assert u.audio.tobytes() == held["audio"][fn].tobytes()
        tr = u.tracks["ema"]
        assert tr.rate == 50.0
        assert tr.names == (
            "TR_x",
            "TR_y",
            "TB_x",
            "TB_y",
            "TT_x",
            "TT_y",
            "UL_x",
            "UL_y",
            "LL_x",
            "LL_y",
            "JAW_x",
            "JAW_y",
        )
        np.testing.assert_allclose(
            tr.values, held["ema"][fn], rtol=1e-6, atol=1e-5
        )  # float32 of the CSV's values
    with pytest.warns(UserWarning):
        b01 = TutorialEMACorpus(tmp_path, allow_pickle=True, blocks=["B01"], channels=["TB_x", "TB_y"])
    assert b01.ids == [
        "F02_B01_S26_R01_N",
        "F02_B01_S57_R01_N",
        "F02_B01_S49_R01_N",
    ]  # str.contains('B01'), order kept
    np.testing.assert_allclose(
        b01[1].tracks["ema"].values, held["ema"]["F02_B01_S57_R01_N.mat"][:, 2:4], rtol=1e-6, atol=1e-5
    )


def test_convert_then_read_without_pickle(tmp_path):
    src = tmp_path / "drive"
    held = write_tutorial(src)
    write_tutorial(src, participant="M02", seed=1)
    out = tmp_path / "safe"
    for p in ("F02", "M02"):
        proc = subprocess.run([sys.executable, "-m", "src.datamodules.tutorial_ema", "convert",
                               str(src / f"ema_audio_{p}.pkl"), str(out)], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert (out / "ema_audio_F02.json").is_file() and (out / "ema_labels_F02.csv").is_file()
    assert (out / "order_F02.txt").read_text().split() == [fn.removesuffix(".mat") for fn, _ in ROWS]
    c = TutorialEMACorpus(out)  # no pickle left: no opt-in needed
    assert len(c) == 8 and [c.speaker(i) for i in (0, 4)] == ["F02", "M02"]
    assert c[2].audio.tobytes() == held["audio"]["F02_B01_S57_R01_N.mat"].tobytes()  # float32 wav: bit-exact
    f = TutorialEMACorpus(out, participants=["F02"])
    assert c.fingerprint != f.fingerprint and f.ids == c.ids[:4]


def test_bad_input(tmp_path):
    write_tutorial(tmp_path / "a", drop_csv_for="F02_B01_S57_R01_N.mat")
    with pytest.raises(CorpusError, match=r"ema_labels_F02.csv has no EMA rows for 'F02_B01_S57_R01_N.mat'"), \
            pytest.warns(UserWarning):  # fmt: skip
        TutorialEMACorpus(tmp_path / "a", allow_pickle=True)
    write_tutorial(tmp_path / "b")
    with pytest.raises(CorpusError, match=r"data.blocks=\['B07'\] selects no utterance.*\['B01', 'B02'\]"), \
            pytest.warns(UserWarning):  # fmt: skip
        TutorialEMACorpus(tmp_path / "b", allow_pickle=True, blocks=[7])
    with pytest.raises(CorpusError, match=r"no ema_audio file for \['M09'\].*present: \['F02'\]"):
        TutorialEMACorpus(tmp_path / "b", participants=["M09"])
    with pytest.raises(CorpusError, match=r"no channel\(s\) \['TB_z'\]"):
        TutorialEMACorpus(tmp_path / "b", channels=["TB_z"], allow_pickle=True)
    write_tutorial(tmp_path / "c", ema_frames_extra=30)  # 0.6 s more EMA than audio: a wrong rate or file
    with (
        pytest.raises(CorpusError, match=r"ema_labels_F02.csv: track 'ema' lasts"),
        pytest.warns(UserWarning),
    ):
        TutorialEMACorpus(tmp_path / "c", allow_pickle=True)
    df = pd.read_csv(tmp_path / "b" / "ema_labels_F02.csv").drop(columns=["JAW_Y"])
    df.to_csv(tmp_path / "b" / "ema_labels_F02.csv", index=False)
    with pytest.raises(CorpusError, match=r"ema_labels_F02.csv: no column\(s\) \['JAW_Y'\]; it has"), \
            pytest.warns(UserWarning):  # fmt: skip
        TutorialEMACorpus(tmp_path / "b", allow_pickle=True)
