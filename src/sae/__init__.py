"""Sparse autoencoders trained from the activation cache; docs/sae.md.

Stable interface (used by the evaluation, feature statistics and dashboard):

- `SAE` (nn.Module): ``encode(x (N, D)) -> (N, F)``, ``decode(z) -> (N, D)``, ``forward(x) -> x_hat``,
  ``W_dec (F, D)``, ``b_dec (D,)``, ``W_enc (D, F)``, ``b_enc (F,)``, ``d_in``, ``d_sae``, ``architecture``,
  ``k``, ``meta`` (``layer_name``, ``layer`` (cache index), ``backbone`` (record), ``cache_key``,
  ``norm_mean``/``norm_std`` (lists, or None)); when standardised, ``encode``/``decode`` work in the
  standardised space and ``normalize(x)``/``denormalize(x)`` convert raw activations.
- `load_sae(path, backbone=None) -> SAE`, `save_sae(sae, path)` (SAELens folder + ``speechinterp.json``).
- `check_backbone(sae, backbone)`: width and layer against a backbone.
"""

from src.sae.io import SAEFileError, SAEMismatchError, check_backbone, load_sae, save_sae
from src.sae.model import ARCHITECTURES, SAE, SAEConfigError

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "SAEConfigError",
    "SAEFileError",
    "SAEMismatchError",
    "check_backbone",
    "load_sae",
    "save_sae",
]
