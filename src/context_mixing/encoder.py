"""Context mixing in speech encoders (wav2vec2, HuBERT, data2vec-audio, Whisper): see docs/context_mixing.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from src.context_mixing.common import ContextMixingError

ENCODER_MEASURES = ("attention", "rollout", "attention_norm", "attention_norm_res", "value_zeroing")
WEIGHT_MEASURES = ("attention", "rollout", "attention_norm", "attention_norm_res")

__all__ = ["ENCODER_MEASURES", "WEIGHT_MEASURES", "ContextMixingError", "EncoderScores", "encoder_scores"]


@dataclass
class EncoderScores:
    """Frame-level context-mixing scores of one utterance.

    ``layers``: 0-based transformer layer indices (0 = the first transformer layer; score index ``k``
    belongs to ``layers[k]``).  ``num_frames`` = T, the sequence the encoder sees (1500 for Whisper:
    the whole 30 s window, padding included).  ``frame[m]``: ``(L, T, T)`` float64, rows = receiving
    frame, columns = source frame.  ``heads["attention"]``: ``(L, H, T, T)`` when ``per_head``.
    ``value_zeroing``: ``(L, T, G)``, 1 - cos of receiving frame t when source group g is zeroed (NaN
    for frames not computed, see ``receivers``).
    """

    layers: list[int]
    num_frames: int
    frame_rate: float
    frame_offset: float
    frame: dict[str, np.ndarray] = field(default_factory=dict)
    heads: dict[str, np.ndarray] = field(default_factory=dict)
    value_zeroing: np.ndarray | None = None
    receivers: np.ndarray | None = None  # frames at which value_zeroing rows were computed
    attn_implementation: dict[str, str] = field(default_factory=dict)  # measure -> implementation used


def encoder_scores(backbone, waveform: torch.Tensor, measures: Sequence[str], layers: Sequence[int] | None = None,
                   source_groups: list[np.ndarray] | None = None, per_head: bool = False,
                   batch_size: int = 16, utt_id: str = "?", receivers="groups") -> EncoderScores:  # fmt: skip
    raise NotImplementedError
