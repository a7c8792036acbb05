"""Intervention sites: where in the model an activation is read, patched or ablated.

A :class:`Site` names one activation of one layer, at chosen positions (and one head):

- ``component``: ``encoder`` (the encoder's self-attention layers), ``decoder`` (Whisper's decoder layers,
  its self-attention heads) or ``cross_attention`` (Whisper's decoder cross-attention heads);
- ``kind``: ``resid`` (the residual stream), ``head`` (one attention head's output *before* the output
  projection: the head's slice of ``out_proj``'s input), ``mlp`` (the feed-forward block's output, before the
  residual add);
- ``layer``: one convention for every kind, the framework's state convention (src/layers.py): for ``resid`` the
  *state* (state 0 = the input to the first transformer layer, state k = the raw output of layer k; the final
  norm is not a residual state and is not a site); for ``head`` and ``mlp`` the *layer* k = 1..N, the
  transformer layer whose output is state k (layer module ``k - 1``; its input is state ``k - 1``), as in context
  mixing, probing and the lenses (``layer_name`` says so: ``"state 3"``, ``"layer 3 (-> state 3)"``);
- ``positions``: encoder frames (whole frames of the model's time axis: for Whisper frames inside the
  utterance; ``None`` = every frame of the sequence the model sees, Whisper's padding included) or Whisper
  decoder token positions (of the teacher-forced sequence, prompt included); ``None`` = all of them;
- ``head``: the head index for ``kind="head"``.

Every check here runs before any model work (``validate_site``): a position outside the utterance, a head out of
range, a decoder or cross-attention site on a model without a decoder, a ``kind`` the component does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

COMPONENTS = ("encoder", "decoder", "cross_attention")
KINDS = ("resid", "head", "mlp")


class InterventionError(ValueError):
    """Bad intervention request (site, positions, pair, metric); the message names what and where."""


@dataclass(frozen=True)
class Site:
    """One activation to read or overwrite: see the module docstring. ``label`` names the positions in results
    (e.g. the word); it plays no part in the computation."""

    component: str
    kind: str
    layer: int
    positions: tuple[int, ...] | None = None
    head: int | None = None
    label: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise InterventionError(f"site component {self.component!r} is not one of {list(COMPONENTS)}")
        if self.kind not in KINDS:
            raise InterventionError(f"site kind {self.kind!r} is not one of {list(KINDS)}")
        if self.component == "cross_attention" and self.kind != "head":
            raise InterventionError(f"component 'cross_attention' has only kind 'head' (its heads' outputs), got "
                                    f"{self.kind!r}; the decoder's residual stream and MLP are component 'decoder'")
        if self.kind == "head" and self.head is None:
            raise InterventionError(f"a {self.component} head site needs head=<index> (layer {self.layer})")
        if self.kind != "head" and self.head is not None:
            raise InterventionError(f"head={self.head} given for a {self.kind!r} site; only kind 'head' takes a head")
        if self.positions is not None:
            pos = tuple(int(p) for p in (self.positions if isinstance(self.positions, Sequence) or
                                         hasattr(self.positions, "__iter__") else [self.positions]))  # fmt: skip
            if not pos:
                raise InterventionError(f"site {self.component}.{self.kind} layer {self.layer}: empty positions")
            object.__setattr__(self, "positions", pos)
        object.__setattr__(self, "layer", int(self.layer))
        if self.head is not None:
            object.__setattr__(self, "head", int(self.head))

    @property
    def layer_name(self) -> str:
        """``"state k"`` for the residual stream; ``"layer k (-> state k)"`` for heads and MLPs: the transformer
        layer whose output is state k (1 = the first; module ``k - 1``)."""
        return f"state {self.layer}" if self.kind == "resid" else f"layer {self.layer} (-> state {self.layer})"

    @property
    def module_index(self) -> int:
        """The 0-based index of the layer module in ``layer_modules()`` (and the attention / MLP lists) that a head
        or MLP site lives in: ``layer - 1``."""
        if self.kind == "resid":
            raise InterventionError(f"site {self.key}: a residual state is not inside one layer module")
        if self.layer < 1:
            raise InterventionError(f"site {self.key}: layer {self.layer} is out of range; layers count from 1 (the "
                                    "state convention: layer k is the layer whose output is state k)")  # fmt: skip
        return self.layer - 1

    @property
    def key(self) -> str:
        """A readable unique key: ``encoder.resid.L3.p[4-9]``, ``cross_attention.head.L0.h2.p*``."""
        if self.positions is None:
            p = "*"
        elif len(self.positions) > 1 and list(self.positions) == list(range(self.positions[0], self.positions[-1] + 1)):
            p = f"{self.positions[0]}-{self.positions[-1]}"
        else:
            p = ",".join(map(str, self.positions))
        h = f".h{self.head}" if self.head is not None else ""
        return f"{self.component}.{self.kind}.L{self.layer}{h}.p[{p}]"

    def at(self, positions=None, head: int | None = None, label: str | None = None) -> Site:
        """The same layer and kind at other positions (and head)."""
        return Site(self.component, self.kind, self.layer, positions,
                    self.head if head is None else head, label)  # fmt: skip

    @property
    def module_key(self) -> tuple[str, str, int]:
        """Sites with the same module key read the same activation tensor."""
        return (self.component, self.kind, self.layer)


# ============================================================================ resolution to modules


def _layers(backbone, component: str) -> list[torch.nn.Module]:
    return backbone.layer_modules() if component == "encoder" else backbone.decoder_layer_modules()


def num_states(backbone, component: str) -> int:
    """Residual states of the component: its layers + 1."""
    return len(_layers(backbone, component)) + 1


def attention_of(backbone, site: Site) -> torch.nn.Module:
    """The attention module of a head site (layer k = module k - 1)."""
    if site.component == "encoder":
        return backbone.attention_modules()[site.module_index]
    if site.component == "decoder":
        return backbone.decoder_attention_modules()[site.module_index]
    return backbone.cross_attention_modules()[site.module_index]


def hook_point(backbone, site: Site) -> tuple[torch.nn.Module, str, slice | None]:
    """``(module, how, feature slice)`` where the site's activation ``(B, T, ·)`` lives:
    ``how`` = ``"out"`` (a forward hook on the module's (first) output), ``"in"`` (a forward pre-hook on its first
    input: state 0, and a head's slice of ``out_proj``'s input)."""
    if site.kind == "resid":
        layers = _layers(backbone, site.component)
        return (layers[0], "in", None) if site.layer == 0 else (layers[site.layer - 1], "out", None)
    if site.kind == "mlp":
        mods = backbone.mlp_modules() if site.component == "encoder" else backbone.decoder_mlp_modules()
        return mods[site.module_index], "out", None
    attn = attention_of(backbone, site)
    d = int(attn.head_dim)
    return attn.out_proj, "in", slice(site.head * d, (site.head + 1) * d)


def num_heads(backbone, site: Site) -> int:
    return int(attention_of(backbone, site).num_heads)


# ============================================================================ checks (before any model work)


def validate_site(backbone, site: Site, *, frames: int | None = None, window: int | None = None,
                  tokens: int | None = None, where: str = "") -> None:  # fmt: skip
    """Raise :class:`InterventionError` when ``site`` does not exist in ``backbone`` or its positions fall outside
    the input: encoder positions must be < ``frames`` (the utterance's frames); decoder and cross-attention
    positions < ``tokens`` (the teacher-forced sequence). ``where`` names the input in the message."""
    w = f" ({where})" if where else ""
    if site.component in ("decoder", "cross_attention") and not getattr(backbone, "has_decoder", False):
        raise InterventionError(f"site {site.key}: {backbone.name} ({getattr(backbone, 'family', '?')} family) has "
                                f"no decoder, so no {site.component} component; use component 'encoder'")  # fmt: skip
    if site.component == "encoder" and not getattr(backbone, "has_frontend", False):
        raise InterventionError(f"site {site.key}: {backbone.name} has no transformer layers (a feature baseline)")
    if site.kind == "head" and getattr(backbone, "model_type", "") == "wavlm":
        raise InterventionError(f"site {site.key}: WavLM computes attention inside F.multi_head_attention_forward, so "
                                "no hook reaches a head's output before out_proj; head sites are not available for "
                                "WavLM (resid and mlp sites are)")  # fmt: skip
    n_layers = len(backbone.layer_modules()) if site.component == "encoder" else len(backbone.decoder_layer_modules())
    if site.kind == "resid":
        if not 0 <= site.layer <= n_layers:
            raise InterventionError(f"site {site.key}: state {site.layer} is out of range; the {site.component} has "
                                    f"states 0..{n_layers} (state 0 = input to layer 1)")  # fmt: skip
    elif not 1 <= site.layer <= n_layers:
        zero = (" (state 0 is the input to the first layer, which no layer's heads or MLP produce)"
                if site.layer == 0 else "")  # fmt: skip
        raise InterventionError(f"site {site.key}: layer {site.layer} is out of range; the {site.component} has "
                                f"layers 1..{n_layers} (the state convention: layer k is the layer whose output is "
                                f"state k, 1 = the first){zero}")  # fmt: skip
    if site.kind == "head":
        h = num_heads(backbone, site)
        if not 0 <= site.head < h:
            raise InterventionError(f"site {site.key}: head {site.head} is out of range; {site.component} layer "
                                    f"{site.layer} has heads 0..{h - 1}")  # fmt: skip
    if site.positions is None:
        return
    lo, hi = min(site.positions), max(site.positions)
    if site.component == "encoder":
        if frames is not None and (lo < 0 or hi >= frames):
            extra = f" (the model's window has {window} frames; positions=None patches all of them)" if window else ""
            raise InterventionError(f"site {site.key}{w}: position {lo if lo < 0 else hi} is outside the utterance, "
                                    f"which has encoder frames 0..{frames - 1}{extra}")  # fmt: skip
    elif tokens is not None and (lo < 0 or hi >= tokens):
        raise InterventionError(f"site {site.key}{w}: token position {lo if lo < 0 else hi} is outside the "
                                f"teacher-forced sequence of {tokens} tokens (positions 0..{tokens - 1})")  # fmt: skip


def site_grid(backbone, component: str, kind: str, positions: Sequence, layers: Sequence[int] | None = None,
              labels: Sequence[str] | None = None, heads: Sequence[int] | None = None) -> list[Site]:  # fmt: skip
    """Every (layer, position group[, head]) site of one component and kind, layer-major: ``positions`` is a list
    of position groups (a word's frames, one token: ``(t,)``; ``None`` = all); ``layers`` default every state
    0..N (resid) or layer 1..N (head, mlp; the state convention); ``heads`` default every head of the layer;
    ``labels`` name the groups."""
    if kind == "resid":
        all_layers = range(num_states(backbone, component)) if component != "cross_attention" else range(0)
    else:
        all_layers = range(1, len(_layers(backbone, "encoder" if component == "encoder" else "decoder")) + 1)
    labels = list(labels) if labels is not None else [None] * len(positions)
    if len(labels) != len(positions):
        raise InterventionError(f"site_grid: {len(labels)} labels for {len(positions)} position groups")
    out = []
    for layer in (all_layers if layers is None else layers):
        if kind == "head":
            probe = Site(component, kind, int(layer), None, head=0)
            hs = range(num_heads(backbone, probe)) if heads is None else heads
            out += [Site(component, kind, int(layer), pos, head=int(h), label=lab) for h in hs
                    for pos, lab in zip(positions, labels)]  # fmt: skip
        else:
            out += [Site(component, kind, int(layer), pos, label=lab) for pos, lab in zip(positions, labels)]
    return out


def site_layers(spec, n_layers: int, kind: str, what: str = "layers") -> list[int]:
    """The layers of ``kind`` sites named by ``spec`` (src.layers syntax: ints, negatives from the end,
    first/middle/last, all, ranges; ``None`` = all), in the state convention over the states ``0..n_layers``:
    ``resid`` sites take every named state; ``head`` / ``mlp`` sites take layers ``1..n_layers`` (layer k = the
    layer whose output is state k), so state 0 (the input, produced by no layer) is dropped from a spec that names
    other layers too (``all``, ``0-2``) and is an error alone (``0``, ``first``). ``final_norm`` is not a site."""
    import logging

    from src.layers import LayerSpecError, resolve_layers

    if spec is None:
        return list(range(n_layers + 1)) if kind == "resid" else list(range(1, n_layers + 1))
    try:
        ks = resolve_layers(spec, n_layers + 1, what=what)
    except LayerSpecError as e:
        raise InterventionError(f"{e} (states 0..{n_layers}; heads and MLPs are in layers 1..{n_layers}, layer k "
                                "= the layer whose output is state k)") from None  # fmt: skip
    if kind == "resid":
        return ks
    if 0 in ks:
        if ks == [0]:
            raise InterventionError(f"{what}: {spec!r} names state 0, the input to the first transformer layer, which "
                                    f"no layer's {kind}s produce; {kind} sites are in layers 1..{n_layers} (1 = the "
                                    "first)")  # fmt: skip
        logging.getLogger(__name__).info("%s: state 0 (the input, produced by no layer) has no %s sites: skipped",
                                         what, kind)  # fmt: skip
        ks = [k for k in ks if k != 0]
    return ks
