"""Whisper decoder self-attention and cross-attention context mixing (src/context_mixing/decoder.py) against the
literal references of tests/reference/context_mixing.py (decoder section), on a tiny random Whisper in float64."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from src.backbones.whisper import WhisperBackbone
from src.context_mixing.common import ContextMixingError
from src.context_mixing.decoder import CROSS_MEASURES, SELF_MEASURES, decoder_scores
from tests.builders import hook_snapshot, tiny_whisper
from tests.reference import context_mixing as ref

TEXT = [5, 9, 11, 7, 20]  # forced transcript ids: N = 1 + 5 positions
GROUPS = [np.arange(0, 5), np.arange(5, 12), np.arange(12, 20)]  # three "encoder words" (frames)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2_whisper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_whisper(d, decoder_layers=2, init_std=0.5, max_source_positions=50)  # a 1 s window (whole seconds only)
    return d


def _bb(d, attn="sdpa") -> WhisperBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = WhisperBackbone(str(d), attn_implementation=attn).eval()
    bb.model.double()
    return bb


@pytest.fixture(scope="module")
def bb(whisper_dir):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return _bb(whisper_dir)


@pytest.fixture(scope="module")
def wave():
    return 0.1 * torch.randn(8800, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def scores(bb, wave):
    return decoder_scores(bb, wave, SELF_MEASURES, CROSS_MEASURES, source_groups=GROUPS, per_head=True, batch_size=4,
                          text_ids=TEXT)  # fmt: skip


@pytest.fixture(scope="module")
def reference(bb, wave, scores):
    feats = bb.features([wave]).to(torch.float64)
    return ref.decoder_reference(bb.model, feats, scores.input_ids, GROUPS)


def test_reference_recomputes_the_model(reference):
    # the literal layer (and decoder.layer_norm after the last one) reproduces the model's own decoder states
    assert max(reference["recomputed"]) < 1e-10


def test_teacher_forcing_ids(scores, bb):
    assert scores.input_ids == [2, *TEXT] and scores.output_ids == [*TEXT, 3]
    assert scores.prompt_len == 1 and scores.layers == [0, 1] and scores.num_frames == 50


def test_weight_measures_match_the_literal_reference(scores, reference):
    np.testing.assert_allclose(scores.self_frame["attention"], reference["attention"], atol=1e-10)
    np.testing.assert_allclose(scores.self_heads["attention"], reference["heads"], atol=1e-10)
    np.testing.assert_allclose(scores.self_frame["rollout"], ref.dec_rollout(reference["attention"]), atol=1e-10)
    np.testing.assert_allclose(scores.self_frame["attention_norm"], reference["attention_norm"], atol=1e-10)
    np.testing.assert_allclose(scores.self_frame["attention_norm_res"], reference["attention_norm_res"], atol=1e-10)
    np.testing.assert_allclose(scores.cross_frame["attention"], reference["cross_attention"], atol=1e-10)
    np.testing.assert_allclose(scores.cross_heads["attention"], reference["cross_heads"], atol=1e-10)
    np.testing.assert_allclose(scores.cross_frame["attention_norm"], reference["cross_norm"], atol=1e-10)
    # the per-head norm is alpha times the norm of that head's value vector
    h = scores.self_heads["attention_norm"]
    assert h.shape == (2, 2, 6, 6) and np.all(h[:, :, 0, 1:] == 0)  # causal


def test_value_zeroing_matches_the_literal_recomputation(scores, reference):
    vz = scores.self_frame["value_zeroing"]
    np.testing.assert_allclose(vz, reference["vz"], atol=1e-9)
    assert np.all(vz[np.broadcast_to(np.triu(np.ones((6, 6), bool), 1), vz.shape)] == 0.0)  # lower triangular
    assert np.all(np.diagonal(vz, axis1=1, axis2=2) > 0)
    np.testing.assert_allclose(scores.cross_value_zeroing, reference["cross_vz"], atol=1e-9)
    assert scores.cross_value_zeroing.shape == (2, 6, 3) and (scores.cross_value_zeroing > 0).all()


def test_last_layer_goes_through_decoder_layer_norm(bb, wave, reference):
    # without decoder.layer_norm on the last layer the last-layer value zeroing would differ from the reference
    # (which normalises both outputs); an empty group changes nothing: distance 0 on every layer
    s = decoder_scores(bb, wave, (), ("value_zeroing",), source_groups=[np.zeros(0, np.int64)], text_ids=TEXT)
    assert np.abs(s.cross_value_zeroing).max() < 1e-12
    dec = bb.model.model.decoder
    saved = dec.layer_norm.weight.data.clone()
    try:
        dec.layer_norm.weight.data.mul_(torch.linspace(0.1, 3.0, saved.numel(), dtype=saved.dtype))
        s2 = decoder_scores(bb, wave, ("value_zeroing",), (), text_ids=TEXT)
    finally:
        dec.layer_norm.weight.data.copy_(saved)
    s1 = decoder_scores(bb, wave, ("value_zeroing",), (), text_ids=TEXT)
    assert np.abs(s2.self_frame["value_zeroing"][0] - s1.self_frame["value_zeroing"][0]).max() < 1e-12  # layer 0: no LN
    assert np.abs(s2.self_frame["value_zeroing"][1] - s1.self_frame["value_zeroing"][1]).max() > 1e-6


def test_layer_subset_and_batch_size_do_not_change_numbers(bb, wave, scores):
    s = decoder_scores(bb, wave, ("rollout", "value_zeroing"), ("value_zeroing",), layers=[1], source_groups=GROUPS,
                       batch_size=1, text_ids=TEXT)  # fmt: skip
    assert s.layers == [1]
    np.testing.assert_allclose(s.self_frame["rollout"][0], scores.self_frame["rollout"][1], atol=1e-12)
    np.testing.assert_allclose(s.self_frame["value_zeroing"][0], scores.self_frame["value_zeroing"][1], atol=1e-12)
    np.testing.assert_allclose(s.cross_value_zeroing[0], scores.cross_value_zeroing[1], atol=1e-12)


def test_value_zeroing_same_under_sdpa_and_eager_and_eager_only_for_weights(whisper_dir, bb, wave, scores, monkeypatch):
    eager = _bb(whisper_dir, "eager")
    s = decoder_scores(eager, wave, ("value_zeroing",), ("value_zeroing",), source_groups=GROUPS, text_ids=TEXT)
    np.testing.assert_allclose(s.self_frame["value_zeroing"], scores.self_frame["value_zeroing"], atol=1e-12)
    np.testing.assert_allclose(s.cross_value_zeroing, scores.cross_value_zeroing, atol=1e-12)
    calls = []
    orig = type(bb.model).set_attn_implementation
    monkeypatch.setattr(type(bb.model), "set_attn_implementation", lambda self, impl: (calls.append(impl), orig(self, impl))[1])
    decoder_scores(bb, wave, ("value_zeroing",), ("value_zeroing",), source_groups=GROUPS, text_ids=TEXT)
    assert calls == []  # value zeroing alone never switches to eager
    decoder_scores(bb, wave, ("attention",), (), text_ids=TEXT)
    assert calls == ["eager", "sdpa"] and bb.model.config._attn_implementation == "sdpa"


def test_hooks_removed_after_runs_and_errors(bb, wave, monkeypatch):
    decoder_scores(bb, wave, ("attention",), ("value_zeroing",), source_groups=GROUPS, text_ids=TEXT)  # warm-up
    before = hook_snapshot(bb.model)
    decoder_scores(bb, wave, SELF_MEASURES, CROSS_MEASURES, source_groups=GROUPS, text_ids=TEXT)
    assert hook_snapshot(bb.model) == before
    fc2 = bb.model.model.decoder.layers[1].fc2

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(fc2, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        decoder_scores(bb, wave, ("attention",), ("value_zeroing",), source_groups=GROUPS, text_ids=TEXT)
    assert hook_snapshot(bb.model) == before and bb.model.config._attn_implementation == "sdpa"


def test_bad_input(bb, tiny_w2v2_dir):
    from src.backbones.hf import HFBackbone

    with pytest.raises(ContextMixingError, match=r"(?s)'w2v'.*Wav2Vec2Model.*Whisper"):
        decoder_scores(HFBackbone(str(tiny_w2v2_dir), name="w2v"), torch.zeros(8000), utt_id="u1")
    with pytest.raises(ValueError, match=r"utterance 'long'.*window"):
        decoder_scores(bb, torch.zeros(16000 * 3), ("attention",), (), utt_id="long", text_ids=TEXT)
    with pytest.raises(ContextMixingError, match="unknown decoder measures"):
        decoder_scores(bb, torch.zeros(4000), ("value_zeroing",), ("rollout",), text_ids=TEXT)
    with pytest.raises(ContextMixingError, match=r"utterance 'u2'.*tokenizer"):
        decoder_scores(bb, torch.zeros(4000), ("attention",), (), teacher_forcing="reference", reference_text="a b",
                       utt_id="u2")  # fmt: skip
    with pytest.raises(ContextMixingError, match=r"utterance 'u3'.*exceed.*32"):
        decoder_scores(bb, torch.zeros(4000), ("attention",), (), text_ids=list(range(40)), utt_id="u3")


def test_model_that_returns_no_weights_is_a_clear_error(bb, wave, monkeypatch):
    from contextlib import nullcontext

    import src.context_mixing.decoder as dec

    # pretend eager cannot be switched on: sdpa returns no attention weights
    monkeypatch.setattr(dec, "attn_implementation", lambda model, impl: nullcontext())
    with pytest.raises(ContextMixingError, match=r"utterance 'u9'.*no attention weights"):
        decoder_scores(bb, wave, ("attention",), (), text_ids=TEXT, utt_id="u9")
