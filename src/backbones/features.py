"""MFCC and log-mel baselines as one-layer "backbones" (no torchaudio).

Computed with ``torch.stft`` (centred, zero padded: librosa's ``pad_mode="constant"``)
and ``transformers.audio_utils.mel_filter_bank`` (slaney mel scale and norm, as librosa's
defaults); dB with a per-utterance ``top_db`` floor as ``librosa.power_to_db``; MFCC as
the orthonormal DCT-II of the dB log-mel (librosa's ``feature.mfcc``).  Deltas use the
regression formula over +-``delta_width // 2`` frames with edge padding (librosa's
``feature.delta`` with ``mode="nearest"`` up to its Savitzky-Golay equivalence).

Frame ``i`` is centred at ``i * hop`` samples (``frame_offset = 0``); an utterance of
``n`` samples keeps ``ceil(n / hop)`` frames (the centres inside the audio), the same
rule as Whisper's encoder frames.  The default hop (320 samples, 50 Hz) matches the
frame rate of Whisper and the wav2vec2 family.

torchaudio's definition (``backbone=mfcc_torchaudio``; the tutorial's probing baseline
``torchaudio.transforms.MFCC(sample_rate=16000, n_mfcc=13, melkwargs={n_fft: 400, hop_length: 320})``)
is the same pipeline with other options: ``mel_scale="htk"``, ``mel_norm=None`` (torchaudio
``MelScale`` defaults), ``pad_mode="reflect"`` (``Spectrogram``'s centring), ``n_fft=win_length=400``,
``n_mels=128``, dB as ``AmplitudeToDB("power", top_db=80)`` (``10 log10(max(x, 1e-10))``, floor
at the utterance maximum - 80 dB), DCT-II ortho, and ``frames="all"``: every frame
``torch.stft`` gives (``n // hop + 1``), as torchaudio returns them.  Checked against a literal
numpy implementation of that definition in tests/backbones/test_mfcc_torchaudio.py.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from src.backbones.base import Encoded, SpeechBackbone


def _deltas(x: Tensor, width: int) -> Tensor:
    """Regression deltas along time.  x: (T, F)."""
    n = width // 2
    pad = torch.cat([x[:1].expand(n, -1), x, x[-1:].expand(n, -1)])  # (T + 2n, F)
    t = x.shape[0]
    num = sum(k * (pad[n + k : n + k + t] - pad[n - k : n - k + t]) for k in range(1, n + 1))
    return num / (2 * sum(k * k for k in range(1, n + 1)))


class SpectralBaseline(SpeechBackbone):
    """Log-mel (``kind="logmel"``) or MFCC (``kind="mfcc"``) frames as a single layer."""

    def __init__(
        self,
        kind: str = "mfcc",
        n_mels: int = 80,
        n_mfcc: int = 13,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 320,
        sample_rate: int = 16000,
        deltas: bool = False,
        delta_width: int = 9,
        top_db: float | None = 80.0,
        fmin: float = 0.0,
        fmax: float | None = None,
        name: str | None = None,
        mel_scale: str = "slaney",
        mel_norm: str | None = "slaney",
        pad_mode: str = "constant",
        frames: str = "inside",
    ) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        if kind not in {"mfcc", "logmel"}:
            raise ValueError(f"backbone.kind must be 'mfcc' or 'logmel', got {kind!r}")
        if mel_scale not in {"slaney", "htk"} or mel_norm not in {"slaney", None}:
            raise ValueError(f"backbone.mel_scale must be slaney|htk and mel_norm slaney|null, got {mel_scale!r}, {mel_norm!r}")
        if pad_mode not in {"constant", "reflect"} or frames not in {"inside", "all"}:
            raise ValueError(f"backbone.pad_mode must be constant|reflect and frames inside|all, got {pad_mode!r}, {frames!r}")
        self.mel_scale, self.mel_norm, self.pad_mode, self.frames = mel_scale, mel_norm, pad_mode, frames
        self.kind = kind
        self.n_mels, self.n_mfcc, self.n_fft = n_mels, n_mfcc, n_fft
        self.win_length, self.hop_length, self.sample_rate = win_length, hop_length, sample_rate
        self.deltas, self.delta_width, self.top_db = deltas, delta_width, top_db
        self.fmin, self.fmax = fmin, fmax if fmax is not None else sample_rate / 2
        import warnings

        with warnings.catch_warnings(record=True) as caught:  # 128 HTK bands over 201 bins (torchaudio's MFCC
            warnings.simplefilter("always")  # defaults) leave some bands empty: expected, so logged, not warned
            fb = mel_filter_bank(
                num_frequency_bins=n_fft // 2 + 1,
                num_mel_filters=n_mels,
                min_frequency=fmin,
                max_frequency=self.fmax,
                sampling_rate=sample_rate,
                norm=mel_norm,
                mel_scale=mel_scale,
            )  # (n_fft // 2 + 1, n_mels)
        for w in caught:
            logging.getLogger(__name__).info("mel filter bank (%d bands, n_fft %d): %s", n_mels, n_fft, w.message)
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        if kind == "mfcc":
            from scipy.fft import dct

            basis = dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc]  # (n_mfcc, n_mels)
            self.register_buffer("dct", torch.from_numpy(basis).float(), persistent=False)
        base_dim = n_mfcc if kind == "mfcc" else n_mels
        self.hidden_size = base_dim * (3 if deltas else 1)
        self.num_layers = 1
        self.frame_rate = sample_rate / hop_length
        self.frame_offset = 0.0
        self.padding_safe = True
        self.name = name or (kind + ("_deltas" if deltas else ""))

    @property
    def config_dict(self) -> dict:
        keys = ["kind", "n_mels", "n_mfcc", "n_fft", "win_length", "hop_length", "sample_rate", "deltas",
                "delta_width", "top_db", "fmin", "fmax"]  # fmt: skip
        if (self.mel_scale, self.mel_norm, self.pad_mode, self.frames) != ("slaney", "slaney", "constant", "inside"):
            keys += ["mel_scale", "mel_norm", "pad_mode", "frames"]  # only when set: old caches keep their keys
        return {k: getattr(self, k) for k in keys}

    def num_frames(self, num_samples: int) -> int:
        if self.frames == "all":  # every centred STFT frame, as torchaudio / librosa return them
            return int(num_samples) // self.hop_length + 1
        return int(math.ceil(num_samples / self.hop_length))

    def min_samples(self) -> int:
        return self.n_fft // 2 + 1 if self.pad_mode == "reflect" else 1  # reflect padding needs n > n_fft // 2

    def frames_one(self, audio: Tensor) -> Tensor:
        """Features of one utterance: (T, D)."""
        spec = torch.stft(
            audio.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode=self.pad_mode,
            return_complex=True,
        )  # (F, T + 1)
        power = spec.abs() ** 2
        mel = self.mel_fb.T @ power  # (M, T + 1)
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        if self.top_db is not None:
            db = torch.maximum(db, db.max() - self.top_db)
        feats = (self.dct @ db if self.kind == "mfcc" else db).T  # (T + 1, D0)
        feats = feats[: self.num_frames(audio.shape[-1])]  # (T, D0)
        if self.deltas:
            d1 = _deltas(feats, self.delta_width)
            feats = torch.cat([feats, d1, _deltas(d1, self.delta_width)], dim=1)  # (T, 3 * D0)
        return feats

    @torch.no_grad()
    def encode(self, waveforms: list[Tensor], output_attentions: bool = False) -> Encoded:
        per = [self.frames_one(torch.as_tensor(w)) for w in waveforms]
        lengths = torch.tensor([p.shape[0] for p in per])
        hidden = torch.zeros(1, len(per), int(lengths.max()), self.hidden_size)  # (1, B, T, D)
        for i, p in enumerate(per):
            hidden[0, i, : p.shape[0]] = p
        return Encoded(hidden=hidden, lengths=lengths)
