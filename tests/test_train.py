"""train.py end to end with tiny random backbones, asserting the numbers it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT, make_tone_corpus
from tests.helpers import run_cli

# Lightning probes whose fit quality these tests do not check: the trainer's epochs alone, no step budget
# (conf/probe/linear.yaml's min_steps would train every probe thousands of steps). Not in common(): ridge has no such keys.
FAST_FIT = ["probe.min_steps=0", "probe.patience=0"]


def common(tmp_path: Path, corpus: Path) -> list[str]:
    return [
        "data=textgrid",
        f"data.root={corpus}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        "cache.progress=false",
        "trainer.max_epochs=4",
        "n_boot=50",
        "split.by=utterance",
        "split.test_fraction=0.25",
        "split.val_fraction=0.25",
    ]


@pytest.fixture(scope="module")
def corpus12(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("c12"), num_utterances=12, with_tracks=True, vocabulary=6)


def test_train_linear_all_layers_writes_results(tmp_path, corpus12, tiny_w2v2_dir):
    run = tmp_path / "run"
    run_cli("train.py", [*common(tmp_path, corpus12), *FAST_FIT, "backbone=local", f"backbone.model_id={tiny_w2v2_dir}",
                         "backbone.name=tiny", "logger=csv", "task.min_count=1", "controls.selectivity=true"], run)  # fmt: skip
    df = pd.read_csv(run / "results.csv")
    for col in ["backbone", "task", "probe", "layer", "target", "metric", "value", "ci_low", "ci_high", "split"]:
        assert col in df.columns
    acc = df[(df.metric == "accuracy") & (df.split == "test")]
    assert sorted(acc.layer) == [0, 1, 2, 3]  # every hidden state of the tiny model, one run
    assert ((acc.value >= 0) & (acc.value <= 1)).all()
    assert ((acc.ci_low <= acc.value + 1e-9) & (acc.value <= acc.ci_high + 1e-9)).all()
    assert set(df.metric) >= {"accuracy", "macro_f1", "accuracy_majority_baseline", "control_accuracy", "selectivity"}
    sel = df[df.metric == "selectivity"].set_index("layer").value
    ctl = df[df.metric == "control_accuracy"].set_index("layer").value
    task_seen = df[df.metric == "accuracy_control_types_seen"].set_index("layer").value
    np.testing.assert_allclose(sel.sort_index(), (task_seen - ctl).sort_index(), atol=1e-12)
    meta = json.loads((run / "results.json").read_text())["meta"]["counts"]
    assert meta["test_items_control_type_seen_in_train"] + meta["test_items_control_type_unseen"] == meta["test_items"]
    assert (run / "results.json").exists() and (run / "config_resolved.yaml").exists()
    assert list(run.glob("*.png"))


def test_ridge_recovers_a_linear_function_of_one_layer(tmp_path, tiny_whisper_dir):
    """Targets built as a linear map of layer 1's cached frames: the ridge probe must find r > 0.99 there."""
    from src.activations import ActivationCache
    from src.backbones.whisper import WhisperBackbone
    from src.datamodules.corpus import TextGridCorpus, Track, save_tracks

    corpus_dir = make_tone_corpus(tmp_path / "corpus", num_utterances=10)
    corpus = TextGridCorpus(corpus_dir)
    bb = WhisperBackbone(str(tiny_whisper_dir), name="tw")
    acts = ActivationCache(tmp_path / "cache", progress=False).get(bb, corpus)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((acts.hidden_size, 2))
    for u, _uid in enumerate(acts.ids):
        y = acts.frames(u, 1).astype(np.float64) @ w  # (T, 2); frame i stands for 0.02 i s = track sample i at 50 Hz
        wav = Path(corpus[u].path)
        save_tracks(wav.with_suffix(".tracks.npz"), {"ema": Track(acts.frame_rate, y.astype(np.float32), ("a", "b"))})
    run = tmp_path / "run"
    run_cli("train.py", [*common(tmp_path, corpus_dir), "backbone=whisper_hub", f"backbone.model_id={tiny_whisper_dir}",
                         "backbone.name=tw", "task=ema", "probe=ridge", "logger=none"], run)  # fmt: skip
    df = pd.read_csv(run / "results.csv")
    r = df[(df.metric == "pearson_r") & (df.split == "test") & (df.target.isin(["a", "b"]))]
    assert (r[r.layer == 1].value > 0.99).all()
    assert len(r) == 2 * acts.num_layers
    assert (run / "pearson_r_layer_x_target.png").exists()


