"""Shared pieces of the context-mixing engines (encoder: encoder.py; Whisper decoder: decoder.py).

Everything here works through forward hooks / pre-hooks that are removed on exit *and* on error
(context managers of the one hook toolkit, src/backbones/hooks.py, re-exported here), never through
forked model files.  Conventions used by every engine:

- frame and token scores are float64 numpy arrays, rows = receiving position, columns = source;
- value zeroing multiplies the *output* of a ``v_proj`` linear layer (so the value bias is zeroed
  too) by a per-copy mask ``(B, T_src)``: copy ``b`` has its source positions ``mask[b] == 0``
  removed in all heads, while queries, keys and attention weights stay those of the clean input;
- cosine distance ``1 - cos`` is taken row by row (per frame), never through a T x T matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from src.backbones.hooks import (  # noqa: F401  (the hook toolkit, re-exported for the engines' callers)
    capture_layer_inputs,
    capture_module_inputs,
    capture_outputs,
    first_output,
    hooked,
)


class ContextMixingError(ValueError):
    """Bad input or an unsupported request for a context-mixing measure; the message names the
    utterance, word, measure or config key concerned."""


# ----------------------------------------------------------------------------------------- hooks


@contextmanager
def zero_values(v_proj: torch.nn.Module, keep: Tensor) -> Iterator[None]:
    """Value zeroing: multiply the output of ``v_proj`` (``(B, T_src, D)``, bias included) by
    ``keep`` (``(B, T_src)``, 1 = keep, 0 = zero this source position in every head)."""

    def hook(_m, _args, output):
        k = keep.to(device=output.device, dtype=output.dtype)
        if k.shape[0] != output.shape[0] or k.shape[1] != output.shape[1]:
            raise ContextMixingError(f"value mask {tuple(k.shape)} does not match the values {tuple(output.shape)}")
        return output * k[..., None]

    with hooked(lambda: v_proj.register_forward_hook(hook)):
        yield


def expand_batch(obj, b: int):
    """Repeat the batch dimension (of size 1) of every tensor in ``obj`` (nested tuples / dicts) to ``b``."""
    if isinstance(obj, Tensor):
        if obj.dim() >= 1 and obj.shape[0] == 1 and b != 1:
            return obj.expand(b, *obj.shape[1:])
        return obj
    if isinstance(obj, tuple):
        return tuple(expand_batch(o, b) for o in obj)
    if isinstance(obj, list):
        return [expand_batch(o, b) for o in obj]
    if isinstance(obj, dict):
        return {k: expand_batch(v, b) for k, v in obj.items()}
    return obj


def cosine_distance_rows(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos(a[..., t, :], b[..., t, :])`` per row, in float64: ``(..., T, D), (..., T, D) -> (..., T)``.

    A zero row (both norms 0) gives distance 0 against itself; one zero row against a non-zero one gives 1."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    dot = (a * b).sum(-1)
    na = torch.linalg.vector_norm(a, dim=-1)
    nb = torch.linalg.vector_norm(b, dim=-1)
    den = na * nb
    cos = torch.where(den > 0, dot / torch.where(den > 0, den, torch.ones_like(den)), (na == nb).to(a.dtype))
    return 1.0 - cos


def groups_keep_mask(groups: Sequence[np.ndarray], num_src: int) -> Tensor:
    """``(G, T_src)`` float mask: row ``g`` is 0 on the frames of group ``g``, 1 elsewhere."""
    keep = torch.ones(len(groups), num_src, dtype=torch.float64)
    for g, idx in enumerate(groups):
        keep[g, torch.as_tensor(np.asarray(idx, dtype=np.int64))] = 0.0
    return keep
