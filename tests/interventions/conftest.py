"""Tiny random backbones of each family (float64) and a clean/corrupted pair of equal length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.context_mixing.conftest import FAMILIES, make_backbone

SECONDS = 0.7
IDS = [2, 5, 6, 7, 8, 9]  # teacher-forced decoder input of the tiny Whisper (start token 2, then "text")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def iv_root(tmp_path_factory):
    return tmp_path_factory.mktemp("iv_models")


def wave(freq: float, seed: int, seconds: float = SECONDS) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    return (0.3 * torch.sin(2 * np.pi * freq * t) + 0.1 * torch.randn(n, generator=g)).float()


@pytest.fixture(scope="session")
def pair():
    return wave(220.0, 0), wave(330.0, 1)


@pytest.fixture(scope="session")
def backbones(iv_root):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = make_backbone(iv_root, family)
        return cache[family]

    return get


FAMILY_NAMES = list(FAMILIES)
