"""UtteranceClassifier: forward vs a literal reference, learning, save/load, cache vs live pooling,
train.py task=commands end to end, and the tutorial's remote-code model converted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.analyses.base import load_classifier
from src.backbones.remote import RemoteCodeError, load_remote_audio_classifier
from src.jobs.utterance import convert_multihead_model
from src.probes.utterance import (
    ClassifierError,
    UtteranceClassifier,
    fit_classifier,
    live_states,
    pooled_from_cache,
)
from tests.reference.utterance import classifier_logits

HEADS = {"action": ["a", "b", "c"], "object": ["x", "y"]}
NAMES = ["0", "1", "2", "final_norm"]


def _random_clf(weighted: bool, layer=2, seed=0) -> UtteranceClassifier:
    torch.manual_seed(seed)
    clf = UtteranceClassifier(HEADS, 5, NAMES, 3, layer=layer, weighted=weighted).double()
    with torch.no_grad():
        clf.feat_mean.normal_()
        clf.feat_std.uniform_(0.5, 2.0)
        if weighted:
            clf.state_weights.normal_()
    return clf


@pytest.mark.parametrize("weighted,layer", [(False, 2), (False, "final_norm"), (False, -1), (True, None)])
def test_forward_matches_literal_reference(weighted, layer):
    clf = _random_clf(weighted, layer)
    g = torch.Generator().manual_seed(1)
    states = [torch.randn(3, 7, 5, generator=g, dtype=torch.float64) for _ in NAMES]  # (B, T, D) each
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False  # one real frame
    out = clf(states, mask)
    idx = None if weighted else clf.state_index
    assert idx == {2: 2, "final_norm": 3, -1: 2, None: None}[layer]
    ref = classifier_logits(
        [s.tolist() for s in states], mask.tolist(), idx, clf.state_weights.tolist() if weighted else None,
        clf.feat_mean.tolist(), clf.feat_std.tolist(),
        {h: (clf.head(h).weight.tolist(), clf.head(h).bias.tolist()) for h in HEADS},
    )  # fmt: skip
    for h in HEADS:
        np.testing.assert_allclose(out[h].detach().numpy(), np.array(ref[h]), rtol=1e-12, atol=1e-12)
    # padding frames do not matter
    states2 = [s.clone() for s in states]
    for s in states2:
        s[~mask] = 1e6
    for h in HEADS:
        torch.testing.assert_close(clf(states2, mask)[h], out[h], rtol=1e-9, atol=1e-9)


def test_layer_resolution_and_errors():
    assert UtteranceClassifier(HEADS, 5, NAMES, 3, layer=-1).state_index == 2
    assert UtteranceClassifier(HEADS, 5, NAMES, 3, layer="last").layer == 2
    assert UtteranceClassifier(HEADS, 5, NAMES, 3, layer="final_norm").state_index == 3
    with pytest.raises(ClassifierError, match="out of range"):
        UtteranceClassifier(HEADS, 5, NAMES, 3, layer=7)
    clf = UtteranceClassifier(HEADS, 5, NAMES, 3, layer=1)
    with pytest.raises(ClassifierError, match="reads 4 states"):
        clf([torch.zeros(1, 2, 5)] * 3)
    with pytest.raises(ClassifierError, match="no head 'location'"):
        clf.head("location")
    with pytest.raises(ClassifierError, match="no real frame"):
        clf([torch.zeros(1, 2, 5)] * 4, torch.zeros(1, 2, dtype=torch.bool))


def _blobs(n_per: int, n_classes: int, d: int, seed: int, shuffle: bool = False):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d)) * 3
    y = np.repeat(np.arange(n_classes), n_per)
    x = centres[y] + 0.3 * rng.standard_normal((len(y), d))
    if shuffle:
        y = rng.permutation(y)
    return torch.tensor(x[:, None], dtype=torch.float32), torch.tensor(y)


@pytest.mark.parametrize("weighted", [False, True])
def test_learns_separable_and_not_shuffled(weighted):
    heads = {"action": [f"c{k}" for k in range(4)]}
    for shuffle, check in ((False, lambda a: a == 1.0), (True, lambda a: a < 0.45)):
        x, y = {}, {}
        for split, seed in (("train", 0), ("val", 1), ("test", 2)):
            xs, ys = _blobs(30, 4, 8, 0, shuffle)  # same centres for every split
            rng = np.random.default_rng(seed + 10)
            xs = xs + 0.3 * torch.tensor(rng.standard_normal(xs.shape), dtype=torch.float32)
            if weighted:  # two states: only the second carries the classes
                xs = torch.cat([torch.tensor(rng.standard_normal(xs.shape), dtype=torch.float32), xs], 1)
            x[split], y[split] = xs, {"action": ys if not shuffle else ys[torch.randperm(len(ys), generator=torch.Generator().manual_seed(seed))]}
        torch.manual_seed(0)
        names = ["0", "1"] if weighted else ["0"]
        clf = UtteranceClassifier(heads, 8, names, len(names), layer=None if weighted else 0, weighted=weighted)
        fit_classifier(clf, x, y, seed=0, max_epochs=200, patience=20)
        with torch.no_grad():
            acc = float((clf.forward_pooled(x["test"])["action"].argmax(-1) == y["test"]["action"]).float().mean())
        assert check(acc), (shuffle, acc)


def test_training_is_seeded():
    x, y = _blobs(20, 3, 4, 0)
    data_x = {k: x for k in ("train", "val")}
    data_y = {k: {"action": y} for k in ("train", "val")}
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        clf = UtteranceClassifier({"action": ["a", "b", "c"]}, 4, ["0"], 1, layer=0)
        fit_classifier(clf, data_x, data_y, seed=3, max_epochs=20)
        outs.append(clf.head("action").weight.detach().clone())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_save_load_round_trip_and_randomized(tmp_path):
    clf = _random_clf(True).float()
    states = [torch.randn(2, 6, 5) for _ in NAMES]
    clf.save(tmp_path / "c.pt", {"seed": 4, "test_accuracy": {"action": 0.5}})
    back, meta = UtteranceClassifier.load(tmp_path / "c.pt")
    assert meta == {"seed": 4, "test_accuracy": {"action": 0.5}}
    assert back.heads == clf.heads and back.weighted and back.layer is None
    for h in HEADS:
        torch.testing.assert_close(back(states)[h], clf(states)[h], rtol=0, atol=0)
    r1, r2 = clf.randomized(1), clf.randomized(1)
    for h in HEADS:
        assert r1.head(h).weight.shape == clf.head(h).weight.shape
        assert not torch.equal(r1.head(h).weight, clf.head(h).weight)
        torch.testing.assert_close(r1.head(h).weight, r2.head(h).weight, rtol=0, atol=0)
    assert not torch.equal(clf.randomized(2).head("action").weight, r1.head("action").weight)
    torch.testing.assert_close(r1.feat_mean, clf.feat_mean)  # same standardisation, new heads
    with pytest.raises(ClassifierError, match="does not exist"):
        UtteranceClassifier.load(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"no")
    with pytest.raises(ClassifierError, match="damaged or not a classifier checkpoint"):
        UtteranceClassifier.load(tmp_path / "bad.pt")


def test_pooled_cache_equals_live_pooled(tmp_path, tiny_whisper_dir):
    """The cache holds exactly the utterance's real frames (Whisper: not the window padding)."""
    from src.activations import ActivationCache
    from src.backbones.whisper import WhisperBackbone
    from src.datamodules.corpus import TextGridCorpus
    from tests.conftest import make_tone_corpus

    corpus = TextGridCorpus(make_tone_corpus(tmp_path / "corpus", num_utterances=3))
    bb = WhisperBackbone(str(tiny_whisper_dir), name="tw").eval()
    acts = ActivationCache(tmp_path / "cache", progress=False).get(bb, corpus)
    clf = UtteranceClassifier({"action": ["a", "b"]}, bb.hidden_size, bb.layer_names, bb.num_layers, weighted=True)
    cached = pooled_from_cache(acts, range(len(corpus)), range(len(bb.layer_names)))  # (N, S, D)
    for u in range(len(corpus)):
        states, mask = live_states(bb, torch.from_numpy(corpus[u].audio))
        assert mask.shape[1] == bb.num_frames(len(corpus[u].audio)) < bb.config.max_source_positions
        live = clf.pooled(states, mask)[0].numpy()  # (S, D)
        scale = np.abs(live).max(1, keepdims=True)
        assert np.all(np.abs(cached[u] - live) <= 2e-3 * scale + 1e-6), np.abs(cached[u] - live).max()
        # against the window-padded states the pooled features would differ: the mask matters
        full = bb.window_states([torch.from_numpy(corpus[u].audio)])[:, 0]  # (S, F, D)
        assert np.abs(full.mean(1).numpy() - live).max() > 1e-2


