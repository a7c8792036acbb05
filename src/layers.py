"""What "layer k" means, and the one parser of layer specs used by every command.

Convention (written to every cache's ``meta.json`` as ``layer_convention``):

- hidden state ``0`` is the input to the first transformer layer (the embedding /
  feature-projection output, with positional information where the model adds it there);
- state ``k`` (``1 <= k <= N``) is the output of transformer layer ``k``: the *residual
  stream*, before any final LayerNorm the model applies after its last layer;
- where the model applies such a final norm (Whisper's ``encoder.layer_norm``,
  stable-layer-norm wav2vec2's ``encoder.layer_norm``), its output is an explicit extra
  state named ``final_norm``, stored after the residual states (index ``N + 1``).

So ``num_layers`` counts the residual states ``0..N``; ``layer_names`` lists every stored
state (the residual ones as ``"0".."N"``, then the named extras).

A layer spec (``layers=...``, ``probe.layer=...``, ``analysis.layers=...``) is one item or a
list of items; each item is an int (negative counts from the end of the residual states),
``first`` / ``middle`` / ``last`` (residual states), ``all`` (every residual state), a named
extra state (``final_norm``), or a range ``"a:b"`` / ``"a-b"`` (``b`` inclusive for ``a-b``,
exclusive for ``a:b``, as in Python) / ``"range(a,b)"``.  Duplicates are removed and the
result is sorted; anything out of range is an error naming the valid range.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

LAYER_CONVENTION = (
    "state 0 = input to the first transformer layer; state k = output of layer k (residual stream, "
    "before any final norm); 'final_norm' (where the model has one) = the last layer's output "
    "through the encoder's final LayerNorm, stored after the residual states"
)

NAMED = ("first", "middle", "last")


class LayerSpecError(ValueError):
    """A layer spec that does not name valid layers; the message gives the valid range."""


def frame_times(num_frames: int, frame_rate: float, frame_offset: float = 0.0) -> np.ndarray:
    """Seconds each frame of a state sequence stands for: ``frame_offset + i / frame_rate`` (float64, ``(T,)``).

    The one formula of the frame-time convention (here, a leaf module, so that both ``src.backbones`` and
    ``src.datamodules.alignment`` use it without importing each other).

    >>> [round(t, 6) for t in frame_times(3, 50.0, 0.0125).tolist()]
    [0.0125, 0.0325, 0.0525]
    """
    return frame_offset + np.arange(num_frames, dtype=np.float64) / frame_rate


def default_layer_names(num_layers: int, extras: Sequence[str] = ()) -> list[str]:
    return [str(i) for i in range(num_layers)] + list(extras)


def _valid(num_layers: int, extras: Sequence[str]) -> str:
    ex = f", or {', '.join(extras)}" if extras else ""
    return (f"valid layers: 0..{num_layers - 1} (negative counts from the end), first, middle, last, all, "
            f"ranges a:b / a-b{ex}")  # fmt: skip


def _one_int(value: int, num_layers: int, what: str, extras: Sequence[str]) -> int:
    k = value + num_layers if value < 0 else value
    if not 0 <= k < num_layers:
        raise LayerSpecError(f"{what}: layer {value} is out of range; {_valid(num_layers, extras)}")
    return k


_RANGE = re.compile(r"^\s*(?:range\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)|(-?\d+)\s*:\s*(-?\d+)|(\d+)\s*-\s*(\d+))\s*$")


def _expand(item, num_layers: int, extras: Sequence[str], what: str) -> list[int]:
    if isinstance(item, bool):  # bool is an int subclass: never a layer
        raise LayerSpecError(f"{what}: {item!r} is not a layer; {_valid(num_layers, extras)}")
    if isinstance(item, int) or (hasattr(item, "__index__") and not isinstance(item, str)):
        return [_one_int(int(item), num_layers, what, extras)]
    if isinstance(item, float):
        if item != int(item):
            raise LayerSpecError(f"{what}: {item!r} is not a layer index")
        return [_one_int(int(item), num_layers, what, extras)]
    s = str(item).strip()
    if s == "all":
        return list(range(num_layers))
    if s in NAMED:
        return [{"first": 0, "middle": num_layers // 2, "last": num_layers - 1}[s]]
    if s in extras:
        return [num_layers + list(extras).index(s)]
    if re.fullmatch(r"-?\d+", s):
        return [_one_int(int(s), num_layers, what, extras)]
    m = _RANGE.match(s)
    if m:
        if m.group(5) is not None:  # a-b, inclusive
            a, b = int(m.group(5)), int(m.group(6)) + 1
        else:
            a, b = (int(m.group(1)), int(m.group(2))) if m.group(1) is not None else (int(m.group(3)), int(m.group(4)))
        a = a + num_layers if a < 0 else a
        b = b + num_layers if b < 0 else b
        if not (0 <= a < b <= num_layers):
            raise LayerSpecError(f"{what}: range {s!r} is empty or out of range; {_valid(num_layers, extras)}")
        return list(range(a, b))
    raise LayerSpecError(f"{what}: cannot read layer {item!r}; {_valid(num_layers, extras)}")


def layer_spec(value, what: str = "layers"):
    """A layer spec as given (a config value: ``layers=``, ``probe.layer=``, ``analysis.layers=``) in plain
    form: ``None``, one item, or a list of items.

    One item stays one item: ``layers=final_norm`` is the state ``final_norm`` and ``layers=2`` the
    state 2 (``list()`` of either would give the characters ``f``, ``i``, ... or fail on the int).
    A list (also an OmegaConf ``ListConfig`` or a tuple) becomes a plain list of its items; a
    mapping is an error naming the config key ``what``.

    >>> layer_spec("final_norm"), layer_spec(2), layer_spec(("first", -1)), layer_spec(None)
    ('final_norm', 2, ['first', -1], None)
    """
    if value is None or isinstance(value, (str, bytes, int, float)):
        return value.decode() if isinstance(value, bytes) else value
    if isinstance(value, Mapping):
        raise LayerSpecError(f"{what}: a mapping ({dict(value)!r}) is not a layer spec; give one layer (2, last, "
                             "final_norm, '1:3') or a list of them ('[0,final_norm]')")  # fmt: skip
    if hasattr(value, "__index__"):  # numpy / torch integer scalars
        return value
    if isinstance(value, Sequence) or hasattr(value, "__iter__"):
        return list(value)
    return value


EXTRA_STATE_NAMES = ("final_norm",)  # every named extra state a backbone of this project can store

_SYNTAX = ("an int (negative counts from the end), first, middle, last, all, a range a:b / a-b / range(a,b), "
           f"or {', '.join(EXTRA_STATE_NAMES)}")


def check_layer_spec(value, what: str = "layers") -> None:
    """Raise :class:`LayerSpecError` (naming the config key ``what``) if the spec ``value`` can name no layer of
    any model: an unreadable item (``abc``), a float that is not an integer, a range that is empty whatever the
    number of layers (``3:1``, ``3-1``), a mapping, an empty list.  Nothing about the model is needed, so config
    checks call this before any backbone, corpus or cache work; whether a layer exists in the model (``99``) is
    :func:`resolve_layers`' question.

    >>> check_layer_spec(["first", -1, "1:3", "final_norm"])
    >>> try:
    ...     check_layer_spec("3:1", "probe.layer")
    ... except LayerSpecError as e:
    ...     print(e)
    probe.layer: range '3:1' is empty (the end is not after the start)
    """
    spec = layer_spec(value, what)
    if spec is None:
        return
    items = spec if isinstance(spec, list) else [spec]
    if not items:
        raise LayerSpecError(f"{what}: an empty list names no layer; give null for every layer")
    for item in items:
        if isinstance(item, bool) or isinstance(item, (list, tuple, Mapping)):
            raise LayerSpecError(f"{what}: {item!r} is not a layer; a layer is {_SYNTAX}")
        if isinstance(item, int) or (hasattr(item, "__index__") and not isinstance(item, str)):
            continue
        if isinstance(item, float):
            if item != int(item):
                raise LayerSpecError(f"{what}: {item!r} is not a layer index; a layer is {_SYNTAX}")
            continue
        s = str(item).strip()
        if s == "all" or s in NAMED or s in EXTRA_STATE_NAMES or re.fullmatch(r"-?\d+", s):
            continue
        m = _RANGE.match(s)
        if m is None:
            raise LayerSpecError(f"{what}: cannot read layer {item!r}; a layer is {_SYNTAX}")
        if m.group(5) is not None:
            a, b = int(m.group(5)), int(m.group(6)) + 1
        else:
            a, b = (int(m.group(1)), int(m.group(2))) if m.group(1) is not None else (int(m.group(3)), int(m.group(4)))
        if (a >= 0) == (b >= 0) and a >= b:  # same sign: empty for every number of layers
            raise LayerSpecError(f"{what}: range {s!r} is empty (the end is not after the start)")


def resolve_layers(spec, num_layers: int, extras: Sequence[str] = (), what: str = "layers") -> list[int]:
    """Sorted, unique state indices named by ``spec`` (``None`` = every residual state).

    Args:
        spec: ``None``, one item or a list of items (see the module docstring); one item (``2``,
            ``"final_norm"``, ``"1:3"``) is never split (:func:`layer_spec`).
        num_layers: residual states ``0..num_layers-1``.
        extras: named extra states stored after them (e.g. ``["final_norm"]``); the i-th has
            index ``num_layers + i``.
        what: the config key, for error messages.

    >>> resolve_layers(None, 5)
    [0, 1, 2, 3, 4]
    >>> resolve_layers([-1, "first", 0, "1-2"], 5)
    [0, 1, 2, 4]
    >>> resolve_layers("final_norm", 5, extras=["final_norm"])
    [5]
    >>> resolve_layers(2, 5)
    [2]
    """
    if num_layers < 1:
        raise LayerSpecError(f"{what}: the model has no layers")
    spec = layer_spec(spec, what)
    if spec is None:
        return list(range(num_layers))
    out: set[int] = set()
    for item in spec if isinstance(spec, list) else [spec]:
        out.update(_expand(item, num_layers, extras, what))
    if not out:
        raise LayerSpecError(f"{what}: an empty list names no layer; give null for every layer")
    return sorted(out)


def state_counts(owner) -> tuple[int, list[str]]:
    """``(num_layers, extra state names)`` of anything that holds states: a cache (``Activations``), a
    backbone, or a plain count of residual states (no extras)."""
    if isinstance(owner, (int, np.integer)):
        return int(owner), []
    n = int(owner.num_layers)
    extras = getattr(owner, "extra_states", None)
    if extras is None:
        names = getattr(owner, "layer_names", None)
        extras = list(names)[n:] if names is not None else []
    return n, [str(e) for e in extras]


def resolve_for(owner, spec, what: str = "layers", error: type[LayerSpecError] = LayerSpecError,
                every: bool = False) -> list[int]:  # fmt: skip
    """The one adapter over :func:`resolve_layers`: state indices that ``spec`` names for ``owner`` (a cache,
    a backbone, or a count of residual states; see :func:`state_counts`).

    ``what`` is the config key named in errors, raised as ``error`` (a subclass of :class:`LayerSpecError`,
    e.g. an analysis's own). ``every=True`` also accepts ``"every"``: every stored state, the named extras
    (``final_norm``) included.
    """
    n, extras = state_counts(owner)
    if every and isinstance(spec, str) and spec.strip() == "every":
        return list(range(n + len(extras)))
    try:
        return resolve_layers(spec, n, extras=extras, what=what)
    except LayerSpecError as e:
        if error is LayerSpecError or isinstance(e, error):
            raise
        raise error(str(e)) from None


def layer_label(index: int, layer_names: Sequence[str] | None) -> str:
    """Display name of a state index (``"3"``, ``"final_norm"``)."""
    if layer_names is not None and 0 <= index < len(layer_names):
        return str(layer_names[index])
    return str(index)
