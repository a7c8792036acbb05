"""The hook toolkit: every forward hook the project puts on a model goes through here.

Each tool is a context manager that installs its hooks on entry and removes every one of them on exit,
also when the block (or a hook, or the model's forward) raises: nothing is left on the model after the
``with`` block, whatever happened inside it.  Hooks are only ever installed on modules the backbone hands
out (``layer_modules()``, ``attention_modules()``, ``decoder_layer_modules()``, ...) or on their children.

- :func:`hooked`: the primitive, zero-argument callables that each register one hook and return its handle;
- :func:`forward_hooks`: ``(module, fn)`` pairs as forward hooks or forward pre-hooks;
- :func:`capture_outputs` / :func:`record_outputs`: each module's output (the hidden states of a layer);
- :func:`capture_layer_inputs`: the positional and keyword inputs of each module's first call;
- :func:`capture_module_inputs`: each module's first positional input (e.g. what a ``v_proj`` is fed);
- :func:`first_output`: a layer's hidden states out of transformers' tensor-or-tuple outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch


def first_output(output):
    """A layer's hidden states: transformers layers return a tensor or a tuple ``(tensor, ...)``."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def hooked(*registrations: Callable[[], object]) -> Iterator[list]:
    """Register hooks given as zero-argument callables returning a handle (e.g.
    ``lambda: m.register_forward_hook(fn)``); remove them all on exit, also on error (including an error
    while registering a later one).  Yields the handles."""
    handles = []
    try:
        for reg in registrations:
            handles.append(reg())
        yield handles
    finally:
        for h in handles:
            h.remove()


def forward_hooks(
    hooks: Iterable[tuple[torch.nn.Module, Callable]], pre: bool = False, with_kwargs: bool = False
):
    """Install forward hooks (``pre=True``: forward pre-hooks) and remove them on exit, even on error.

    ``hooks`` is a list of ``(module, fn)``; ``fn`` has torch's hook signature
    (``fn(module, args, output)``, or ``fn(module, args)`` for pre-hooks; with ``with_kwargs`` the
    keyword arguments are passed too).  A context manager that yields the handles.
    """
    if pre:
        regs = [
            (lambda m=m, fn=fn: m.register_forward_pre_hook(fn, with_kwargs=with_kwargs)) for m, fn in hooks
        ]
    else:
        regs = [(lambda m=m, fn=fn: m.register_forward_hook(fn, with_kwargs=with_kwargs)) for m, fn in hooks]
    return hooked(*regs)


@contextmanager
def capture_outputs(modules: Sequence[torch.nn.Module], index: int | None = 0) -> Iterator[list]:
    """Record each module's output during the block (the last call wins; ``index``: element of a tuple output,
    or None for the whole output); yields a list filled with one entry per module (None until called)."""
    got: list = [None] * len(modules)

    def make(i):
        def hook(_m, _args, output):
            if index is not None and isinstance(output, (tuple, list)):
                got[i] = output[index]
            else:
                got[i] = output

        return hook

    with forward_hooks([(m, make(i)) for i, m in enumerate(modules)]):
        yield got


def record_outputs(modules: Sequence[torch.nn.Module]):
    """Record each module's (first) output during the block: ``capture_outputs(modules, index=0)``."""
    return capture_outputs(modules, index=0)


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

    with forward_hooks([(m, make(i)) for i, m in enumerate(modules)], pre=True, with_kwargs=True):
        yield got


@contextmanager
def capture_module_inputs(modules: Sequence[torch.nn.Module]) -> Iterator[list]:
    """Record the first positional input of each module (the last call wins; e.g. what a ``v_proj`` is fed)."""
    got: list = [None] * len(modules)

    def make(i):
        def pre(_m, args):
            got[i] = args[0]

        return pre

    with forward_hooks([(m, make(i)) for i, m in enumerate(modules)], pre=True):
        yield got
