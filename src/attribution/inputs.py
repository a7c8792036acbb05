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
  :func:`whisper_log_mel` reproduces ``WhisperFeatureExtractor`` (within 1e-5, tested on real-length
  audio) differentiably: centred STFT (reflect pad), power, mel filters, ``log10(max(., 1e-10))``,
  dynamic-range clamp at ``max - 8``, ``(x + 4) / 4``.  Mel frame ``k`` is centred at ``k * 160`` samples.
- ``cnn``: the input to the first transformer layer, i.e. state 0 = ``gelu(conv2(gelu(conv1(mel))))``
  + sinusoidal positions, ``(1, 1500, D)`` over the window; frame ``i`` centred at ``0.02 i`` s.
  Cached per item.  The layers are run one by one on it (``layer(h, None)``, exactly what the
  encoder does; tested equal to ``encode``).

Steps of a padded representation (Whisper log-mel and CNN) whose time is at or after the end of the
audio are padding (see src/attribution/segments.py).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from src.backbones.base import _first, record_outputs

INPUT_TYPES = ("waveform", "spectrogram", "cnn")
BASELINES = ("zeros", "silence", "silence_features", "noise")


class AttributionError(ValueError):
    """Bad attribution input (unknown head or class, missing CTC head, ...); names the utterance."""


def _family(backbone) -> str:
    from src.backbones.hf import HFBackbone
    from src.backbones.whisper import WhisperBackbone

    if isinstance(backbone, WhisperBackbone):
        return "whisper"
    if isinstance(backbone, HFBackbone):
        return "hf"
    raise AttributionError(f"attribution needs a live transformer backbone (wav2vec2 family or Whisper), got "
                           f"{type(backbone).__name__} {getattr(backbone, 'name', '?')!r}")  # fmt: skip


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


# ----------------------------------------------------------------------------- Whisper log-mel


def whisper_log_mel(waveform: Tensor, feature_extractor, n_samples: int | None = None) -> Tensor:
    """Differentiable ``WhisperFeatureExtractor`` (torch path, float32): ``(B, N)`` waveforms -> ``(B, M, F)``.

    Zero-pads (or truncates) to ``n_samples`` (default the extractor's window), then the extractor's steps
    (``_torch_extract_fbank_features``): ``stft(n_fft, hop, hann, center=True, reflect)``, drop the last frame,
    ``|.|^2``, mel filters, ``log10(clamp(., 1e-10))``, per item ``max(x, x.max() - 8)``, ``(x + 4) / 4``.
    Written here because the extractor works in numpy without gradients.
    """
    fe = feature_extractor
    if float(getattr(fe, "dither", 0.0) or 0.0) != 0.0:
        raise AttributionError(f"WhisperFeatureExtractor.dither={fe.dither}: the log-mel is random; set it to 0")
    n = int(n_samples or fe.n_samples)
    w = waveform.to(torch.float32)
    if w.shape[-1] < n:
        w = torch.nn.functional.pad(w, (0, n - w.shape[-1]))  # (B, n): the extractor's zero padding
    w = w[..., :n]
    window = torch.hann_window(fe.n_fft, device=w.device)
    stft = torch.stft(w, fe.n_fft, fe.hop_length, window=window, return_complex=True)  # (B, n_fft/2+1, F+1)
    power = stft[..., :-1].abs() ** 2  # (B, n_freq, F)
    mel = torch.as_tensor(np.asarray(fe.mel_filters), dtype=torch.float32, device=w.device).T @ power  # (B, M, F)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    top = log_spec.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    log_spec = torch.maximum(log_spec, top - 8.0)
    return (log_spec + 4.0) / 4.0


# ----------------------------------------------------------------------------- representations


