"""Representations: states equal backbone.encode, the differentiable log-mel equals WhisperFeatureExtractor,
the STFT magnitude / fixed phase round trip is exact."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from src.attribution import INPUT_TYPES, Representation, whisper_log_mel
from tests.attribution.conftest import make_utt


def _check_states(bb, audio, input_type):
    enc = bb.encode([torch.as_tensor(audio)])
    T = int(enc.lengths[0])
    rep = Representation(bb, audio, input_type, "u")
    with torch.no_grad():
        states = rep.states(rep.x0)
    assert len(states) == len(bb.layer_names) == enc.hidden.shape[0]
    assert rep.n_real == T
    for k, s in enumerate(states):
        torch.testing.assert_close(s[0, :T], enc.hidden[k, 0, :T], atol=1e-5, rtol=0)
    return rep


@pytest.mark.parametrize("input_type", INPUT_TYPES)
def test_w2v2_states_equal_encode(w2v_bb, input_type):
    rep = _check_states(w2v_bb, make_utt(12345).audio, input_type)
    want = {"waveform": (1, 12345), "spectrogram": (1, 12345 // 320 + 1, 201), "cnn": (1, 38, 32)}[input_type]
    assert tuple(rep.x0.shape) == want


@pytest.fixture(scope="module")
def stable_ln_bb(tmp_path_factory):
    from src.backbones.hf import HFBackbone
    from tests.builders import save_tiny_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = save_tiny_model(tmp_path_factory.mktemp("w2v_ln"), norm="layer", seed=1)
        return HFBackbone(str(d)).eval()


@pytest.mark.parametrize("input_type", ["waveform", "cnn"])
def test_stable_ln_states_equal_encode(stable_ln_bb, input_type):
    assert stable_ln_bb.layer_names[-1] == "final_norm"
    _check_states(stable_ln_bb, make_utt(9000).audio, input_type)


@pytest.mark.parametrize("input_type", INPUT_TYPES)
def test_whisper_states_equal_encode(whisper_bb, input_type):
    rep = _check_states(whisper_bb, make_utt(20000).audio, input_type)
    assert rep.padded == (input_type != "waveform")
    shape = {"waveform": (1, 20000), "spectrogram": (1, 80, 200), "cnn": (1, 100, 32)}[input_type]
    assert tuple(rep.x0.shape) == shape


@pytest.mark.parametrize("seconds", [7.3, 30.0])
def test_log_mel_equals_feature_extractor(seconds):
    """Real-length audio in the 30 s window: zero padding, the clamp at max - 8 (quiet stretches), (x + 4) / 4."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()  # 80 mels, 30 s, the real checkpoints' extractor
    rng = np.random.default_rng(1)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    audio = (0.5 * np.sin(2 * np.pi * 440 * t) * (t < 2) + 1e-4 * rng.standard_normal(n)).astype(np.float32)
    audio[int(3 * 16000) : int(4 * 16000)] = 0.0  # digital silence: the clamp is active
    want = fe(audio, sampling_rate=16000, return_tensors="pt")["input_features"]  # (1, 80, 3000)
    got = whisper_log_mel(torch.as_tensor(audio)[None], fe)
    assert got.shape == want.shape == (1, 80, 3000)
    top = float(want.max())
    assert float(want.min()) == pytest.approx(top - 2.0, abs=1e-6)  # clamp (8 / 4) reached
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_log_mel_is_differentiable_and_batched():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(chunk_length=1)
    x = torch.randn(2, 8000, requires_grad=True)
    y = whisper_log_mel(x, fe)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    one = whisper_log_mel(x[1:].detach(), fe)
    torch.testing.assert_close(y[1:].detach(), one, atol=1e-6, rtol=0)  # per-item max, not over the batch


def test_stft_magnitude_fixed_phase_round_trip(w2v_bb):
    audio = make_utt(16007).audio  # not a multiple of the hop: istft(length=N) keeps every sample
    rep = Representation(w2v_bb, audio, "spectrogram", "u")
    spec = rep.x0.transpose(1, 2).to(torch.complex64) * torch.exp(1j * rep._phase)
    win = torch.hann_window(400)
    back = torch.istft(spec, n_fft=400, hop_length=320, win_length=400, window=win, center=True, length=16007)
    torch.testing.assert_close(back[0], torch.as_tensor(audio), atol=1e-5, rtol=0)
    assert tuple(rep.x0.shape) == (1, 16007 // 320 + 1, 201)
    np.testing.assert_allclose(rep.step_times()[:3], [0.0, 0.02, 0.04])


def test_baselines(w2v_bb, whisper_bb):
    audio = make_utt(8000).audio
    rep = Representation(w2v_bb, audio, "cnn", "u")
    sil = rep.baseline("silence")
    assert sil.shape == rep.x0.shape and float(sil.abs().max()) > 0  # CNN(0) is not 0 (biases)
    assert torch.equal(rep.baseline("zeros"), torch.zeros_like(rep.x0))
    wr = Representation(w2v_bb, audio, "waveform", "u")
    noise = wr.baseline("noise", snr_db=10.0, seed=3)
    snr = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / float((noise.double() ** 2).mean()))
    assert snr == pytest.approx(10.0, abs=0.3)
    assert torch.equal(noise, wr.baseline("noise", snr_db=10.0, seed=3))
    mel = Representation(whisper_bb, audio, "spectrogram", "u").baseline("silence")
    torch.testing.assert_close(mel, torch.full_like(mel, -1.5))  # log10(1e-10) -> (-10 + 4) / 4
    with pytest.raises(ValueError, match="baseline must be"):
        rep.baseline("blur")
