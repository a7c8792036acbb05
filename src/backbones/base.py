"""The SpeechBackbone interface: one frozen model (or a baseline feature extractor).

Frame-time convention (see src/datamodules/alignment.py): frame ``i`` of an utterance
stands for the time ``frame_offset + i / frame_rate`` seconds.

Layer convention (src/layers.py, version ``LAYER_CONVENTION_VERSION``): ``encode()``
returns one state per entry of ``layer_names``, in that order.  States ``"0".."N"``
(``num_layers = N + 1`` of them) are the residual stream: ``"0"`` is the input to the
first transformer layer, ``"k"`` the raw output of layer ``k``, before any norm the model
applies after its last layer.  Where the model has such a final norm (Whisper's
``encoder.layer_norm``, stable-layer-norm wav2vec2/HuBERT/WavLM's ``encoder.layer_norm``)
its output is one more state, ``"final_norm"``, stored after the residual states.

Lazy weights: constructing a backbone reads only configuration files and file facts (sizes,
mtimes, pinned hashes); everything the activation cache needs before extraction (``name``,
``fingerprint``, ``num_layers``, ``hidden_size``, ``layer_names``, ``frame_rate``,
``frame_offset``, ``sample_rate``, ``padding_safe``, ``num_frames``, ``check_input``,
``min_samples``) is known without weights.  Weights are materialised on first access to one of
the attributes a subclass lists in ``_lazy_attrs`` (``model``, ``encoder``): ``encode`` and the
live-model surface reach them that way.  Every materialisation (pretrained load or seeded random
init) goes through :func:`record_model_load`, which counts it (:func:`model_loads`) and, when the
environment variable ``SPEECHINTERP_MODEL_LOAD_LOG`` names a file, appends one line
``<backbone name>\t<what>`` to it (for tests that run the CLI in a subprocess).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from src.backbones.hooks import first_output, forward_hooks, record_outputs  # noqa: F401  (re-exported)
from src.layers import frame_times

# Bump whenever the meaning of the stored states changes: it is part of every backbone
# fingerprint, so caches built under an older convention are never reused.
#   1: transformers' ``hidden_states`` as returned (Whisper's last state after its final
#      LayerNorm, stable-LN wav2vec2's without it)
#   2: residual states 0..N for every model, then "final_norm" where the model has one
LAYER_CONVENTION_VERSION = 2


MODEL_LOAD_LOG_ENV = "SPEECHINTERP_MODEL_LOAD_LOG"
_MODEL_LOADS: Counter = Counter()  # (backbone name, what) -> times weights were materialised in this process


def record_model_load(name: str, what: str) -> None:
    """Count one materialisation of weights (``what``: ``model``, ``encoder``, ``full``, ``random``, ``ctc_head``).

    Called by every backbone at the moment it builds weights; appends ``<name>\t<what>`` to the file named
    by ``$SPEECHINTERP_MODEL_LOAD_LOG`` when that is set (one line per load, across processes)."""
    _MODEL_LOADS[(str(name), str(what))] += 1
    path = os.environ.get(MODEL_LOAD_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:  # one short line: appends from several processes do not mix
            f.write(f"{name}\t{what}\n")


def model_loads(name: str | None = None) -> int:
    """Weight materialisations in this process so far (of backbone ``name``, or of all backbones)."""
    return sum(n for (b, _), n in _MODEL_LOADS.items() if name is None or b == name)


def model_load_events() -> Counter:
    """A copy of the per-(name, what) load counts of this process."""
    return Counter(_MODEL_LOADS)


class BackboneError(ValueError):
    """Bad backbone configuration or input; the message says what to do."""


@dataclass
class Encoded:
    """Hidden states of a batch, with lengths (they always travel together)."""

    hidden: Tensor  # (S, B, T, D), S = len(backbone.layer_names), padded along T
    lengths: Tensor  # (B,) valid frames per item
    attentions: Tensor | None = None  # (L', B, H, T, T) where asked for


# the hook toolkit lives in src/backbones/hooks.py; ``_first`` is its old private name here
_first = first_output


class SpeechBackbone(torch.nn.Module):
    """One frozen speech model.

    Attributes: ``num_layers`` (residual states 0..N, i.e. N + 1), ``hidden_size``,
    ``frame_rate``, ``frame_offset``, ``sample_rate``, ``name``, ``padding_safe``.
    ``layer_names`` lists every state ``encode()`` returns (residual ones, then named extras).

    Live-model surface (models only; docs/DESIGN.md lists it): what the model is (``family``,
    ``model_type``, ``norm_layout``, ``has_decoder``, ``has_frontend``, ``pads_to_window``, ``feature_hop``:
    class attributes, known without weights), its modules (``layer_modules()``: state ``k`` is the output
    of ``layer_modules()[k - 1]``; ``attention_modules()``; ``final_norm_module()``, the norm after the
    last layer or None), a forward of the encoder as the cache runs it (``encoder_run``), the
    differentiable front end (``differentiable_features`` -> ``frontend`` -> ``states_from_frontend``)
    and ``hooks(...)`` (src/backbones/hooks.py).  Code outside ``src/backbones/`` reaches the model
    through these only.
    """

    name: str = "backbone"
    # attributes that hold weights: built by ``_materialise(attr)`` on first access (lazy backbones)
    _lazy_attrs: tuple[str, ...] = ()
    num_layers: int  # residual states: the input to the first layer + each layer's output
    hidden_size: int
    frame_rate: float  # frames per second
    frame_offset: float  # seconds from frame 0 to the time it stands for
    sample_rate: int = 16000
    # True when padding a batch leaves every item's valid frames unchanged
    padding_safe: bool = True
    # What the model is, known without loading weights (class attributes; HFBackbone sets norm_layout per config).
    # family: "wav2vec2" (HFBackbone: wav2vec2, HuBERT, WavLM, data2vec-audio, ...), "whisper", "features" (baselines)
    family: str = "features"
    model_type: str = ""  # transformers' config.model_type ("wavlm", "hubert", "whisper", ...); "" for baselines
    # where the LayerNorm sits: "post_ln" | "stable_ln" | "final_ln" (HFBackbone), "pre_ln" (Whisper); None: no layers
    norm_layout: str | None = None
    # True when the model has a decoder surface (Whisper): known without loading weights
    has_decoder: bool = False
    # True when differentiable_features / frontend / states_from_frontend exist (transformer models)
    has_frontend: bool = False
    # True when every input is padded to a fixed window (Whisper): frames after the audio are padding
    pads_to_window: bool = False
    # samples per frame of differentiable_features() when it is a spectrogram (Whisper: 160);
    # None when the model reads the waveform itself (wav2vec2 family)
    feature_hop: int | None = None

    def __init__(self) -> None:
        super().__init__()
        # empty, not saved: ``.to(device)`` moves it before the weights exist, and weights built later go there
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def __getattr__(self, attr: str):
        try:
            return super().__getattr__(attr)
        except AttributeError:
            if attr in type(self)._lazy_attrs and "_modules" in self.__dict__:
                self._materialise(attr)
                return super().__getattr__(attr)
            raise

    def _materialise(self, attr: str) -> None:
        """Build the weights behind ``attr`` (one of ``_lazy_attrs``) and set it; call :func:`record_model_load`."""
        raise NotImplementedError

    def _placed(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` frozen (eval, no gradients) on the device this backbone was moved to."""
        anchor = self.__dict__.get("_buffers", {}).get("_device_anchor")
        if anchor is not None and anchor.device != torch.device("cpu"):
            module = module.to(anchor.device)
        return module.eval().requires_grad_(False)

    @property
    def weights_loaded(self) -> bool:
        """True once every attribute of ``_lazy_attrs`` is built (always True for baselines)."""
        return all(a in self._modules for a in type(self)._lazy_attrs)

    @property
    def layer_names(self) -> list[str]:
        """Names of the states ``encode()`` returns, in order: ``"0".."N"``, then extras (``"final_norm"``)."""
        return [str(i) for i in range(self.num_layers)]

    @property
    def extra_states(self) -> list[str]:
        """The named states stored after the residual ones (``[]`` or ``["final_norm"]``)."""
        return list(self.layer_names[self.num_layers :])

    def final_norm_module(self) -> torch.nn.Module | None:
        """The norm the model applies after its last layer (its output is state ``final_norm``), or None."""
        return None

    def layer_modules(self) -> list[torch.nn.Module]:
        raise BackboneError(f"{self.name} has no transformer layers (a feature baseline)")

    def attention_modules(self) -> list[torch.nn.Module]:
        raise BackboneError(f"{self.name} has no attention modules (a feature baseline)")

    def mlp_modules(self) -> list[torch.nn.Module]:
        """Each transformer layer's feed-forward block, whose output (before the residual add) is the layer's
        "MLP output" (interventions, src/interventions/)."""
        raise BackboneError(f"{self.name} has no MLP modules (a feature baseline)")

    # ------------------------------------------------------------------ live encoder and front end

    def encoder_run(self, waveform: Tensor, utt_id: str = "?") -> tuple[Callable[[], object], int]:
        """``(run, T)``: ``run()`` does one forward of the encoder on one waveform ``(S,)``, built exactly as
        :meth:`encode` builds it for the cache, in the model's dtype and device (for hooks to observe);
        ``T`` = the frames the encoder sees (Whisper: its whole window).  Bad input: BackboneError naming
        ``utt_id``."""
        raise BackboneError(f"{self.name} has no transformer encoder (a feature baseline)")

    def differentiable_features(self, waveforms: Tensor) -> Tensor:
        """The model's input features of waveforms ``(B, N)``, differentiable (torch only): Whisper's log-mel
        ``(B, M, F)`` over its window; the (normalised) waveform ``(B, N)`` for the wav2vec2 family."""
        raise BackboneError(f"{self.name} has no differentiable front end (a feature baseline)")

    def frontend(self, features: Tensor) -> Tensor:
        """The convolutional front end ``(B, T, D)`` of :meth:`differentiable_features` output: Whisper's conv
        stem + positions (= state 0); the wav2vec2 family's conv features through ``feature_projection``."""
        raise BackboneError(f"{self.name} has no differentiable front end (a feature baseline)")

    def states_from_frontend(self, h: Tensor) -> list[Tensor]:
        """Every state of :attr:`layer_names` (each ``(B, T, D)``, the model's whole time axis) from
        :meth:`frontend` output ``h``, differentiable; equal to :meth:`encode` (tests/attribution/test_inputs.py)."""
        raise BackboneError(f"{self.name} has no transformer layers (a feature baseline)")

    # ------------------------------------------------------------------ attention implementation and parameters

    @property
    def attention_implementation(self) -> str | None:
        """The attention implementation the live model runs now (``eager``, ``sdpa``, ...)."""
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "_attn_implementation", None) if cfg is not None else None

    @contextmanager
    def using_attention(self, impl: str | None) -> Iterator[None]:
        """Run the model with attention implementation ``impl`` (``"eager"`` for techniques that need the weights)
        for the block and restore the previous one on exit, also on error. ``None`` or the current one: no change."""
        model = self.model
        prev = self.attention_implementation
        if impl is None or impl == prev:
            yield
            return
        if not hasattr(model, "set_attn_implementation"):
            raise BackboneError(f"{type(model).__name__} cannot switch its attention implementation to {impl!r}")
        model.set_attn_implementation(impl)
        try:
            yield
        finally:
            model.set_attn_implementation(prev)

    @property
    def parameter_dtype(self) -> torch.dtype:
        """The dtype of the live model's parameters (inputs built for it are cast to this)."""
        return next(self.model.parameters()).dtype

    @property
    def parameter_device(self) -> torch.device:
        """The device of the live model's parameters."""
        return next(self.model.parameters()).device

    def hooks(self, hooks: Iterable[tuple[torch.nn.Module, Callable]], pre: bool = False, with_kwargs: bool = False):
        """Context manager: forward hooks on this model's modules, removed on exit and on error."""
        return forward_hooks(hooks, pre=pre, with_kwargs=with_kwargs)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for audio of ``num_samples`` samples (deterministic, cheap)."""
        raise NotImplementedError

    def min_samples(self) -> int:
        """Shortest input (samples) that yields at least one frame."""
        n = 1
        while self.num_frames(n) < 1:
            n += 1
        return n

    @property
    def config_dict(self) -> dict:
        return {}

    @property
    def fingerprint(self) -> str:
        """Model id + revision + config hash + layer convention: the cache key's backbone part."""
        blob = json.dumps(
            {"name": self.name, **self.config_dict, "layer_convention": LAYER_CONVENTION_VERSION,
             "layer_names": self.layer_names},
            sort_keys=True, default=str,
        )  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_input(self, num_samples: int, utt_id: str = "?") -> None:
        """Raise BackboneError naming the utterance when the model cannot take this length."""
        n = int(num_samples)
        if self.num_frames(n) < 1:
            raise BackboneError(
                f"utterance {utt_id!r}: {n} samples ({n / self.sample_rate:.4f} s) is shorter than "
                f"{self.name}'s receptive field ({self.min_samples()} samples)"
            )

    @torch.no_grad()
    def encode(self, waveforms: list[Tensor], output_attentions: bool = False) -> Encoded:
        """States ``(len(layer_names), B, T, D)`` and valid frames per item ``(B,)``."""
        raise NotImplementedError

    def frame_times(self, num_frames: int) -> np.ndarray:
        """Seconds of each frame (:func:`src.layers.frame_times`: ``frame_offset + i / frame_rate``)."""
        return frame_times(num_frames, self.frame_rate, self.frame_offset)
