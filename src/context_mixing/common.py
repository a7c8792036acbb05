"""Shared pieces of the context-mixing engines (encoder: encoder.py; Whisper decoder: decoder.py).

Everything here works through forward hooks / pre-hooks that are removed on exit *and* on error
(context managers), never through forked model files.  Conventions used by every engine:

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


class ContextMixingError(ValueError):
    """Bad input or an unsupported request for a context-mixing measure; the message names the
    utterance, word, measure or config key concerned."""


# ----------------------------------------------------------------------------------------- hooks


def hook_snapshot(model: torch.nn.Module) -> dict[str, tuple[int, int, int, int]]:
    """Counts of (forward, forward-pre, backward, kwargs-forward) hooks per submodule name.

    transformers may install its own hooks (output recorders) on first use, so tests compare a
    snapshot taken before a call with one taken after, instead of expecting no hooks at all."""
    out = {}
    for name, m in model.named_modules():
        out[name] = (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                     len(getattr(m, "_forward_hooks_with_kwargs", {})))  # fmt: skip
    return out


@contextmanager
def hooked(*registrations) -> Iterator[list]:
    """Register hooks given as zero-argument callables returning a handle (e.g.
    ``lambda: m.register_forward_hook(fn)``); remove them all on exit, also on error."""
    handles = []
    try:
        for reg in registrations:
            handles.append(reg())
        yield handles
    finally:
        for h in handles:
            h.remove()


def current_attn_implementation(model) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_attn_implementation", None) if cfg is not None else None


@contextmanager
def attn_implementation(model, impl: str | None) -> Iterator[None]:
    """Switch ``model`` (a transformers PreTrainedModel) to attention implementation ``impl``
    (``"eager"`` for measures that need the weights) and restore the previous one on exit, also on
    error.  ``impl=None`` or the current implementation: no change."""
    prev = current_attn_implementation(model)
    if impl is None or impl == prev:
        yield
        return
    if not hasattr(model, "set_attn_implementation"):
        raise ContextMixingError(f"{type(model).__name__} cannot switch its attention implementation to {impl!r}")
    model.set_attn_implementation(impl)
    try:
        yield
    finally:
        model.set_attn_implementation(prev)


@contextmanager
def capture_layer_inputs(modules: Sequence[torch.nn.Module]) -> Iterator[list]:
    """Record the positional and keyword inputs of each module's (first) call during the block:
    yields a list filled with ``(args, kwargs)`` per module (None until called)."""
    got: list = [None] * len(modules)

    def make(i):
        def pre(_m, args, kwargs):
            if got[i] is None:
                got[i] = (tuple(args), dict(kwargs))

        return pre

    regs = [(lambda m=m, i=i: m.register_forward_pre_hook(make(i), with_kwargs=True)) for i, m in enumerate(modules)]
    with hooked(*regs):
        yield got


@contextmanager
def capture_outputs(modules: Sequence[torch.nn.Module], index: int | None = 0) -> Iterator[list]:
    """Record each module's output during the block (``index``: element of a tuple output, or None
    for the whole output); yields a list filled with one entry per module."""
    got: list = [None] * len(modules)

    def make(i):
        def hook(_m, _args, output):
            if index is not None and isinstance(output, (tuple, list)):
                got[i] = output[index]
            else:
                got[i] = output

        return hook

    regs = [(lambda m=m, i=i: m.register_forward_hook(make(i))) for i, m in enumerate(modules)]
    with hooked(*regs):
        yield got


@contextmanager
def capture_module_inputs(modules: Sequence[torch.nn.Module]) -> Iterator[list]:
    """Record the first positional input of each module (e.g. what a ``v_proj`` is fed)."""
    got: list = [None] * len(modules)

    def make(i):
        def pre(_m, args):
            got[i] = args[0]

        return pre

    regs = [(lambda m=m, i=i: m.register_forward_pre_hook(make(i))) for i, m in enumerate(modules)]
    with hooked(*regs):
        yield got


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


def first_output(output):
    """A layer's hidden states: transformers layers return a tensor or a tuple ``(tensor, ...)``."""
    return output[0] if isinstance(output, (tuple, list)) else output


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
