"""The default float16 cache: values equal a direct forward within float16 precision, per-layer
stats are those of the stored arrays, and values float16 cannot hold (or the model should not
give) fail the build naming layer and utterance, leaving no readable cache."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from src.activations import ActivationCache, CacheError
from src.backbones.hf import HFBackbone
from src.datamodules.corpus import TextGridCorpus
from tests.helpers import FakeBackbone


@pytest.fixture()
def corpus(tone_corpus_dir):
    return TextGridCorpus(tone_corpus_dir)



def test_default_float16_cache_matches_direct_forward_and_stats(corpus, tiny_w2v2_dir, tmp_path):
    bb = HFBackbone(str(tiny_w2v2_dir))
    cache = ActivationCache(tmp_path / "f16", batch_size=4, progress=False)  # the default dtype
    assert cache.dtype == np.float16
    acts = cache.get(bb, corpus)
    meta = json.loads((acts.path / "meta.json").read_text())
    assert meta["dtype"] == "float16" and all(f["dtype"] == "<f2" for f in meta["files"])
    for u in (0, 3, len(corpus) - 1):
        x = torch.from_numpy(corpus[u].audio)
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        with torch.no_grad():
            hs = bb.model(x[None], output_hidden_states=True).hidden_states  # the bare model
        for k in range(acts.num_states):
            got = acts.frames(u, k)
            assert got.dtype == np.float16
            ref = hs[k][0, : acts.lengths[u]].numpy()
            # rounding to float16 moves a value by at most half a float16 step; allow one step
            # (batched float32 noise can put a value on the other side of a rounding boundary)
            step = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float32)
            assert np.all(np.abs(got.astype(np.float32) - ref) <= step + 1e-6), (u, k)
    # stats: of the float32 values before the cast; rounding is monotone, so they round to the stored extremes
    ref32 = ActivationCache(tmp_path / "f32", dtype="float32", batch_size=4, progress=False).get(bb, corpus)
    assert [s["name"] for s in meta["layer_stats"]] == acts.layer_names
    for k, s in enumerate(meta["layer_stats"]):
        stored = np.asarray(acts.layer(k))
        assert np.float16(s["min"]) == stored.min() and np.float16(s["max"]) == stored.max()
        assert s["absmax"] == max(abs(s["min"]), abs(s["max"]))
        exact = np.asarray(ref32.layer(k))
        assert s["min"] == pytest.approx(float(exact.min()), rel=1e-5, abs=1e-6)
        assert s["max"] == pytest.approx(float(exact.max()), rel=1e-5, abs=1e-6)
        s32 = ref32.layer_stats[k]
        assert s32["min"] == float(exact.min()) and s32["max"] == float(exact.max())  # float32: exact


@pytest.mark.parametrize(("dtype", "value", "state"), [("float16", np.inf, 1), ("float32", -np.inf, 3),
                                                       ("float16", np.nan, 3), ("float32", np.nan, 0)])  # fmt: skip
def test_non_finite_value_fails_naming_layer_and_utterance(corpus, tmp_path, dtype, value, state):
    u = 5
    bb = FakeBackbone(poison=(corpus[u].audio, state, value))
    cache = ActivationCache(tmp_path, dtype=dtype, batch_size=3, flush_every=1, progress=False)
    name = bb.layer_names[state]
    with pytest.raises(CacheError, match=rf"{re.escape(corpus[u].id)}.*layer {name}\b.*(NaN|inf).*model is broken"):
        cache.get(bb, corpus)
    final = cache.path_for(bb, corpus)
    assert not final.exists() and not final.with_name(final.name + ".partial").exists()
    assert not list(tmp_path.glob("*/meta.json")) and not list(tmp_path.glob("*.partial*"))


def test_float16_overflow_fails_naming_abs_max_and_float32_holds_it(corpus, tmp_path):
    u = 2
    bb = FakeBackbone(poison=(corpus[u].audio, 3, -1e6))
    cache = ActivationCache(tmp_path, batch_size=3, flush_every=1, progress=False)  # float16
    with pytest.raises(CacheError) as err:
        cache.get(bb, corpus)
    msg = str(err.value)
    assert corpus[u].id in msg and "layer final_norm" in msg and "1e+06" in msg and "cache.dtype=float32" in msg
    assert not list(tmp_path.glob("*/meta.json")) and not list(tmp_path.glob("*.partial*"))
    # just inside the float16 range is fine
    ok = ActivationCache(tmp_path / "edge", batch_size=3, progress=False).get(
        FakeBackbone(poison=(corpus[u].audio, 1, 65504.0)), corpus)  # fmt: skip
    assert ok.layer_stats[1]["max"] == 65504.0 and float(np.asarray(ok.layer(1)).max()) == 65504.0
    acts = ActivationCache(tmp_path, dtype="float32", batch_size=3, progress=False).get(bb, corpus)
    s = acts.layer_stats[3]
    assert s["name"] == "final_norm" and s["min"] == -1e6 and s["absmax"] == 1e6
    assert float(np.asarray(acts.layer(3)).min()) == -1e6


def test_inf_from_a_hooked_real_model_layer(corpus, tiny_w2v2_dir, tmp_path):
    bb = HFBackbone(str(tiny_w2v2_dir))
    layer = bb.model.encoder.layers[1]  # its output is state 2

    def hook(_m, _a, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, 1, 0] = float("inf")
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = layer.register_forward_hook(hook)
    try:
        cache = ActivationCache(tmp_path, batch_size=4, progress=False)
        with pytest.raises(CacheError, match=r"utterance '(" + "|".join(map(re.escape, corpus.ids)) + r")': layer 2 "):
            cache.get(bb, corpus)
    finally:
        handle.remove()
    assert not list(tmp_path.glob("*/meta.json")) and not list(tmp_path.glob("*.partial*"))
