"""Causal interventions through the backbone surface: activation patching (encoder frames and words, Whisper
decoder token positions, attention heads before the output projection, MLP outputs; denoising and noising),
head ablation (zero, mean, resample), batched exact sweeps and attribution patching. docs/interventions.md.

Public API (stable; analyses and experiments build on it):

- :class:`Site` (``component`` in encoder|decoder|cross_attention, ``kind`` in resid|head|mlp, ``layer``,
  ``positions``, ``head``; ``layer`` in the state convention for every kind), :func:`site_grid` (every layer x
  position group [x head]), :func:`site_layers` (a layer spec per kind), :class:`InterventionError`;
- :func:`make_inputs` -> :class:`Inputs`; :func:`forward` -> :class:`Out` (what metrics read);
- :func:`capture`, :func:`patched`, :func:`ablated`, :func:`mean_activation`; :func:`patched_rows` (a different
  patch per batch row: many ablations decoded as one batch), :func:`ablation_vector` (what zero / mean ablation
  writes);
- :func:`patch_sweep` -> :class:`SweepResult` (batched, chunked; ``batched=False`` = one forward per site);
- :func:`attribution_patching` -> :class:`AttributionResult`, :func:`rank_correlation`;
- pairs: :func:`check_pair`, :func:`word_positions`, :func:`pair_word_positions`;
- metrics: src/interventions/metrics.py.
"""

from src.interventions.engine import (
    AttributionResult,
    Inputs,
    Out,
    SweepResult,
    ablated,
    ablation_vector,
    attribution_patching,
    capture,
    check_pair,
    forward,
    make_inputs,
    mean_activation,
    pair_word_positions,
    patch_sweep,
    patched,
    patched_rows,
    rank_correlation,
    run_encoder_from,
    word_positions,
)
from src.interventions.sites import (
    COMPONENTS,
    KINDS,
    InterventionError,
    Site,
    site_grid,
    site_layers,
    validate_site,
)

__all__ = [
    "COMPONENTS", "KINDS", "AttributionResult", "Inputs", "InterventionError", "Out", "Site", "SweepResult",
    "ablated", "ablation_vector", "attribution_patching", "capture", "check_pair", "forward", "make_inputs", "mean_activation",
    "pair_word_positions", "patch_sweep", "patched", "patched_rows", "rank_correlation", "run_encoder_from",
    "site_grid", "site_layers", "validate_site", "word_positions",
]
