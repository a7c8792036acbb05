"""A layer sweep and an analysis over an existing cache never load the model (lazy backbones).

The cache is built first by ``build_cache.py`` (in-process, through train.py's own ``load_activations``: one load, logged); then ``train.py -m probe.layer=0,1,2``
(3 jobs) and ``analyze.py analysis=cka`` run as subprocesses with ``SPEECHINTERP_MODEL_LOAD_LOG`` set:
every weight materialisation in any process appends a line there, so the log must stay at one line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from src.backbones.base import MODEL_LOAD_LOG_ENV
from tests.conftest import ROOT, make_tone_corpus
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def corpus8(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("c8"), num_utterances=8)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _build_in_process(overrides: list[str], log: Path, monkeypatch) -> None:
    """The cache train.py reads, built here through src.jobs.common.load_activations (the CLI's own function) with
    train.py's composed config: one subprocess fewer than build_cache.py."""
    from hydra import compose, initialize_config_dir

    from src.backbones.base import model_loads
    from src.jobs.common import load_activations, register_resolvers

    monkeypatch.setenv(MODEL_LOAD_LOG_ENV, str(log))
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    n0 = model_loads()
    _, acts = load_activations(cfg)
    assert model_loads() == n0 + 1 and acts.total_frames > 0


def test_sweep_and_analysis_over_an_existing_cache_load_the_model_zero_times(tmp_path, corpus8, tiny_w2v2_dir,
                                                                           monkeypatch):
    log = tmp_path / "loads.tsv"
    env = {MODEL_LOAD_LOG_ENV: str(log), "OMP_NUM_THREADS": "1"}
    common = ["data=textgrid", f"data.root={corpus8}", f"paths.cache_dir={tmp_path / 'cache'}",
              f"paths.output_dir={tmp_path / 'outputs'}", "cache.progress=false", "backbone=local",
              f"backbone.model_id={tiny_w2v2_dir}", "backbone.name=tiny"]  # fmt: skip
    _build_in_process(common, log, monkeypatch)
    assert _lines(log) == ["tiny\tmodel"]  # building the cache loads the weights, once
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name.startswith("tiny__")]
    assert len(caches) == 1

    train = [*common, "logger=csv", "trainer.max_epochs=1", "probe.min_steps=0", "probe.patience=0", "n_boot=10",
             "task.min_count=1", "split.by=utterance",
             "split.test_fraction=0.25", "split.val_fraction=0.25", "probe.layer=0,1,2"]  # fmt: skip
    sweep = tmp_path / "sweep"
    run_cli("train.py", train, sweep, env_extra=env, multirun=True)
    assert _lines(log) == ["tiny\tmodel"], "a probe job over the existing cache loaded the model"
    results = sorted(sweep.glob("*/results.csv"))
    assert len(results) == 3
    per_job = [sorted({int(v) for v in pd.read_csv(f).query("metric == 'accuracy'").layer if v >= 0}) for f in results]
    assert sorted(per_job) == [[0], [1], [2]]  # the three jobs ran, one layer each

    run_cli("analyze.py", [*common, "analysis=cka"], tmp_path / "cka", env_extra=env)
    assert _lines(log) == ["tiny\tmodel"], "an analysis over the existing cache loaded the model"
    assert (tmp_path / "cka" / "results.csv").exists()
    assert [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name.startswith("tiny__")] == caches
