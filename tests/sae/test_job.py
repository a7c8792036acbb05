"""``python train.py experiment=sae`` end to end on a tiny random wav2vec2 over a 12-utterance tone corpus:
results.csv (per layer FVU, L0, dead and dense fractions on held-out utterances), the figure, SAEs that
load (and validate against the backbone), and a clear error for a layer the cache does not hold."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import make_tone_corpus
from tests.helpers import run_cli

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.slow  # train.py subprocesses: about 60 s each on the shared 2 cores


@pytest.fixture(scope="module")
def corpus12(tmp_path_factory):
    return make_tone_corpus(tmp_path_factory.mktemp("c12sae"), num_utterances=12)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("saecache")


def args(tmp, corpus, model, cache):
    return ["experiment=sae", "data=textgrid", f"data.root={corpus}", f"paths.cache_dir={cache}",
            f"paths.output_dir={tmp / 'outputs'}", "cache.progress=false", "backbone=local",
            f"backbone.model_id={model}", "backbone.name=tiny", "logger=none", "+trainer.enable_progress_bar=false",
            "sae.expansion_factor=2", "sae.k=4", "sae.batch_size=32", "sae.epochs=2", "sae.val_fraction=0.25",
            "sae.warmup_steps=2"]  # fmt: skip


def test_sae_job_writes_results_figure_and_loadable_saes(tmp_path, corpus12, tiny_w2v2_dir, cache_dir):
    run = tmp_path / "run"
    run_cli("train.py", args(tmp_path, corpus12, tiny_w2v2_dir, cache_dir), run, env_extra=ENV)
    df = pd.read_csv(run / "results.csv")
    meta = json.loads((run / "results.json").read_text())["meta"]
    layers = sorted(set(df.layer))
    assert len(layers) >= 3 and set(df.metric) == {"fvu", "l0", "dead_fraction", "dense_fraction"}
    assert len(df) == 4 * len(layers) and (df.split == "val").all() and (df.architecture == "topk").all()
    l0 = df[df.metric == "l0"].value
    assert ((l0 > 0) & (l0 <= 4 + 1e-9)).all()  # TopK at k=4
    fvu = df[df.metric == "fvu"].value
    assert ((fvu > 0) & (fvu < 1.5)).all()
    assert meta["val_frames"] > 0 and meta["train_frames"] > meta["val_frames"]
    assert any(k.endswith("frames_silence") for k in meta["counts"])  # the tone corpus has silences
    assert (run / "sae_metrics.png").stat().st_size > 5000
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # written once, no copy

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from src.sae import load_sae

    backbone = instantiate(OmegaConf.create({"_target_": "src.backbones.spec.auto_backbone", "model_id": str(tiny_w2v2_dir),
                                             "name": "tiny"}))  # fmt: skip
    for k in layers:
        name = df[df.layer == k].layer_name.iloc[0]
        sae = load_sae(run / "saes" / f"layer_{name}", backbone=backbone)
        assert (
            sae.meta["layer"] == k
            and sae.meta["backbone"]["name"] == "tiny"
            and sae.meta["norm_mean"] is not None
        )
        assert sae.d_sae == 2 * sae.d_in


def test_sae_job_layer_not_in_cache_is_a_clear_error(tmp_path, corpus12, tiny_w2v2_dir, cache_dir):
    with pytest.raises(AssertionError, match=r"sae layers=\[99\].*does not hold them"):
        run_cli(
            "train.py",
            [*args(tmp_path, corpus12, tiny_w2v2_dir, cache_dir), "sae.layers=[99]"],
            tmp_path / "bad",
            env_extra=ENV,
        )


def test_sae_job_streams_several_corpora_as_one(tmp_path, corpus12, tiny_w2v2_dir, cache_dir):
    """sae.corpora adds whole data configs: here a second copy of the tone corpus (a second cache of the
    same frames under another name), so the stream holds twice the frames of one corpus."""
    import shutil

    second = tmp_path / "second"
    shutil.copytree(corpus12, second)
    extra = f"sae.corpora=[{{_target_:src.datamodules.corpus.TextGridCorpus,root:'{second}',name:tones2}}]"
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("train.py", [*args(tmp_path, corpus12, tiny_w2v2_dir, cache_dir), "sae.layers=[1]", "sae.epochs=1"], one,
            env_extra=ENV)  # fmt: skip
    run_cli("train.py", [*args(tmp_path, corpus12, tiny_w2v2_dir, cache_dir), "sae.layers=[1]", "sae.epochs=1", extra],
            two, env_extra=ENV)  # fmt: skip
    m1 = json.loads((one / "results.json").read_text())["meta"]
    m2 = json.loads((two / "results.json").read_text())["meta"]
    assert m2["train_frames"] + m2["val_frames"] == 2 * (m1["train_frames"] + m1["val_frames"])
    assert any(k.startswith("tones2:") for k in m2["counts"]), m2["counts"]
    assert set(pd.read_csv(two / "results.csv").corpus) == {
        f"{pd.read_csv(one / 'results.csv').corpus.iloc[0]}+tones2"
    }
