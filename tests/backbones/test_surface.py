"""The backbone surface (docs/DESIGN.md "Live-model techniques: one surface on the backbone"): what each family
says it is without loading weights, the differentiable front end against transformers' own extractor and
forward, the decoder methods against ``WhisperForConditionalGeneration``'s forward, and the errors of a
feature baseline.  Reference values are literals or the kept library (transformers), never the surface itself."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from src.backbones.base import BackboneError
from src.backbones.features import SpectralBaseline
from src.backbones.hf import HFBackbone
from src.backbones.whisper import WhisperBackbone
from tests.builders import save_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stable_dir(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_tiny_model(tmp_path_factory.mktemp("stable"), norm="layer", num_hidden_layers=2)


def _hf(path) -> HFBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HFBackbone(str(path), attn_implementation="eager")


def test_family_facts_without_weights(tiny_w2v2_dir, stable_dir, tiny_whisper_dir):
    post, stable = _hf(tiny_w2v2_dir), _hf(stable_dir)
    wh = WhisperBackbone(str(tiny_whisper_dir), attn_implementation="eager")
    base = SpectralBaseline(kind="mfcc")
    want = {  # family, model_type, norm_layout, has_decoder, has_frontend, pads_to_window, feature_hop
        "post": ("wav2vec2", "wav2vec2", "post_ln", False, True, False, None),
        "stable": ("wav2vec2", "wav2vec2", "stable_ln", False, True, False, None),
        "whisper": ("whisper", "whisper", "pre_ln", True, True, True, 160),
        "baseline": ("features", "", None, False, False, False, None),
    }
    for key, bb in (("post", post), ("stable", stable), ("whisper", wh), ("baseline", base)):
        got = (bb.family, bb.model_type, bb.norm_layout, bb.has_decoder, bb.has_frontend, bb.pads_to_window,
               bb.feature_hop)  # fmt: skip
        assert got == want[key], key
    assert not post.weights_loaded and not stable.weights_loaded and not wh.weights_loaded  # facts only


def test_wavlm_model_type(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = _hf(tiny_model("wavlm", num_hidden_layers=1))
    assert (bb.family, bb.model_type, bb.norm_layout) == (
        "wav2vec2",
        "wavlm",
        "post_ln",
    ) and not bb.weights_loaded


def test_baseline_has_no_live_surface():
    base = SpectralBaseline(kind="mfcc")
    for call in (lambda: base.differentiable_features(torch.zeros(1, 800)), lambda: base.frontend(torch.zeros(1, 3)),
                 lambda: base.states_from_frontend(torch.zeros(1, 3)), lambda: base.encoder_run(torch.zeros(800)),
                 base.layer_modules, base.attention_modules):  # fmt: skip
        with pytest.raises(BackboneError, match="feature baseline"):
            call()


def test_wav2vec2_front_end_equals_transformers(stable_dir):
    """differentiable_features = Wav2Vec2FeatureExtractor's normalisation; frontend -> states_from_frontend =
    the model's own forward (last_hidden_state = final_norm for stable-LN)."""
    from transformers import Wav2Vec2FeatureExtractor

    bb = _hf(stable_dir)
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(6400)).astype(np.float32)
    fe = Wav2Vec2FeatureExtractor.from_pretrained(str(stable_dir))
    want = fe(audio, sampling_rate=16000, return_tensors="pt")["input_values"]  # (1, N)
    x = bb.differentiable_features(torch.as_tensor(audio)[None])
    torch.testing.assert_close(x, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        states = bb.states_from_frontend(bb.frontend(x))
        out = bb.model(want, output_hidden_states=True)
    assert len(states) == len(bb.layer_names) == 4
    assert states[0].shape == (1, bb.num_frames(6400), 32)
    torch.testing.assert_close(states[-1], out.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[1], out.hidden_states[1], atol=1e-5, rtol=1e-5)
    run, T = bb.encoder_run(torch.as_tensor(audio), "u")
    assert T == bb.num_frames(6400) == 19
    with torch.no_grad():
        torch.testing.assert_close(run().last_hidden_state, out.last_hidden_state, atol=1e-6, rtol=0)


def test_whisper_front_end_equals_transformers(tiny_whisper_dir):
    from transformers import WhisperFeatureExtractor

    bb = WhisperBackbone(str(tiny_whisper_dir), attn_implementation="eager")
    rng = np.random.default_rng(1)
    audio = (0.2 * rng.standard_normal(12000)).astype(np.float32)
    fe = WhisperFeatureExtractor.from_pretrained(str(tiny_whisper_dir))
    want = fe(audio, sampling_rate=16000, return_tensors="pt")["input_features"]  # (1, 80, 200)
    mel = bb.differentiable_features(torch.as_tensor(audio)[None])
    assert mel.shape == want.shape == (1, 80, 200)
    torch.testing.assert_close(mel, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        states = bb.states_from_frontend(bb.frontend(want))
        out = bb.model.model.encoder(want, output_hidden_states=True)
    assert len(states) == 4 and states[0].shape == (1, 100, 32)
    torch.testing.assert_close(states[0], out.hidden_states[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[-1], out.last_hidden_state, atol=1e-5, rtol=1e-5)
    run, T = bb.encoder_run(torch.as_tensor(audio), "u")
    assert T == 100
    with pytest.raises(BackboneError, match=r"utterance 'long'.*longer than Whisper's 2 s window"):
        bb.encoder_run(torch.zeros(40000), "long")


def test_whisper_decoder_surface_equals_the_model(tiny_whisper_dir):
    bb = WhisperBackbone(str(tiny_whisper_dir), attn_implementation="eager")
    assert bb.eos_token_id == 3 and bb.is_multilingual is False  # tiny_whisper's config
    assert WhisperBackbone._strip is WhisperBackbone.strip_generated
    audio = torch.as_tensor((0.2 * np.random.default_rng(2).standard_normal(9000)).astype(np.float32))
    feats = bb.features([audio])
    ids = torch.tensor([bb.decoder_prompt_ids() + [10, 11, 12]])
    with torch.no_grad():
        ref = bb.model(input_features=feats, decoder_input_ids=ids, output_attentions=True)
        enc = bb.window_states([audio])[-1]
        logits = bb.output_head()(bb.decoder_output(ids, enc))
        tf = bb.teacher_forced(feats, ids, output_attentions=True)
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tf.logits, ref.logits, atol=0, rtol=0)
    assert len(tf.cross_attentions) == len(bb.decoder_layer_modules()) == 1
    layer = bb.model.model.decoder.layers[0]
    assert bb.decoder_attention_modules() == [layer.self_attn] and bb.cross_attention_modules() == [
        layer.encoder_attn
    ]
    hs = bb.decoder_states(enc, ids)
    assert len(hs) == 2
    torch.testing.assert_close(bb.output_head()(bb.decoder_final_norm_module()(hs[-1])), ref.logits, atol=1e-5,
                               rtol=1e-5)  # fmt: skip


def test_prepare_is_public_and_the_old_name_remains(tiny_w2v2_dir):
    bb = _hf(tiny_w2v2_dir)
    assert HFBackbone._prepare is HFBackbone.prepare
    batch, mask, frames = bb.prepare([torch.ones(800), torch.ones(800)])
    assert batch.shape == (2, 800) and frames.tolist() == [2, 2]


def test_using_attention_switches_and_restores_on_error(tiny_whisper_dir):
    bb = WhisperBackbone(str(tiny_whisper_dir), attn_implementation="sdpa")
    assert bb.attention_implementation == "sdpa" and bb.parameter_dtype == torch.float32
    with bb.using_attention("eager"):
        assert bb.attention_implementation == "eager"
    assert bb.attention_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"):
        with bb.using_attention("eager"):
            raise RuntimeError("inside")
    assert bb.attention_implementation == "sdpa"
    with bb.using_attention(None):
        assert bb.attention_implementation == "sdpa"
