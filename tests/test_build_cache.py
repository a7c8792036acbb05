"""build_cache.py: train.py's config, the cache built (or found) and reported, nothing trained."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import make_tone_corpus

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(script: str, overrides: list[str], cwd: Path, check: bool = True, timeout: int = 300, multirun=False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, str(ROOT / script), *(["-m"] if multirun else []), *overrides]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def report(stdout: str) -> dict[str, str]:
    """``key: value`` lines of build_cache.py's report."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^(cache|status|frames|size): (.*)$", stdout, re.M)}


def conv_frames(corpus: Path, model: Path) -> int:
    """Frames of a wav2vec2 conv feature encoder (no padding), counted from the audio files and the
    kernels/strides in the model's config.json: an independent count of what the cache must hold."""
    cfg = json.loads((model / "config.json").read_text())
    total = 0
    for wav in corpus.rglob("*.wav"):
        n = sf.info(str(wav)).frames
        for k, s in zip(cfg["conv_kernel"], cfg["conv_stride"]):
            n = (n - k) // s + 1
        total += n
    return total


@pytest.fixture(scope="module")
def corpus6(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("bc6"), num_utterances=6, vocabulary=5)


def common(tmp_path: Path, corpus: Path, model: Path, cache: str = "cache") -> list[str]:
    return ["data=textgrid", f"data.root={corpus}", f"paths.cache_dir={tmp_path / cache}",
            f"paths.output_dir={tmp_path / 'outputs'}", "cache.progress=false", "backbone=local",
            f"backbone.model_id={model}", "backbone.name=tiny", "logger=none"]  # fmt: skip


def test_builds_then_reuses_and_lists_a_multirun(tmp_path, corpus6, tiny_w2v2_dir):
    args = common(tmp_path, corpus6, tiny_w2v2_dir)
    proc = run("build_cache.py", [*args, f"hydra.run.dir={tmp_path / 'b1'}"], tmp_path)
    # the log line of a build
    assert "extracting 4 states of tiny for 6 utterances" in proc.stdout + proc.stderr
    first = report(proc.stdout)
    path = Path(first["cache"])
    assert first["status"] == "built"
    assert path.parent == tmp_path / "cache" and path.name.startswith("tiny__")
    meta = json.loads((path / "meta.json").read_text())
    frames = conv_frames(corpus6, tiny_w2v2_dir)
    assert meta["total_frames"] == frames
    assert first["frames"].startswith(f"{frames} (6 utterances; 4 states x 32 dims, float16)")
    size = sum(f.stat().st_size for f in path.iterdir())  # every file of the cache directory
    assert first["size"].endswith(f"({size} bytes)")
    header = 128  # bytes of each layer file's npy header
    assert sum(e["bytes"] for e in meta["files"]) == 4 * (frames * 32 * 2 + header)
    saved = json.loads((tmp_path / "b1" / "cache.json").read_text())
    assert saved["path"] == str(path) and saved["status"] == "built" and saved["frames"] == frames
    assert not list((tmp_path / "b1").glob("results.*"))  # nothing trained

    # a multirun: job 0 is the same cache (reused, untouched), job 1 the random-init control (built)
    mtime = (path / "meta.json").stat().st_mtime_ns
    sweep = tmp_path / "sweep"
    out = run("build_cache.py", [*args, "backbone.pretrained=true,false", f"hydra.sweep.dir={sweep}"], tmp_path,
              multirun=True)  # fmt: skip
    assert out.stdout.count("cache: ") == 2
    assert f"cache: {path}\nstatus: reused" in out.stdout
    assert (path / "meta.json").stat().st_mtime_ns == mtime
    with open(sweep / "caches.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["job_dir"].split("_", 1)[0] for r in rows] == ["0", "1"]
    assert rows[0]["path"] == str(path) and rows[0]["status"] == "reused"
    assert rows[1]["status"] == "built" and Path(rows[1]["path"]).name.startswith("tiny-random__")
    assert [int(r["frames"]) for r in rows] == [frames, frames]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == sorted(
        Path(r["path"]).name for r in rows
    )


def test_bad_key_is_hydras_error_and_builds_nothing(tmp_path, corpus6, tiny_w2v2_dir):
    proc = run(
        "build_cache.py",
        [*common(tmp_path, corpus6, tiny_w2v2_dir), "cache.nosuchkey=1"],
        tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "Could not override 'cache.nosuchkey'" in proc.stderr
    assert "Key 'nosuchkey' is not in struct" in proc.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "overrides", [[], ["experiment=phones"], ["backbone=mfcc", "task=stress", "probe=ridge"]]
)
def test_config_is_train_config(overrides):
    """conf/build_cache.yaml composes exactly train.py's job config (only hydra.* differs): the
    same overrides name the same cache in both (the cache key is computed from this config)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from src.jobs.common import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        ours = compose("build_cache", overrides=overrides, return_hydra_config=True)
        train = compose("train", overrides=overrides, return_hydra_config=True)
    ours_hydra, train_hydra = ours.hydra, train.hydra
    job = {k: v for k, v in OmegaConf.to_container(ours).items() if k != "hydra"}
    assert job == {k: v for k, v in OmegaConf.to_container(train).items() if k != "hydra"}
    assert {"backbone", "data", "cache", "paths"} <= set(job)
    assert "/build_cache/" in ours_hydra.run.dir and "/train/" in train_hydra.run.dir
    assert ours_hydra.callbacks.merge_results._target_ == "src.jobs.cache.CacheSummary"
    assert train_hydra.callbacks.merge_results._target_ == "src.reporting.multirun.MergeResults"


@pytest.mark.slow  # about 60 s on 2 loaded cores (three interpreters start); the DDP equality is also in tests/test_ddp.py
def test_ddp_build_equals_single_process_build_and_reports_once(tmp_path, tiny_w2v2_dir):
    """cache.trainer={accelerator: cpu, devices: 2, strategy: ddp}: Lightning re-runs build_cache.py
    for rank 1; the build completes, is byte-identical per layer to a 1-process build, and only
    rank 0 prints the report."""
    corpus = make_tone_corpus(tmp_path / "c4", num_utterances=4, vocabulary=4)
    single = report(run("build_cache.py", [*common(tmp_path, corpus, tiny_w2v2_dir, "single"),
                                           f"hydra.run.dir={tmp_path / 's'}"], tmp_path).stdout)  # fmt: skip
    proc = run("build_cache.py", [*common(tmp_path, corpus, tiny_w2v2_dir, "ddp"),
                                  "++cache.trainer={accelerator: cpu, devices: 2, strategy: ddp}",
                                  f"hydra.run.dir={tmp_path / 'd'}"], tmp_path, timeout=240)  # fmt: skip
    assert proc.stdout.count("cache: ") == 1  # rank 1's stdout is this process's too
    ddp = report(proc.stdout)
    assert ddp["status"] == "built" and Path(ddp["cache"]).name == Path(single["cache"]).name
    a, b = Path(single["cache"]), Path(ddp["cache"])
    files = sorted(p.name for p in a.glob("layer_*.npy"))
    assert files == sorted(p.name for p in b.glob("layer_*.npy")) and len(files) == 4
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ia, ib = np.load(a / "index.npz"), np.load(b / "index.npz")
    for key in ("ids", "offsets", "lengths"):
        assert (ia[key] == ib[key]).all(), key
    assert not list(tmp_path.joinpath("ddp").glob("*.partial*"))
