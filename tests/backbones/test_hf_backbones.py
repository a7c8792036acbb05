"""The wavlm / hubert / data2vec-audio / wav2vec2 families as backbones, and backbone errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from src.backbones.base import BackboneError
from src.backbones.features import SpectralBaseline
from src.backbones.hf import HFBackbone
from src.backbones.whisper import WhisperBackbone


@pytest.mark.parametrize("model_type,norm,safe", [("hubert", "group", False), ("wavlm", "group", False),
                                                  ("wavlm", "layer", True), ("data2vec-audio", "layer", False),
                                                  ("wav2vec2", "layer", True)])  # fmt: skip
def test_family_hidden_states_and_padding(model_type, norm, safe, tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = tiny_model(model_type, norm)
        bb = HFBackbone(str(d))
    assert bb.num_layers == 4 and bb.hidden_size == 32 and bb.frame_rate == 50
    assert bb.padding_safe == safe
    torch.manual_seed(0)
    a, b = torch.randn(6000), torch.randn(4000)
    solo = bb.encode([b]).hidden[:, 0]  # (L, T, D)
    if bb.padding_safe:  # with an attention mask, a padded batch gives the same frames
        both = bb.encode([a, b])
        t = int(both.lengths[1])
        torch.testing.assert_close(both.hidden[:, 1, :t], solo, atol=1e-4, rtol=1e-4)
    else:
        with pytest.raises(BackboneError, match="equal length|padding"):
            bb.encode([a, b])
        if model_type == "data2vec-audio":  # why: even with its attention mask, padding changes the frames
            bb.padding_safe = True
            both = bb.encode([a, b])
            assert (both.hidden[:, 1, : int(both.lengths[1])] - solo).abs().max() > 1e-2


def test_random_init_control_differs_and_is_seeded(tiny_w2v2_dir):
    pre = HFBackbone(str(tiny_w2v2_dir))
    r1, r2 = (HFBackbone(str(tiny_w2v2_dir), pretrained=False, seed=1) for _ in range(2))  # the tiny "pretrained" model is seed 0
    x = torch.randn(5000)
    assert r1.name.endswith("-random") and r1.fingerprint != pre.fingerprint
    torch.testing.assert_close(r1.encode([x]).hidden, r2.encode([x]).hidden)
    assert not torch.allclose(pre.encode([x]).hidden[-1], r1.encode([x]).hidden[-1])


def test_missing_path_and_unreachable_hub_are_clear(monkeypatch):
    with pytest.raises(BackboneError, match="does not exist"):
        HFBackbone("/no/such/model/dir")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="local directory.*whisper_tiny_en"):
        HFBackbone("facebook/wav2vec2-base")


def test_mfcc_matches_a_literal_numpy_reference():
    """STFT -> power -> slaney mel -> dB (top_db 80) -> DCT-II ortho, frame i centred at i * hop."""
    from scipy.fft import dct
    from transformers.audio_utils import mel_filter_bank

    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000).astype(np.float32)
    bb = SpectralBaseline("mfcc", n_mfcc=13)
    got = bb.frames_one(torch.from_numpy(x)).numpy()
    n_fft, hop, win = 512, 320, 400
    window = np.zeros(n_fft)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = w  # torch centres a short window in n_fft
    padded = np.pad(x.astype(np.float64), n_fft // 2)
    frames = [padded[i * hop : i * hop + n_fft] * window for i in range(int(np.ceil(len(x) / hop)))]
    power = np.abs(np.fft.rfft(np.array(frames), axis=1)) ** 2  # (T, F)
    fb = mel_filter_bank(n_fft // 2 + 1, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    db = 10 * np.log10(np.maximum(power @ fb, 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    ref = dct(db, type=2, norm="ortho", axis=1)[:, :13]
    assert got.shape == ref.shape == (16, 13)
    np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-4)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 50])
def test_corrupt_weights_name_the_directory_and_file(tiny_w2v2_dir, tiny_whisper_dir, tmp_path, content):
    d = _copy(tiny_w2v2_dir, tmp_path / "w2v")
    (d / "model.safetensors").write_bytes(content)
    with pytest.raises(BackboneError, match=rf"{d}.*model\.safetensors.*corrupt"):
        HFBackbone(str(d))
    w = _copy(tiny_whisper_dir, tmp_path / "wh")
    (w / "model.safetensors").write_bytes(content)
    with pytest.raises(BackboneError, match=rf"{w}.*model\.safetensors.*corrupt"):
        WhisperBackbone(str(w))
    (d / "model.safetensors").unlink()  # no weights at all
    with pytest.raises(BackboneError, match=rf"{d}.*no weight file"):
        HFBackbone(str(d))


@pytest.mark.parametrize("text", ["", "{not json", "{}", '{"model_type": "nonsense"}'])
def test_invalid_config_json_names_the_directory_and_file(tiny_w2v2_dir, tmp_path, text):
    d = _copy(tiny_w2v2_dir, tmp_path / "w2v")
    (d / "config.json").write_text(text)
    with pytest.raises(BackboneError, match=rf"{d}.*config\.json"):
        HFBackbone(str(d))
    (d / "config.json").unlink()
    with pytest.raises(BackboneError, match=rf"{d}.*has no config\.json"):
        HFBackbone(str(d))


def test_unreachable_hub_id_says_download_elsewhere_or_give_a_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for cls, mid in ((HFBackbone, "facebook/wav2vec2-base"), (WhisperBackbone, "openai/whisper-base")):
        with pytest.raises(BackboneError, match=rf"{mid}.*machine with network.*local directory") as e:
            cls(mid)
        assert "backbone.model_id=" in str(e.value)


def test_normalize_is_read_or_explicit_never_guessed(tiny_w2v2_dir, tmp_path):
    import json

    assert HFBackbone(str(tiny_w2v2_dir)).do_normalize is True  # read from preprocessor_config.json
    d = _copy(tiny_w2v2_dir, tmp_path / "w2v")
    (d / "preprocessor_config.json").unlink()
    with pytest.raises(BackboneError, match="backbone.normalize=true.*backbone.normalize=false"):
        HFBackbone(str(d))
    (d / "preprocessor_config.json").write_text("{broken")
    with pytest.raises(BackboneError, match="could not be read.*backbone.normalize"):
        HFBackbone(str(d))
    (d / "preprocessor_config.json").write_text(json.dumps({"feature_size": 1}))
    with pytest.raises(BackboneError, match="no do_normalize"):
        HFBackbone(str(d))
    off = HFBackbone(str(d), normalize=False)
    on = HFBackbone(str(d), normalize=True)
    assert off.do_normalize is False and on.do_normalize is True and off.fingerprint != on.fingerprint
    x = 3.0 * torch.randn(5000) + 1.0
    assert not torch.allclose(off.encode([x]).hidden, on.encode([x]).hidden)
    with pytest.warns(UserWarning, match="overrides do_normalize=True"):
        HFBackbone(str(tiny_w2v2_dir), normalize=False)


def test_wavlm_falls_back_to_eager_and_bad_attn_names_the_key(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = tiny_model("wavlm", num_hidden_layers=2)
    with pytest.warns(UserWarning, match="does not support backbone.attn_implementation='sdpa'.*eager"):
        bb = HFBackbone(str(d), attn_implementation="sdpa")
    assert bb.attn_implementation == "eager"
    assert bb.encode([torch.randn(4000)]).hidden.shape[0] == 3
    with pytest.raises(BackboneError, match="backbone.attn_implementation='fast'"):
        HFBackbone(str(d), attn_implementation="fast")


def test_weights_missing_from_the_checkpoint_are_an_error_not_random(tiny_w2v2_dir, tiny_whisper_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    for cls, src, drop in ((HFBackbone, tiny_w2v2_dir, "encoder.layers.1.attention.k_proj.weight"),
                           (WhisperBackbone, tiny_whisper_dir, "model.encoder.layers.1.fc1.weight")):  # fmt: skip
        d = _copy(src, tmp_path / src.name)
        sd = load_file(d / "model.safetensors")
        assert drop in sd
        del sd[drop]
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        bb = cls(str(d))  # lazy: the weights (and the gap) are read on first use
        with pytest.raises(BackboneError, match=rf"{d}.*lacks 1 weights.*{drop}"):
            bb.encode([torch.zeros(4000)])
        assert cls(str(d), pretrained=False).num_layers >= 3  # the random control needs no weights
