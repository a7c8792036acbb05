"""Tiny random backbones of every encoder family (float64 copies for 1e-10 agreement) and a test utterance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

FAMILIES = {
    "w2v2_post": ("wav2vec2", "group"),
    "w2v2_stable": ("wav2vec2", "layer"),
    "hubert": ("hubert", "group"),
    "data2vec": ("data2vec-audio", "layer"),
    "whisper": ("whisper", None),
}
WAVLM = {"wavlm_post": ("wavlm", "group"), "wavlm_stable": ("wavlm", "layer")}

# hand-made word intervals (s) for a 0.7 s utterance: touching words, a pause before the last one
WORDS = [("one", 0.05, 0.17), ("two", 0.17, 0.33), ("three", 0.33, 0.41), ("four", 0.47, 0.66)]
SECONDS = 0.7


def make_backbone(root, family: str, attn: str = "sdpa", double: bool = True):
    from src.backbones.hf import HFBackbone
    from src.backbones.whisper import WhisperBackbone
    from tests.builders import save_tiny_model, tiny_whisper

    model_type, norm = {**FAMILIES, **WAVLM}[family]
    d = root / family
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not d.exists():
            if model_type == "whisper":
                tiny_whisper(d)  # a 2 s window: T = 100 frames, 35 of them audio
            else:
                save_tiny_model(d, model_type=model_type, norm=norm)
        bb = (WhisperBackbone(str(d), attn_implementation=attn) if model_type == "whisper"
              else HFBackbone(str(d), attn_implementation=attn))  # fmt: skip
    bb.eval()
    if double:
        bb.model.double()
    return bb


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread (two threads spin-wait on a shared 2-core machine: 10x slower small
    matmuls). Restored after the module. Used by the encoder test modules (autouse there), not directory-wide."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cm_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cm_models")


@pytest.fixture(scope="session")
def waveform():
    g = torch.Generator().manual_seed(0)
    n = int(SECONDS * 16000)
    t = torch.arange(n) / 16000
    return (0.3 * torch.sin(2 * np.pi * 220 * t) + 0.1 * torch.randn(n, generator=g)).float()


@pytest.fixture(scope="session", params=list(FAMILIES))
def family_bb(request, cm_root):
    return request.param, make_backbone(cm_root, request.param)