# ----------------------------------------------------------------------------- the tutorial's model


@pytest.fixture(scope="module")
def tiny_multihead_dir(tmp_path_factory):
    from tests.probes.tiny_multihead import write_tiny_multihead

    return write_tiny_multihead(tmp_path_factory.mktemp("mh") / "tiny-fsc-multihead")


def test_converted_stable_ln_model_reads_final_norm(tmp_path):
    from tests.probes.tiny_multihead import write_tiny_multihead

    d = write_tiny_multihead(tmp_path / "stable", seed=1, stable_ln=True)
    with pytest.warns(UserWarning):
        model = load_remote_audio_classifier(str(d), trust_remote_code=True)
    bb, clf = convert_multihead_model(model, str(d), normalize=False)
    assert clf.layer == "final_norm" and bb.norm_layout == "stable_ln"
    x = 0.1 * torch.randn(10000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x[None])
    out = clf(*live_states(bb, x))
    for k, h in enumerate(("action", "object", "location")):
        torch.testing.assert_close(out[h], getattr(ref, f"logits{k + 1}"), rtol=0, atol=1e-5)


def test_remote_code_needs_explicit_trust(tiny_multihead_dir):
    with pytest.raises(RemoteCodeError, match="trust_remote_code=true"):
        load_remote_audio_classifier(str(tiny_multihead_dir))
    with pytest.raises(RemoteCodeError, match="trust_remote_code=true"):
        load_remote_audio_classifier(str(tiny_multihead_dir), trust_remote_code="yes")


