"""The SpeechBackbone interface: one frozen model (or a baseline feature extractor).

Frame-time convention (see src/datamodules/alignment.py): frame ``i`` of an utterance
stands for the time ``frame_offset + i / frame_rate`` seconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


class BackboneError(ValueError):
    """Bad backbone configuration or input; the message says what to do."""


@dataclass
class Encoded:
    """Hidden states of a batch, with lengths (they always travel together)."""

    hidden: Tensor  # (L, B, T, D), padded along T
    lengths: Tensor  # (B,) valid frames per item
    attentions: Tensor | None = None  # (L', B, H, T, T) where asked for


class SpeechBackbone(torch.nn.Module):
    name: str = "backbone"
    num_layers: int  # hidden states including the embedding output
    hidden_size: int
    frame_rate: float  # frames per second
    frame_offset: float  # seconds from frame 0 to the time it stands for
    sample_rate: int = 16000
    # True when padding a batch leaves every item's valid frames unchanged
    padding_safe: bool = True

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for audio of ``num_samples`` samples (deterministic, cheap)."""
        raise NotImplementedError

    def min_samples(self) -> int:
        """Shortest input (samples) that yields at least one frame."""
        n = 1
        while self.num_frames(n) < 1:
            n += 1
        return n

    @property
    def config_dict(self) -> dict:
        return {}

    @property
    def fingerprint(self) -> str:
        """Model id + revision + config hash: the cache key's backbone part."""
        blob = json.dumps({"name": self.name, **self.config_dict}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_input(self, num_samples: int, utt_id: str = "?") -> None:
        """Raise BackboneError naming the utterance when the model cannot take this length."""
        n = int(num_samples)
        if self.num_frames(n) < 1:
            raise BackboneError(
                f"utterance {utt_id!r}: {n} samples ({n / self.sample_rate:.4f} s) is shorter than "
                f"{self.name}'s receptive field ({self.min_samples()} samples)"
            )

    @torch.no_grad()
    def encode(self, waveforms: list[Tensor], output_attentions: bool = False) -> Encoded:
        raise NotImplementedError

    def frame_times(self, num_frames: int) -> np.ndarray:
        return self.frame_offset + np.arange(num_frames) / self.frame_rate
