"""Input representations: a differentiable torch path from the attributed tensor to the backbone's states.

Every representation maps a batch ``x`` of ``(B, *shape)`` (``shape`` = that of the item's ``x0``) to ALL
states of the backbone in the framework convention (src/layers.py: state 0 = the input to the first
transformer layer, state k = raw output of layer k, then ``final_norm`` where the model has one), each
``(B, T, D)`` over the model's full time axis, plus the number of real frames ``T_real`` (Whisper: the
frames of the utterance inside the 30 s window; wav2vec2 family: all frames).  The states equal
``backbone.encode`` within 1e-5 (tests/attribution/test_inputs.py).  The model runs in eval mode.

wav2vec2 family (HFBackbone):

- ``waveform``: the RAW waveform ``(1, N)``; the backbone's own per-utterance normalisation
  (zero mean, unit variance, where ``do_normalize``) is applied inside the forward, per row.
- ``spectrogram``: the STFT magnitude ``|X|`` ``(1, T_s, 201)`` of the raw waveform (n_fft 400, hop 320,
  win 400, periodic Hann, centred: ``T_s = N // 320 + 1``; frame ``k`` centred at sample ``320 k``), with
  the phase of the item's own STFT held fixed: ``x -> istft(x * exp(i phase), length=N)`` -> waveform
  path.  ``istft(|X| e^{i phase}, length=N)`` gives back the waveform within 1e-5 (tested).  The
  tutorial instead attributes to the complex STFT, keeps ``.real`` of the attribution and calls istft
  without ``length`` (which drops the last ``N - 320 (T_s - 1)`` samples); a magnitude with fixed phase
  is a real tensor whose attribution needs no ``.real`` and the round trip is exact.
- ``cnn``: the output of ``feature_projection`` (LayerNorm + Linear of the conv features; the tutorial's
  "CNN embedding"), ``(1, T, D)``: the input to the encoder (its positional conv, then the layers).
  Frame ``i`` covers samples ``[320 i, 320 i + 400)`` and stands for its centre.  Computed once per
  item (no grad) and cached.

Whisper (WhisperBackbone):

- ``waveform``: the raw waveform ``(1, N)``, zero-padded to the 30 s window inside the forward.
- ``spectrogram``: the log-mel frames ``(1, 80, 3000)`` the encoder reads (whole window, padding included);
  ``backbone.differentiable_features`` (:func:`src.backbones.whisper.whisper_log_mel`) reproduces
  ``WhisperFeatureExtractor`` (within 1e-5, tested on real-length audio) differentiably: centred STFT
  (reflect pad), power, mel filters, ``log10(max(., 1e-10))``, dynamic-range clamp at ``max - 8``,
  ``(x + 4) / 4``.  Mel frame ``k`` is centred at ``k * 160`` samples.
- ``cnn``: the input to the first transformer layer, i.e. state 0 = ``gelu(conv2(gelu(conv1(mel))))``
  + sinusoidal positions, ``(1, 1500, D)`` over the window; frame ``i`` centred at ``0.02 i`` s.
  Cached per item.  The layers are run one by one on it (``layer(h, None)``, exactly what the
  encoder does; tested equal to ``encode``).

The model's part of every path is the backbone's differentiable front end (src/backbones/, docs/DESIGN.md):
``differentiable_features`` (waveform -> the model's input features), ``frontend`` (features -> the conv
output, the ``cnn`` representation) and ``states_from_frontend`` (-> every state).  What is decided here is
the attributed representation: which of those tensors is ``x``, and, for models that read the waveform
itself (``backbone.feature_hop is None``), the STFT magnitude with fixed phase as ``spectrogram``.  A model
that pads its input to a fixed window (``backbone.pads_to_window``) has padding steps: those of a padded
representation (Whisper log-mel and CNN) at or after the end of the audio (see src/attribution/segments.py).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from src.backbones.whisper import whisper_log_mel  # noqa: F401  (re-exported by src.attribution)

INPUT_TYPES = ("waveform", "spectrogram", "cnn")
BASELINES = ("zeros", "silence", "silence_features", "noise")
# the STFT of the ``spectrogram`` representation of waveform-input models (wav2vec2 family): 25 ms Hann window,
# 20 ms hop (the conv feature encoder's receptive field and stride at 16 kHz)
STFT_N_FFT = 400
STFT_HOP = 320


class AttributionError(ValueError):
    """Bad attribution input (unknown head or class, missing CTC head, ...); names the utterance."""


@contextmanager
def eval_mode(*modules):
    """Every module in eval mode and its parameters without ``requires_grad`` for the block; the previous
    training flags and ``requires_grad`` are restored on exit and on error."""
    mods = [m for m in modules if m is not None]
    flags = [(sub, sub.training) for m in mods for sub in m.modules()]
    params = [(p, p.requires_grad) for m in mods for p in m.parameters()]
    try:
        for m in mods:
            m.eval()
        for p, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for sub, t in flags:
            sub.training = t
        for p, r in params:
            p.requires_grad_(r)


# ----------------------------------------------------------------------------- representations


class Representation:
    """One item's attributed tensor ``x0`` and the path ``states(x)`` to the backbone's states.

    ``time_axis``: the axis of ``x0`` that is time; ``step_times()``: the time (s) each step stands for;
    ``padded``: steps at or after the end of the audio are padding (Whisper's window)."""

    def __init__(self, backbone, waveform: Tensor | np.ndarray, input_type: str, utt_id: str = "?") -> None:
        if input_type not in INPUT_TYPES:
            raise AttributionError(f"utterance {utt_id!r}: input type must be one of {INPUT_TYPES}, got {input_type!r}")
        if not getattr(backbone, "has_frontend", False):
            raise AttributionError(f"attribution needs a live transformer backbone with a differentiable front end "
                                   f"(wav2vec2 family or Whisper), got {type(backbone).__name__} "
                                   f"{getattr(backbone, 'name', '?')!r}")  # fmt: skip
        self.backbone = backbone
        # True when the model's own input features are a spectrogram (Whisper's log-mel): ``spectrogram`` is
        # that tensor; False when the model reads the waveform (wav2vec2 family): ``spectrogram`` is an STFT here
        self.spectral = backbone.feature_hop is not None
        self.input_type = input_type
        self.utt_id = utt_id
        w = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(1, -1)  # (1, N)
        backbone.check_input(int(w.shape[-1]), utt_id)
        self.wave = w
        self.num_samples = int(w.shape[-1])
        self.sample_rate = int(backbone.sample_rate)
        self.duration = self.num_samples / self.sample_rate
        self.n_real = int(backbone.num_frames(self.num_samples))
        self.padded = bool(backbone.pads_to_window) and input_type != "waveform"
        with torch.no_grad(), eval_mode(backbone):
            self.x0 = self.to_repr(w).detach()
            if input_type == "spectrogram" and not self.spectral:
                self._phase = torch.angle(self._stft(w)).detach()  # (1, 201, T_s), held fixed
        self.time_axis = 2 if (self.spectral and input_type == "spectrogram") else 1

    # ---- pieces

    def _stft(self, w: Tensor) -> Tensor:
        win = torch.hann_window(STFT_N_FFT, device=w.device)
        return torch.stft(w, n_fft=STFT_N_FFT, hop_length=STFT_HOP, win_length=STFT_N_FFT, window=win, center=True,
                          return_complex=True)  # fmt: skip

    def _cnn(self, w: Tensor) -> Tensor:
        bb = self.backbone
        return bb.frontend(bb.differentiable_features(w))

    def to_repr(self, w: Tensor) -> Tensor:
        """The representation of waveforms ``(B, N)`` (used for ``x0`` and the baselines)."""
        if self.input_type == "waveform":
            return w
        if self.input_type == "cnn":
            return self._cnn(w)
        if self.spectral:
            return self.backbone.differentiable_features(w)
        return self._stft(w).abs().transpose(1, 2)

    def states(self, x: Tensor) -> list[Tensor]:
        """All states ``S x (B, T, D)`` over the model's time axis (Whisper: the whole window) for ``x`` ``(B, *shape)``."""
        if tuple(x.shape[1:]) != tuple(self.x0.shape[1:]):
            raise AttributionError(f"utterance {self.utt_id!r}: input of shape {tuple(x.shape)} does not match the "
                                   f"{self.input_type} representation {tuple(self.x0.shape)}")  # fmt: skip
        bb = self.backbone
        if self.input_type == "cnn":
            h = x
        elif self.input_type == "spectrogram" and self.spectral:
            h = bb.frontend(x)
        else:
            w = x
            if self.input_type == "spectrogram":
                spec = x.transpose(1, 2).to(torch.complex64) * torch.exp(1j * self._phase)  # (B, 201, T_s)
                win = torch.hann_window(STFT_N_FFT, device=x.device)
                w = torch.istft(spec, n_fft=STFT_N_FFT, hop_length=STFT_HOP, win_length=STFT_N_FFT, window=win,
                                center=True, length=self.num_samples)  # (B, N)  # fmt: skip
            h = self._cnn(w)
        return bb.states_from_frontend(h)

    # ---- time and baselines

    def seconds_per_step(self) -> float:
        if self.input_type == "waveform":
            return 1.0 / self.sample_rate
        if self.input_type == "spectrogram":
            return (int(self.backbone.feature_hop) if self.spectral else STFT_HOP) / self.sample_rate
        return 1.0 / float(self.backbone.frame_rate)

    def step_times(self) -> np.ndarray:
        """Time (s) of each step along ``time_axis``: sample ``k / sr``; STFT / mel frame centres; CNN frame centres."""
        n = int(self.x0.shape[self.time_axis])
        if self.input_type == "cnn":
            return float(self.backbone.frame_offset) + np.arange(n) / float(self.backbone.frame_rate)
        return np.arange(n) * self.seconds_per_step()

    def baseline(self, name: str = "zeros", snr_db: float = 10.0, seed: int = 0) -> Tensor:
        """``zeros`` (zeros in the attributed space); ``silence`` / ``silence_features`` (the representation of an
        all-zero waveform of the item's length: for cnn the backbone's features of silence, the tutorial's
        baseline; Whisper log-mel: the constant -1.5); ``noise``: the representation of seeded Gaussian white
        noise whose power is the item's power / 10^(snr_db / 10) (the waveform replaced by noise at that SNR)."""
        if name == "zeros":
            return torch.zeros_like(self.x0)
        if name in ("silence", "silence_features"):
            w = torch.zeros_like(self.wave)
        elif name == "noise":
            g = torch.Generator().manual_seed(int(seed))
            power = float((self.wave.double() ** 2).mean())
            std = (power / 10 ** (float(snr_db) / 10)) ** 0.5
            w = (torch.randn(self.wave.shape, generator=g, dtype=torch.float64) * std).float()
        else:
            raise AttributionError(f"utterance {self.utt_id!r}: baseline must be one of {BASELINES}, got {name!r}")
        with torch.no_grad(), eval_mode(self.backbone):
            return self.to_repr(w).detach()
