"""analyze.py end to end on a tiny corpus and the MFCC / tiny random backbones."""

from __future__ import annotations

import pandas as pd

from tests.helpers import run_cli


def _common(tmp_path, corpus):
    return ["data=textgrid", f"data.root={corpus}", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'outputs'}", "cache.progress=false", "logger=wandb"]  # fmt: skip


def test_analyze_cka_layers_and_reference(tmp_path, tone_corpus_dir, tiny_w2v2_dir):
    run = tmp_path / "run"
    run_cli("analyze.py", [*_common(tmp_path, tone_corpus_dir), "backbone=local", f"backbone.model_id={tiny_w2v2_dir}",
                           "backbone.name=tiny", "analysis=cka", "analysis.reference=[null,mfcc]"], run)  # fmt: skip
    df = pd.read_csv(run / "results.csv")
    within = df[df.reference.isna() | (df.reference == "self")] if "reference" in df else df
    diag = within[(within.layer == within.layer_b) & (within.metric == "cka")]
    assert len(diag) == 4 and (abs(diag.value - 1) < 1e-6).all()
    vs_mfcc = df[df.reference == "mfcc"]
    assert sorted(vs_mfcc.layer.unique()) == [0, 1, 2, 3]
    assert ((vs_mfcc.value > 0) & (vs_mfcc.value <= 1)).all()
    assert list(run.glob("*.png")) and (run / "config_resolved.yaml").exists()
    # W&B ran offline, inside the run directory, and wrote the run there
    assert list((run / "wandb").glob("offline-run-*"))
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 2  # model + mfcc reference, built once each


def test_analyze_cca_defaults_held_out_with_null_and_layer_errors(tmp_path, tone_corpus_dir, tiny_w2v2_dir):
    import pytest

    args = [*_common(tmp_path, tone_corpus_dir)[:-1], "logger=none", "backbone=local",
            f"backbone.model_id={tiny_w2v2_dir}", "backbone.name=tiny", "analysis=cca",
            "analysis.layers=[first,-1,last]"]  # fmt: skip
    run = tmp_path / "run"
    run_cli("analyze.py", args, run)
    df = pd.read_csv(run / "results.csv")
    assert set(df.metric) == {"pwcca", "cca_mean", "pwcca_null", "cca_mean_null"}
    assert set(df.evaluation) == {"held_out"} and sorted(df.layer.unique()) == [0]  # layers 0 and 3: one pair
    null = df[df.metric == "pwcca_null"].value.iloc[0]
    assert abs(null) < 0.2  # held out: the shuffled-frames floor is near 0
    with pytest.raises(AssertionError, match=r"analysis.layers: layer 7 is out of range; valid layers: 0\.\.3"):
        run_cli("analyze.py", [*args[:-1], "analysis.layers=[0,7]"], tmp_path / "bad")
