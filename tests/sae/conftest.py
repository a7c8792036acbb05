"""Synthetic activation caches from known sparse dictionaries (src/sae/synthetic.py), shared by tests/sae."""

from __future__ import annotations

import functools

import lightning as L
import pytest


@pytest.fixture(scope="session")
def dict_cache(tmp_path_factory):
    """12,000 frames of 64 dims, each 3 of 48 known unit atoms (coefficients in [1, 3)) plus noise 0.02;
    two layers (each its own dictionary), float32. Returns (path, dictionaries (2, 48, 64))."""
    from src.sae.synthetic import write_dictionary_cache

    return write_dictionary_cache(tmp_path_factory.mktemp("saedict") / "c", 12000, 64, 48, 3, noise=0.02,
                                  num_layers=2, seed=5)  # fmt: skip


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """A small 2-layer float16 cache (2,000 frames, 16 dims, utterances of 40 frames) for fast mechanics tests."""
    from src.sae.synthetic import write_dictionary_cache

    return write_dictionary_cache(tmp_path_factory.mktemp("saesmall") / "c", 2000, 16, 24, 2, noise=0.05,
                                  num_layers=2, seed=1, dtype="float16", utt_len=40)  # fmt: skip


def trainer_factory(**extra):
    """A quiet one-process CPU trainer (partial, as the job's)."""
    kw = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return functools.partial(L.Trainer, **{**kw, **extra})


def stream_of(path, layers="all", val_fraction=0.1, seed=0, buffer_frames=4096):
    from src.activations import Activations
    from src.sae.data import FrameSource, FrameStream

    src = FrameSource.from_cache(Activations(path), layers, silence="keep")
    return FrameStream([src], val_fraction=val_fraction, seed=seed, buffer_frames=buffer_frames)
