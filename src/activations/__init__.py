"""The seam of the framework: an on-disk cache of every layer's activations.

The backbone runs once per corpus; every stored hidden state is written in that one pass,
and every probe and analysis reads memory-mapped slices of it.

- :mod:`src.activations.reader`: ``Activations`` (open a complete cache, layer and frame views, the utterance
  index, integrity checks), ``read_rows`` / ``release_pages``, the checksums, ``CacheError``. Imports no torch
  until a layer's values are checked, so readers of a cache stay light.
- :mod:`src.activations.builder`: ``ActivationCache`` (key, build, resume, lock, space checks, the Lightning
  predict loop, distributed handshake), ``plan_batches``, ``check_values``.

``from src.activations import ActivationCache, Activations, ...`` keeps working: the reader's names are
imported here, the builder's on first use (it imports torch, Lightning only when building).
"""

from __future__ import annotations

from src.activations.reader import (
    CACHE_FORMAT,
    CHECKSUM_BLOCK,
    CHECKSUM_BLOCKS,
    VERIFY,
    Activations,
    CacheError,
    LayerIndexError,
    backbone_layer_names,
    full_sha256,
    read_rows,
    release_pages,
    sampled_blocks,
    sampled_sha256,
)

_BUILDER = ("ActivationCache", "CacheValueError", "check_values", "plan_batches")

__all__ = [
    "CACHE_FORMAT",
    "CHECKSUM_BLOCK",
    "CHECKSUM_BLOCKS",
    "VERIFY",
    "Activations",
    "CacheError",
    "LayerIndexError",
    "backbone_layer_names",
    "full_sha256",
    "read_rows",
    "release_pages",
    "sampled_blocks",
    "sampled_sha256",
    *_BUILDER,
]


def __getattr__(name: str):
    if name in _BUILDER:
        from src.activations import builder

        return getattr(builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
