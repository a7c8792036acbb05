"""backbone=mfcc_torchaudio against a literal implementation of torchaudio's MFCC definition (and librosa if installed)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.conftest import ROOT
from tests.reference.mfcc_torchaudio import melscale_fbanks, torchaudio_mfcc

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["backbone=mfcc_torchaudio"])
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the all-zero mel filter warning torchaudio prints too (128 mels, 201 bins)
        return instantiate(cfg.backbone)


def _speechlike(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 3 * t)) * t) + 0.05 * rng.standard_normal(n)
    x[: n // 5] *= 0.01  # a quiet start: the top_db floor matters
    return x.astype(np.float32)


@pytest.mark.parametrize("n", [16000, 23457, 401])
def test_matches_the_literal_definition(backbone, n):
    x = _speechlike(n, n)
    ref = torchaudio_mfcc(x)  # (n // 320 + 1, 13)
    assert backbone.num_frames(n) == n // 320 + 1 == ref.shape[0]
    enc = backbone.encode([torch.from_numpy(x)])
    got = enc.hidden[0, 0, : int(enc.lengths[0])].double().numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(
        got, ref, rtol=0, atol=1e-5 * np.abs(ref).max()
    )  # float32 STFT vs float64 (measured 3e-7 rel)


def test_filterbank_is_htk_unnormalised(backbone):
    ref = melscale_fbanks(201, 0.0, 8000.0, 128, 16000)
    np.testing.assert_allclose(backbone.mel_fb.double().numpy(), ref, atol=1e-6)
    assert (ref.max(0) == 0).any()  # torchaudio warns for these (128 mels over 201 bins)


def test_default_mfcc_backbone_unchanged(backbone):
    from src.backbones.features import SpectralBaseline

    old = SpectralBaseline()
    assert (
        "mel_scale" not in old.config_dict and old.num_frames(16000) == 50
    )  # the cache key of existing caches
    assert backbone.config_dict["mel_scale"] == "htk" and backbone.frame_offset == 0.0


def test_librosa_with_the_same_definition(backbone):
    librosa = pytest.importorskip("librosa")
    x = _speechlike(20000, 1)
    S = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=16000, n_fft=400, hop_length=320, win_length=400,
                                       window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=128,
                                       htk=True, norm=None)  # fmt: skip
    ref = librosa.feature.mfcc(S=librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=80.0), n_mfcc=13, dct_type=2,
                               norm="ortho").T  # fmt: skip
    got = backbone.encode([torch.from_numpy(x)]).hidden[0, 0].double().numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