def test_converted_model_gives_the_remote_models_logits(tiny_multihead_dir, tmp_path):
    from src.jobs.utterance import convert_to_checkpoint

    with pytest.warns(UserWarning, match="trust_remote_code=True"):
        model = load_remote_audio_classifier(str(tiny_multihead_dir), trust_remote_code=True)
    assert type(model).__name__ == "Wav2Vec2ForMultiHeadMultiLabelClassification" and not model.training
    for normalize in (False, True):
        bb, clf = convert_multihead_model(model, str(tiny_multihead_dir), normalize=normalize)
        assert clf.heads["action"][0] == "activate" and clf.heads["location"][-1] == "washroom"
        assert [len(v) for v in clf.heads.values()] == [6, 14, 4] and clf.layer == bb.num_layers - 1
        g = torch.Generator().manual_seed(0)
        for n in (8000, 12345):
            x = 0.1 * torch.randn(n, generator=g)
            xin = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7) if normalize else x
            with torch.no_grad():
                ref = model(xin[None])
            states, mask = live_states(bb, x)
            out = clf(states, mask)
            for k, h in enumerate(("action", "object", "location")):
                torch.testing.assert_close(out[h], getattr(ref, f"logits{k + 1}"), rtol=0, atol=1e-5)
    # as a checkpoint: load_classifier rebuilds the backbone from its record, with the caller's trust only
    bcfg = {"_target_": "src.backbones.remote.multihead_backbone", "model_id": str(tiny_multihead_dir),
            "trust_remote_code": True, "normalize": False, "name": "tiny-mh"}  # fmt: skip
    with pytest.warns(UserWarning):
        path = convert_to_checkpoint(bcfg, tmp_path / "conv.pt")
    with pytest.raises(ClassifierError, match="trust_remote_code is never read from a file"):
        load_classifier(path)
    with pytest.warns(UserWarning):
        bb2, clf2, meta = load_classifier(path, trust_remote_code=True)
    assert meta["converted_from"] == str(tiny_multihead_dir) and bb2.name == "tiny-mh"
    x = 0.1 * torch.randn(9000, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x[None])
    torch.testing.assert_close(clf2(*live_states(bb2, x))["object"], ref.logits2, rtol=0, atol=1e-5)


