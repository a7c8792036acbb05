"""Feature attribution for speech models: representations, targets, captum methods, segments.

See docs/attribution.md.  Public API (shared with the faithfulness / agreement analyses)::

    from src.attribution import (INPUT_TYPES, Segments, make_segments, AttributionTarget, classifier_target,
                                 whisper_token_targets, ctc_targets, attribute, segment_scores)

captum is imported only inside :func:`attribute` (its import costs seconds).
"""

from src.attribution.inputs import (
    BASELINES,
    INPUT_TYPES,
    AttributionError,
    Representation,
    eval_mode,
    whisper_log_mel,
)
from src.attribution.methods import GRADIENT_METHODS, MASK_METHODS, METHODS, PERTURBATION_METHODS, attribute
from src.attribution.segments import (
    REDUCTIONS,
    SEGMENT_KINDS,
    SegmentError,
    Segments,
    make_segments,
    segment_scores,
)
from src.attribution.targets import AttributionTarget, classifier_target, ctc_targets, whisper_token_targets

__all__ = [
    "BASELINES", "INPUT_TYPES", "GRADIENT_METHODS", "MASK_METHODS", "METHODS", "PERTURBATION_METHODS", "REDUCTIONS",
    "SEGMENT_KINDS", "AttributionError", "AttributionTarget", "Representation", "SegmentError", "Segments",
    "attribute", "classifier_target", "ctc_targets", "eval_mode", "make_segments", "segment_scores",
    "whisper_log_mel", "whisper_token_targets",
]  # fmt: skip
