"""The cache stores every state a backbone names (residual 0..N, then final_norm) and reads
them by index or name; old cache formats are never read as this one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import src.activations.reader as A
from src.activations import ActivationCache, Activations, CacheError
from src.backbones.features import SpectralBaseline
from src.datamodules.corpus import TextGridCorpus
from src.layers import LAYER_CONVENTION, LayerSpecError
from tests.helpers import FakeBackbone


@pytest.fixture()
def corpus(tone_corpus_dir):
    return TextGridCorpus(tone_corpus_dir)


def test_states_with_final_norm_are_stored_and_named(corpus, tmp_path):
    bb = FakeBackbone()
    acts = ActivationCache(tmp_path, dtype="float32", batch_size=3, progress=False).get(bb, corpus)
    meta = json.loads((acts.path / "meta.json").read_text())
    assert meta["format"] == A.CACHE_FORMAT and meta["layer_convention"] == LAYER_CONVENTION
    assert meta["num_layers"] == 3 and meta["layer_names"] == ["0", "1", "2", "final_norm"]
    assert sorted(p.name for p in acts.path.glob("layer_*.npy")) == [f"layer_{k:02d}.npy" for k in range(4)]
    assert [f["name"] for f in meta["files"]] == meta["layer_names"]
    assert acts.num_layers == 3 and acts.num_states == 4 and acts.extra_states == ["final_norm"]
    for u in (0, len(corpus) - 1):
        ref = bb.states_one(torch.from_numpy(corpus[u].audio)).numpy()  # (S, T, D)
        for k in range(4):
            np.testing.assert_allclose(acts.frames(u, k), ref[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(acts.frames(corpus[u].id, "final_norm"), acts.frames(u, 3))
    # one meaning of an index: negatives count from the end of the residual states
    assert acts.layer(-1) is acts.layer(2) and acts.layer("2") is acts.layer(2) and acts.layer(-3) is acts.layer(0)
    assert acts.layer("final_norm") is acts.layer(3)
    for bad in (4, -4, "final", "7"):
        with pytest.raises(IndexError, match=r"0\.\.3"):
            acts.layer(bad)
    with pytest.raises(LayerSpecError):  # the same error is a LayerSpecError, as the parser's
        acts.layer(5)
    assert acts.resolve_layers("final_norm") == [3]
    assert acts.resolve_layers("all") == [0, 1, 2] and acts.resolve_layers(None) == [0, 1, 2]
    assert acts.resolve_layers([-1, "final_norm", "first"]) == [0, 2, 3]
    with pytest.raises(LayerSpecError, match="probe.layer"):
        acts.resolve_layers(3, what="probe.layer")
    assert "final_norm" in repr(acts)


def test_backbone_without_layer_names_stores_residual_states(corpus, tmp_path):
    bb = FakeBackbone(extras=())
    acts = ActivationCache(tmp_path, dtype="float32", progress=False).get(bb, corpus)
    assert acts.layer_names == ["0", "1", "2"] and acts.extra_states == [] and acts.num_states == 3
    mf = ActivationCache(tmp_path, dtype="float32", progress=False).get(SpectralBaseline("mfcc"), corpus)
    assert mf.layer_names == ["0"] and mf.num_states == 1 and mf.resolve_layers("last") == [0]


def test_backbone_returning_other_states_than_it_names_is_an_error(corpus, tmp_path, monkeypatch):
    bb = FakeBackbone()
    monkeypatch.setattr(FakeBackbone, "layer_names", property(lambda self: ["0", "1", "2"]))
    with pytest.raises(CacheError, match="returned 4 hidden states"):
        ActivationCache(tmp_path, dtype="float32", progress=False).get(bb, corpus)
    assert not list(tmp_path.glob("*/meta.json"))


def test_old_format_is_never_read(corpus, tmp_path, monkeypatch):
    cache = ActivationCache(tmp_path, dtype="float32", progress=False)
    bb = FakeBackbone()
    new = cache.path_for(bb, corpus)
    monkeypatch.setattr(A, "CACHE_FORMAT", 1)
    old = cache.path_for(bb, corpus)
    assert old != new  # an old cache has another key: it is rebuilt, not opened
    monkeypatch.undo()
    acts = cache.get(bb, corpus)
    meta = json.loads((acts.path / "meta.json").read_text())
    meta["format"] = 1
    (acts.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="format 1.*delete the directory"):
        Activations(acts.path)
