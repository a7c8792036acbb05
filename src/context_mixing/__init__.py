"""Context mixing (attention, rollout, attention norms, value zeroing) for speech transformers."""

from src.context_mixing.common import ContextMixingError
from src.context_mixing.encoder import ENCODER_MEASURES, EncoderScores, encoder_scores
from src.context_mixing.words import (
    FRAME_MAPPINGS,
    outside_mass,
    pool_blocks,
    pool_receivers,
    rollout,
    row_normalize,
    word_frames,
)

__all__ = [
    "ENCODER_MEASURES", "FRAME_MAPPINGS", "ContextMixingError", "EncoderScores", "encoder_scores",
    "outside_mass", "pool_blocks", "pool_receivers", "rollout", "row_normalize", "word_frames",
]  # fmt: skip