def test_unknown_config_key_is_hydras_error(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "probe.nonsense=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert "nonsense" in proc.stderr and "Traceback" not in proc.stderr


def test_multirun_over_layers_shares_cache_and_merges(tmp_path, corpus12, tiny_w2v2_dir):
    """``-m probe.layer=0,1 probe=linear,mlp``: four jobs, one cache, two curves (linear, mlp) over layers 0-1."""
    sweep = tmp_path / "sweep"
    run_cli("train.py", [*common(tmp_path, corpus12), *FAST_FIT, "backbone=local", f"backbone.model_id={tiny_w2v2_dir}",
                         "backbone.name=tiny", "logger=none", "task.min_count=1", "probe.layer=0,1", "probe=linear,mlp"],
            sweep, multirun=True)  # fmt: skip (18 overrides: the job directory names are cut to a file system's limit)
    caches = list((tmp_path / "cache").glob("*/meta.json"))
    assert len(caches) == 1
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["job"].nunique() == 4
    jobs = summary.drop_duplicates("job_dir")
    names = [Path(str(d)).name for d in jobs["job_dir"]]  # job dirs named by 18 overrides, cut to a legal length
    assert len(set(names)) == 4 and max(len(n.encode()) for n in names) <= 130 and all("~" in n for n in names)
    assert sorted(jobs["curve"]) == ["linear", "linear", "mlp", "mlp"]
    assert all(f",probe={c}," in f",{j}," for j, c in zip(jobs["job"], jobs["curve"]))  # the legend: the probe alone
    assert (sweep / "summary.png").exists()
    # each curve point is the test accuracy its job wrote; the majority baseline is one reference line
    curves = pd.read_csv(sweep / "summary_curves.csv")
    acc = curves[(curves.metric == "accuracy") & (curves.kind == "layer")]
    for rel, name in summary.drop_duplicates("job_dir").set_index("job_dir")["curve"].items():
        job = pd.read_csv(sweep / str(rel) / "results.csv")
        row = job[(job.metric == "accuracy") & (job.split == "test")].iloc[0]
        got = acc[(acc.curve == name) & (acc.layer == row.layer)]
        assert got[["value", "ci_low", "ci_high"]].to_numpy().tolist() == [[row.value, row.ci_low, row.ci_high]]
    assert sorted(acc.groupby("curve")["layer"].apply(list).to_dict().items()) == [("linear", [0, 1]), ("mlp", [0, 1])]
    base = curves[curves.kind == "baseline"]
    assert base["baseline"].unique().tolist() == ["majority"] and base["value"].nunique() == 1


def test_same_command_same_numbers_cold_then_warm_cache(tmp_path, corpus12, tiny_w2v2_dir):
    """The first run builds the cache (a random-init model consumes RNG state); the second reads it.
    Both must write byte-identical results.csv (the probe is seeded after the cache)."""
    args = [*common(tmp_path, corpus12), *FAST_FIT, "backbone=local", f"backbone.model_id={tiny_w2v2_dir}",
            "backbone.name=tiny", "backbone.pretrained=false", "logger=none", "task.min_count=1", "split.by=text"]  # fmt: skip
    run_cli("train.py", args, tmp_path / "cold")
    run_cli("train.py", args, tmp_path / "warm")
    assert (tmp_path / "cold" / "results.csv").read_bytes() == (tmp_path / "warm" / "results.csv").read_bytes()
    df = pd.read_csv(tmp_path / "cold" / "results.csv")
    acc = df[(df.metric == "accuracy") & (df.split == "test")]
    assert (acc.unit == "text").all()  # intervals resample the split unit, and say so
    assert acc.layer_name.astype(str).tolist() == [str(k) for k in acc.layer]
    f1 = df[(df.metric == "macro_f1") & (df.split == "test")]
    assert f1.ci_low.notna().all() and (f1.ci_low <= f1.value + 1e-9).all() and (f1.value <= f1.ci_high + 1e-9).all()
    counts = json.loads((tmp_path / "cold" / "results.json").read_text())["meta"]["counts"]
    assert counts["bootstrap_unit"] == "text"


def test_task_and_tiers_are_checked_before_extraction(tmp_path, corpus12, tiny_w2v2_dir):
    args = [*common(tmp_path, corpus12), "backbone=local", f"backbone.model_id={tiny_w2v2_dir}", "backbone.name=tiny",
            "logger=none", "task.tier=nosuchtier"]  # fmt: skip
    with pytest.raises(AssertionError, match="no tier 'nosuchtier' needed by task=phones"):
        run_cli("train.py", args, tmp_path / "run")
    assert not list((tmp_path / "cache").glob("*/layer_*.npy"))  # nothing was extracted
    with pytest.raises(AssertionError, match="split 'train' is empty"):
        run_cli("train.py", [*args[:-1], "split.by=speaker", "split.test_speakers=[spk1]", "split.val_speakers=[spk2]"],
                tmp_path / "run2")  # fmt: skip
    assert not list((tmp_path / "cache").glob("*/layer_*.npy"))
    with pytest.raises(AssertionError, match="task=words predicts the 'words' label itself"):
        run_cli("train.py", [*args[:-1], "task=words", "controls.selectivity=true"], tmp_path / "run3")