class Representation:
    """One item's attributed tensor ``x0`` and the path ``states(x)`` to the backbone's states.

    ``time_axis``: the axis of ``x0`` that is time; ``step_times()``: the time (s) each step stands for;
    ``padded``: steps at or after the end of the audio are padding (Whisper's window)."""

    def __init__(self, backbone, waveform: Tensor | np.ndarray, input_type: str, utt_id: str = "?") -> None:
        if input_type not in INPUT_TYPES:
            raise AttributionError(f"utterance {utt_id!r}: input type must be one of {INPUT_TYPES}, got {input_type!r}")
        self.backbone = backbone
        self.family = _family(backbone)
        self.input_type = input_type
        self.utt_id = utt_id
        w = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(1, -1)  # (1, N)
        backbone.check_input(int(w.shape[-1]), utt_id)
        self.wave = w
        self.num_samples = int(w.shape[-1])
        self.sample_rate = int(backbone.sample_rate)
        self.duration = self.num_samples / self.sample_rate
        self.n_real = int(backbone.num_frames(self.num_samples))
        self.padded = self.family == "whisper" and input_type != "waveform"
        with torch.no_grad(), eval_mode(backbone):
            self.x0 = self.to_repr(w).detach()
            if input_type == "spectrogram" and self.family == "hf":
                self._phase = torch.angle(self._stft(w)).detach()  # (1, 201, T_s), held fixed
        self.time_axis = 1 if not (self.family == "whisper" and input_type == "spectrogram") else 2

    # ---- pieces

    def _stft(self, w: Tensor) -> Tensor:
        win = torch.hann_window(400, device=w.device)
        return torch.stft(w, n_fft=400, hop_length=320, win_length=400, window=win, center=True, return_complex=True)

    def _hf_norm(self, w: Tensor) -> Tensor:
        if not self.backbone.do_normalize:
            return w
        mu = w.mean(dim=-1, keepdim=True)
        var = w.var(dim=-1, unbiased=False, keepdim=True)
        return (w - mu) / torch.sqrt(var + 1e-7)

    def _hf_cnn(self, w: Tensor) -> Tensor:
        m = self.backbone.model
        feats = m.feature_extractor(self._hf_norm(w)).transpose(1, 2)  # (B, T, C)
        return _first(m.feature_projection(feats))  # (B, T, D)

    def _whisper_cnn(self, mel: Tensor) -> Tensor:
        enc = self.backbone.encoder
        h = torch.nn.functional.gelu(enc.conv1(mel))
        h = torch.nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)  # (B, F, D)
        return h + enc.embed_positions.weight[: h.shape[1]]

    def to_repr(self, w: Tensor) -> Tensor:
        """The representation of waveforms ``(B, N)`` (used for ``x0`` and the baselines)."""
        if self.input_type == "waveform":
            return w
        if self.family == "hf":
            return self._stft(w).abs().transpose(1, 2) if self.input_type == "spectrogram" else self._hf_cnn(w)
        mel = whisper_log_mel(w, self.backbone.feature_extractor)
        return mel if self.input_type == "spectrogram" else self._whisper_cnn(mel)

    def _hf_encoder(self, h: Tensor) -> list[Tensor]:
        bb = self.backbone
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if bb.use_attention_mask else None
        if mask is not None:
            h = h.clone()  # the encoder zeroes masked frames in place
        layers = bb.layer_modules()
        first: list = [None]

        def grab_input(_module, args, kwargs):  # state 0 = the input of the first layer
            first[0] = args[0] if args else kwargs["hidden_states"]

        # transformers 5 collects hidden_states only at the top-level model: record each layer instead
        with bb.hooks([(layers[0], grab_input)], pre=True, with_kwargs=True), record_outputs(layers) as outs:
            bb.model.encoder(h, attention_mask=mask)
        if first[0] is None or any(o is None for o in outs):
            raise AttributionError(f"{bb.name}: the encoder did not run every layer (LayerDrop in training mode?)")
        states = [first[0], *outs]  # raw residual states 0..N (as encode)
        norm = bb.final_norm_module()
        if norm is not None:
            states.append(norm(outs[-1]))
        return states

    def _whisper_layers(self, h: Tensor) -> list[Tensor]:
        states = [h]
        for layer in self.backbone.encoder.layers:
            h = _first(layer(h, None))
            states.append(h)
        states.append(self.backbone.encoder.layer_norm(h))  # final_norm
        return states

    def states(self, x: Tensor) -> list[Tensor]:
        """All states ``S x (B, T, D)`` over the model's time axis (Whisper: the whole window) for ``x`` ``(B, *shape)``."""
        if tuple(x.shape[1:]) != tuple(self.x0.shape[1:]):
            raise AttributionError(f"utterance {self.utt_id!r}: input of shape {tuple(x.shape)} does not match the "
                                   f"{self.input_type} representation {tuple(self.x0.shape)}")  # fmt: skip
        if self.family == "hf":
            if self.input_type == "cnn":
                h = x
            else:
                w = x
                if self.input_type == "spectrogram":
                    spec = x.transpose(1, 2).to(torch.complex64) * torch.exp(1j * self._phase)  # (B, 201, T_s)
                    win = torch.hann_window(400, device=x.device)
                    w = torch.istft(spec, n_fft=400, hop_length=320, win_length=400, window=win, center=True,
                                    length=self.num_samples)  # (B, N)
                h = self._hf_cnn(w)
            return self._hf_encoder(h)
        if self.input_type == "cnn":
            h = x
        else:
            mel = whisper_log_mel(x, self.backbone.feature_extractor) if self.input_type == "waveform" else x
            h = self._whisper_cnn(mel)
        return self._whisper_layers(h)

    # ---- time and baselines

    def seconds_per_step(self) -> float:
        if self.input_type == "waveform":
            return 1.0 / self.sample_rate
        if self.input_type == "spectrogram":
            return (320 if self.family == "hf" else int(self.backbone.feature_extractor.hop_length)) / self.sample_rate
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
