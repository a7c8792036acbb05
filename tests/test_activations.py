"""The activation cache: values equal a direct forward; atomic, resumable, shared builds."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest
import torch

from src.activations import ActivationCache, Activations, CacheError, plan_batches
from src.backbones.base import BackboneError
from src.backbones.features import SpectralBaseline
from src.backbones.hf import HFBackbone
from src.backbones.whisper import WhisperBackbone
from src.datamodules.corpus import TextGridCorpus


@pytest.fixture()
def corpus(tone_corpus_dir):
    return TextGridCorpus(tone_corpus_dir)


def _direct(backbone, utt):
    with torch.no_grad():
        return backbone.encode([torch.from_numpy(utt.audio)])


@pytest.mark.parametrize("kind", ["w2v2", "whisper"])
def test_cached_layers_equal_direct_forward(kind, corpus, tiny_w2v2_dir, tiny_whisper_dir, tmp_path):
    bb = HFBackbone(str(tiny_w2v2_dir)) if kind == "w2v2" else WhisperBackbone(str(tiny_whisper_dir))
    acts = ActivationCache(tmp_path, dtype="float32", batch_size=4, progress=False).get(bb, corpus)
    assert acts.num_layers == bb.num_layers and len(acts) == len(corpus)
    for u in (0, 3, len(corpus) - 1):
        utt = corpus[u]
        # a forward of the bare model, not our encode(): hidden_states[k]
        if kind == "w2v2":
            x = torch.from_numpy(utt.audio)
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
            with torch.no_grad():
                hs = bb.model(x[None], output_hidden_states=True).hidden_states
        else:
            feats = bb.feature_extractor([utt.audio], sampling_rate=16000, return_tensors="pt")["input_features"]
            encoder = bb.model.model.encoder
            raw = []
            handle = encoder.layers[-1].register_forward_hook(lambda m, a, out, raw=raw: raw.append(out[0] if isinstance(out, tuple) else out))
            try:
                with torch.no_grad():
                    hs = list(encoder(feats, output_hidden_states=True).hidden_states)
            finally:
                handle.remove()
            if "final_norm" in acts.layer_names:  # transformers' last state is after encoder.layer_norm
                hs = [*hs[:-1], raw[0], hs[-1]]
        assert acts.num_states == len(hs) == len(acts.layer_names)
        for k in range(acts.num_states):
            ref = hs[k][0, : acts.lengths[u]].numpy()
            np.testing.assert_allclose(acts.frames(utt.id, k), ref, atol=1e-5, rtol=1e-5)
        assert hs[0].shape[1] >= acts.lengths[u]


def test_whisper_frames_trimmed_to_audio(tiny_whisper_dir):
    bb = WhisperBackbone(str(tiny_whisper_dir))
    assert bb.frame_rate == 50 and bb.frame_offset == 0.0
    # frame i centred at 320 i samples: keep those inside the audio
    assert [bb.num_frames(n) for n in (1, 320, 321, 640, 8000, 32000)] == [1, 1, 2, 2, 25, 100]
    enc = bb.encode([torch.randn(8000), torch.randn(3200)])
    assert enc.hidden.shape[2] == 25 and enc.lengths.tolist() == [25, 10]
    with pytest.raises(BackboneError, match="longer than Whisper"):
        bb.encode([torch.randn(32001)])


def test_w2v2_frame_convention(tiny_w2v2_dir, tmp_path):
    bb = HFBackbone(str(tiny_w2v2_dir))
    # receptive field 345 samples, stride 320: frame i covers [320 i, 320 i + 345)
    assert bb.receptive_field == 345 and bb.frame_rate == 50
    assert bb.frame_offset == pytest.approx(345 / 2 / 16000)
    assert bb.num_frames(344) == 0 and bb.num_frames(345) == 1 and bb.num_frames(665) == 2
    assert not bb.padding_safe  # group norm, no attention mask
    # the receptive field, measured on a layer-norm conv encoder (group norm mixes all of time):
    # frame 0 sees samples [0, 345) only
    from tests.builders import save_tiny_model

    enc = HFBackbone(str(save_tiny_model(tmp_path / "ln", norm="layer"))).model.feature_extractor
    x = torch.randn(1, 1000)
    with torch.no_grad():
        base = enc(x)[0, :, 0]  # (C,)
        y = x.clone()
        y[0, 345:] += 1.0
        assert torch.equal(enc(y)[0, :, 0], base)
        y = x.clone()
        y[0, 344] += 1.0
        assert not torch.allclose(enc(y)[0, :, 0], base)
    assert bb.num_frames(1000) == 3


def test_short_audio_is_a_clear_error(tiny_w2v2_dir, tmp_path):
    import soundfile as sf

    from tests.conftest import make_tone_corpus

    root = make_tone_corpus(tmp_path / "c", num_utterances=2)
    wav = sorted(root.rglob("*.wav"))[0]
    sf.write(wav, np.zeros(200, np.float32), 16000)
    (wav.with_suffix(".TextGrid")).unlink()
    corpus = TextGridCorpus(root, require_textgrid=False)
    cache = ActivationCache(tmp_path / "cache", progress=False)
    with pytest.raises(BackboneError, match=wav.stem):
        cache.get(HFBackbone(str(tiny_w2v2_dir)), corpus)
    assert not list((tmp_path / "cache").glob("*/meta.json"))


def test_second_get_reuses_cache(corpus, tmp_path):
    cache = ActivationCache(tmp_path, progress=False)
    bb = SpectralBaseline("mfcc")
    a = cache.get(bb, corpus)
    mtime = (a.path / "layer_00.npy").stat().st_mtime_ns
    b = cache.get(SpectralBaseline("mfcc"), corpus)
    assert b.path == a.path and (b.path / "layer_00.npy").stat().st_mtime_ns == mtime
    assert cache.path_for(SpectralBaseline("mfcc", deltas=True), corpus) != a.path


class _Boom(RuntimeError):
    pass


def test_interrupted_build_is_never_read_and_resumes(corpus, tmp_path, monkeypatch):
    bb = SpectralBaseline("logmel")
    cache = ActivationCache(tmp_path, dtype="float32", batch_size=1, flush_every=1, progress=False)
    calls = {"n": 0}
    real = bb.encode

    def flaky(waves, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Boom("killed")
        return real(waves, **kw)

    monkeypatch.setattr(bb, "encode", flaky)
    with pytest.raises(_Boom):
        cache.get(bb, corpus)
    final = cache.path_for(bb, corpus)
    assert not final.exists()  # nothing complete-looking
    partial = final.with_name(final.name + ".partial")
    assert partial.exists() and np.load(partial / "done.npy").sum() == 3
    with pytest.raises(CacheError):
        Activations(partial)
    # a new build resumes: only the remaining utterances are encoded
    calls["n"] = -100
    acts = cache.get(bb, corpus)
    assert calls["n"] == -100 + len(corpus) - 3
    ref = ActivationCache(tmp_path / "ref", dtype="float32", progress=False).get(SpectralBaseline("logmel"), corpus)
    np.testing.assert_array_equal(np.asarray(acts.layer(0)), np.asarray(ref.layer(0)))
    assert acts.layer_stats == ref.layer_stats  # value stats of the first run's utterances survived the kill
    assert not partial.exists()


def test_stale_partial_with_other_plan_is_discarded(corpus, tmp_path):
    cache = ActivationCache(tmp_path, dtype="float32", progress=False)
    bb = SpectralBaseline("mfcc")
    final = cache.path_for(bb, corpus)
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True)
    (partial / "plan.json").write_text(json.dumps({"key": "other"}))
    (partial / "junk").write_text("x")
    acts = cache.get(bb, corpus)
    assert acts.total_frames == sum(bb.num_frames(corpus.num_samples(i)) for i in range(len(corpus)))
    assert not (acts.path / "junk").exists()


def _build_in_process(root, corpus_dir, q):
    from src.activations import ActivationCache
    from src.backbones.features import SpectralBaseline
    from src.datamodules.corpus import TextGridCorpus

    acts = ActivationCache(root, progress=False).get(SpectralBaseline("mfcc", deltas=True), TextGridCorpus(corpus_dir))
    q.put((str(acts.path), acts.meta["build_seconds"], (acts.path / "layer_00.npy").stat().st_mtime_ns))


def test_parallel_jobs_build_once(tone_corpus_dir, tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path, tone_corpus_dir, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    res = [q.get(timeout=5) for _ in procs]
    assert res[0] == res[1]  # same directory, same single build (same mtime)
    assert len(list(tmp_path.glob("*/meta.json"))) == 1


def test_plan_batches_respects_padding_safety():
    ns = [100, 200, 100, 300, 200, 100]
    assert plan_batches(range(6), ns, 2, padding_safe=False) == [[0, 2], [5], [1, 4], [3]]
    assert plan_batches(range(6), ns, 4, padding_safe=True) == [[0, 2, 5, 1], [4, 3]]
