"""One small corpus written in every layout gives byte-identical ``results.csv`` from ``train.py``.

The corpus (:func:`tests.corpus_writers.grid_utterances`: 8 noisy tone utterances of 2 speakers, times on a
10 ms grid, audio on the 16-bit grid at 16 kHz, so every container stores it losslessly) is written as
a TextGrid folder (the reference), TIMIT, Buckeye, LibriSpeech + MFA TextGrids, lhotse manifests (sets
and cuts), Hugging Face datasets (timit_asr and librispeech-alignments schemas) and HPRC ``.mat`` files.
For each, the reader's tiers are compared with the source first (phones exactly; words up to case:
LibriSpeech writes upper case), then ``train.py`` (tiny random wav2vec2, ridge probes, task=phones,
split by text) runs once per layout in one interpreter, and every ``results.csv`` must equal the
TextGrid run's byte for byte. A control run on a copy with one phone relabelled must differ (the
comparison can fail).

HPRC stores audio at 44.1 kHz: written at 44.1 kHz, read back resampled 44.1 -> 16 kHz, the audio
is not the 16 kHz original (two polyphase filters), so byte identity is impossible there; its tiers
are compared exactly and its accuracy / macro-F1 values within 0.03 of the reference (measured here: at
most 0.012; relabelling one phone moves them by 0.05). HPRC written at 16 kHz (the container allows any SRATE) is in the
byte-identical set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.corpus_writers import grid_utterances, write_textgrid_corpus

NOISE = 0.3  # tone noise: accuracies near 0.6, so a changed label or frame shows in the results
HAVE = {m: (ROOT / p).exists() for m, p in {"timit": "src/datamodules/timit.py", "hprc": "src/datamodules/haskins.py",
                                            "timit_writer": "tests/corpus_writers/timit.py",
                                            "hprc_writer": "tests/corpus_writers/hprc.py"}.items()}  # fmt: skip
try:
    import lhotse  # noqa: F401

    HAVE["lhotse"] = True
except ImportError:
    HAVE["lhotse"] = False


def _layouts(tmp: Path, utts) -> dict[str, list[str]]:
    """Write every layout under ``tmp``; returns layout -> the data overrides that read it."""
    from tests.corpus_writers.buckeye import write_buckeye
    from tests.corpus_writers.hf import write_hf
    from tests.corpus_writers.librispeech import write_librispeech

    out = {}
    write_textgrid_corpus(tmp / "textgrid", utts)
    out["textgrid"] = ["data=textgrid", f"data.root={tmp / 'textgrid'}"]
    bad = grid_utterances(8, noise=NOISE, tracks=True)  # the control: one phone relabelled
    iv = bad[0].tiers["phones"][1]
    bad[0].tiers["phones"][1] = type(iv)(iv.start, iv.end, "i" if iv.label != "i" else "o")
    write_textgrid_corpus(tmp / "relabelled", bad)
    out["relabelled"] = ["data=textgrid", f"data.root={tmp / 'relabelled'}"]
    write_buckeye(tmp / "buckeye", utts)
    out["buckeye"] = ["data=buckeye", f"data.root={tmp / 'buckeye'}", "data.utterances=track"]
    write_librispeech(tmp / "LibriSpeech", utts, condensed=False, textgrid_root=tmp / "mfa")
    out["librispeech"] = ["data=librispeech", f"data.root={tmp / 'LibriSpeech'}", f"data.alignments_root={tmp / 'mfa'}"]
    write_hf(tmp / "hf_timit", utts, "timit")
    out["hf_timit"] = ["data=hf", f"data.source={tmp / 'hf_timit'}"]
    write_hf(tmp / "hf_libri", utts, "librispeech", split="dev_clean")
    out["hf_libri"] = ["data=hf", f"data.source={tmp / 'hf_libri'}", "data.split=dev_clean"]
    if HAVE["lhotse"]:
        from tests.corpus_writers.lhotse import write_lhotse

        p = write_lhotse(tmp / "lhotse_sets", utts, kind="sets")
        out["lhotse_sets"] = ["data=lhotse", f"data.manifest_dir={tmp / 'lhotse_sets'}", "data.part=all"]
        p = write_lhotse(tmp / "lhotse_cuts", utts, kind="cuts")
        out["lhotse_cuts"] = ["data=lhotse", f"data.cuts={p['cuts']}"]
    if HAVE["timit"] and HAVE["timit_writer"]:
        from tests.corpus_writers.timit import write_timit

        write_timit(utts, tmp / "timit")
        out["timit"] = ["data=timit", f"data.root={tmp / 'timit'}"]
    if HAVE["hprc"] and HAVE["hprc_writer"]:
        from tests.corpus_writers.hprc import write_hprc

        write_hprc(utts, tmp / "hprc16")
        out["hprc16"] = ["data=haskins", f"data.root={tmp / 'hprc16'}", "data.channels=[TT_x,TT_z]"]
        write_hprc(utts, tmp / "hprc44", audio_rate=44100)
        out["hprc44"] = ["data=haskins", f"data.root={tmp / 'hprc44'}", "data.channels=[TT_x,TT_z]"]
    return out


RUNNER = """
import runpy, sys, json, warnings
warnings.simplefilter("ignore")
jobs = json.loads(sys.argv[1])
for name, argv in jobs.items():
    sys.argv = [{train!r}, *argv]
    try:
        runpy.run_path({train!r}, run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise RuntimeError(f"train.py failed for layout {{name}}")
"""


def _instantiate(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return instantiate(cfg.data)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_w2v2_dir):
    tmp = tmp_path_factory.mktemp("xf")
    utts = grid_utterances(8, noise=NOISE, tracks=True)
    layouts = _layouts(tmp, utts)
    common = ["backbone=local", f"backbone.model_id={tiny_w2v2_dir}", "backbone.name=tiny", "logger=csv", "task=phones",
              "probe=ridge", f"paths.cache_dir={tmp / 'cache'}", f"paths.output_dir={tmp / 'out'}", "cache.progress=false",
              "n_boot=50", "split.by=text", "split.test_fraction=0.25", "split.val_fraction=0.25"]  # fmt: skip
    jobs = {name: [*common, *data, f"hydra.run.dir={tmp / 'run' / name}"] for name, data in layouts.items()}
    for name in ("textgrid", "hprc16"):  # the layouts with tracks: EMA regression too
        if name in layouts:
            jobs[f"{name}_ema"] = [*common, *layouts[name], "task=ema", f"hydra.run.dir={tmp / 'run' / (name + '_ema')}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    code = RUNNER.format(train=str(ROOT / "train.py"))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"train.py runs failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}")
    return tmp, utts, layouts


def test_every_reader_yields_the_source_tiers(runs):
    tmp, utts, layouts = runs
    for name, data in layouts.items():
        if name == "relabelled":
            continue
        c = _instantiate(data)
        assert len(c) == len(utts), name
        for k, u in enumerate(utts):
            ann = c.annotation(k)
            phones = [iv for iv in ann.tiers["phones"] if iv.label != "sil"]  # MFA fills gaps with sil
            assert phones == u.tiers["phones"], (name, k)
            assert [(w.start, w.end, w.label.lower()) for w in ann.tiers["words"]] == \
                [(w.start, w.end, w.label) for w in u.tiers["words"]], (name, k)  # fmt: skip
            if name != "hprc44":
                assert len(c[k].audio) == len(u.audio), (name, k)


def test_results_csv_byte_identical_across_layouts(runs):
    tmp, _, layouts = runs
    ref = (tmp / "run" / "textgrid" / "results.csv").read_bytes()
    acc = pd.read_csv(tmp / "run" / "textgrid" / "results.csv")
    acc = acc[acc.metric == "accuracy"]
    assert len(acc) >= 8 and acc.value.between(0.3, 0.95).all()  # noisy enough not to saturate: differences show
    same = [n for n in layouts if n not in ("relabelled", "hprc44")]  # the task=phones runs
    assert len(same) >= 7
    for name in same:
        got = (tmp / "run" / name / "results.csv").read_bytes()
        assert got == ref, f"layout {name}: results.csv differs from the TextGrid run's"
        a, b = (json.loads((tmp / "run" / n / "results.json").read_text())["meta"]["counts"] for n in (name, "textgrid"))
        silence = ("frames_silence", "labels_phones_silence_dropped")  # MFA TextGrids spell their gaps "sil"
        assert {k: v for k, v in a.items() if k not in silence} == {k: v for k, v in b.items() if k not in silence}, name
    assert (tmp / "run" / "relabelled" / "results.csv").read_bytes() != ref  # the comparison can fail


@pytest.mark.skipif(not (HAVE["hprc"] and HAVE["hprc_writer"]), reason="the HPRC reader or writer is not in this tree")
def test_ema_tracks_byte_identical_textgrid_and_hprc(runs):
    tmp, utts, layouts = runs
    c = _instantiate(layouts["hprc16"])
    for k, u in enumerate(utts):
        tr = c.annotation(k).tracks["ema"]
        assert tr.rate == 100.0 and tr.names == ("TT_x", "TT_z") and (tr.values == u.tracks["ema"].values).all()
    ref = (tmp / "run" / "textgrid_ema" / "results.csv").read_bytes()
    r = pd.read_csv(tmp / "run" / "textgrid_ema" / "results.csv")
    assert set(r.target) >= {"TT_x", "TT_z"} and "pearson_r" in set(r.metric)
    assert (tmp / "run" / "hprc16_ema" / "results.csv").read_bytes() == ref


@pytest.mark.skipif(not (HAVE["hprc"] and HAVE["hprc_writer"]), reason="the HPRC reader or writer is not in this tree")
def test_hprc_at_44k_within_tolerance(runs):
    tmp, _, _ = runs
    ref = pd.read_csv(tmp / "run" / "textgrid" / "results.csv")
    got = pd.read_csv(tmp / "run" / "hprc44" / "results.csv")
    key = ["layer", "metric", "split"]
    assert got[key].equals(ref[key])
    diff = (got.value - ref.value).abs()
    assert diff.max() <= 0.03, f"HPRC 44.1 kHz vs reference: max |difference| {diff.max():.4f}"