def _compose(overrides, config="train"):
    from hydra import compose, initialize_config_dir

    from src.jobs.common import register_resolvers
    from tests.conftest import ROOT

    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(config, overrides=overrides)


def test_tutorial_experiment_converts_through_ensure_classifier(tiny_multihead_dir, tmp_path):
    from src.jobs.utterance import ensure_classifier

    over = ["experiment=tutorial_attribution", f"backbone.model_id={tiny_multihead_dir}", "backbone.normalize=false",
            f"paths.output_dir={tmp_path}"]  # fmt: skip
    cfg = _compose(over, "analyze")  # an analyze.py experiment (it selects analysis=attribution)
    assert list(cfg.analysis.methods) == ["integrated_gradients"] and cfg.data.shuffle_seed == 42
    assert list(cfg.data.rows) == [0] and cfg.data.rows_shuffle_seed == 85
    with pytest.raises(ClassifierError, match="explicit backbone.trust_remote_code=true"):
        ensure_classifier(cfg)
    cfg = _compose([*over, "backbone.trust_remote_code=true"], "analyze")
    with pytest.warns(UserWarning, match="trust_remote_code=True"):
        path = ensure_classifier(cfg)
        assert path == tmp_path / "classifiers" / "wav2vec2-base-fsc-ic-multihead_converted.pt"
        assert ensure_classifier(cfg) == path  # reused, not converted again
        backbone, clf, meta = load_classifier(path, trust_remote_code=True)
    model = load_remote_audio_classifier(str(tiny_multihead_dir), trust_remote_code=True)
    x = 0.1 * torch.randn(7000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x[None])
    torch.testing.assert_close(clf(*live_states(backbone, x))["location"], ref.logits3, rtol=0, atol=1e-5)


def test_stale_checkpoint_is_detected(tmp_path):
    """A stable checkpoint whose saved backbone or data settings differ from the run's is not reused."""
    from omegaconf import OmegaConf

    from src.jobs.utterance import _stale_reason

    clf = UtteranceClassifier(HEADS, 5, NAMES, 3, layer=-1)
    path = tmp_path / "c.pt"
    bcfg = {"_target_": "src.backbones.whisper.WhisperBackbone", "model_id": "m", "seed": 0}
    clf.save(path, {"backbone": {"kind": "whisper", "args": {"model_id": "m", "seed": 0}, "name": "m"},
                    "data": {"voices": ["kal"], "root": "/d"}})  # fmt: skip
    same = OmegaConf.create({"backbone": bcfg, "data": {"voices": ["kal"], "root": "/d"}})
    assert _stale_reason(path, same) is None
    other = OmegaConf.create({"backbone": bcfg, "data": {"voices": ["kal", "slt"], "root": "/d"}})
    assert "data settings differ: voices" in _stale_reason(path, other)
    seed1 = OmegaConf.create({"backbone": {**bcfg, "seed": 1}, "data": {"voices": ["kal"], "root": "/d"}})
    assert "backbone settings differ: seed" in _stale_reason(path, seed1)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert "unreadable" in _stale_reason(tmp_path / "bad.pt", same)
