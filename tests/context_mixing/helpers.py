"""Helpers shared by the test modules of this folder (imported from here, not from another test module)."""

from __future__ import annotations

from src.context_mixing import (
    word_frames,
)
from tests.context_mixing.conftest import WORDS


def _groups(bb, waveform):
    T = (
        int(bb.config.max_source_positions)
        if bb.config.model_type == "whisper"
        else bb.num_frames(len(waveform))
    )
    g = word_frames(WORDS, T, bb.frame_rate, bb.frame_offset, audio_duration=len(waveform) / 16000)
    return T, g
