"""Fixtures of the attribution tests: tiny random backbones, a random UtteranceClassifier, hand-made utterances."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from src.datamodules.corpus import Interval, Utterance


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every attribution test on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def w2v_bb(tiny_w2v2_dir):
    from src.backbones.hf import HFBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HFBackbone(str(tiny_w2v2_dir)).eval()


@pytest.fixture(scope="session")
def whisper_bb(tiny_whisper_dir):
    from src.backbones.whisper import WhisperBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WhisperBackbone(str(tiny_whisper_dir), attn_implementation="eager").eval()


def make_classifier(bb, layer=-1, weighted=False, seed=0):
    """A random UtteranceClassifier (two heads) on ``bb``'s states."""
    from src.probes.utterance import UtteranceClassifier

    torch.manual_seed(seed)
    clf = UtteranceClassifier({"action": ["go", "stop", "wait"], "object": ["lamp", "door"]}, bb.hidden_size,
                              bb.layer_names, bb.num_layers, layer=layer, weighted=weighted)  # fmt: skip
    with torch.no_grad():
        for lin in clf.linears.values():
            lin.weight.normal_(0, 1.0)
    return clf.eval()


def make_utt(n: int = 16000, seed: int = 0, uid: str = "utt1", words=None) -> Utterance:
    """Noise plus tones of ``n`` samples; words tier ``words`` (default: two words with a pause around them)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    audio = (0.05 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 220 * t) * (t > 0.1)).astype(np.float32)
    if words is None:
        words = [Interval(0.1, 0.4, "go"), Interval(0.45, 0.8, "left")]
    return Utterance(uid, audio, 16000, tiers={"words": list(words)})
