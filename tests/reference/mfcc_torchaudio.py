"""Literal numpy implementation of torchaudio's MFCC definition (torchaudio 2.x source, read as text):

``MFCC(sample_rate, n_mfcc, dct_type=2, norm="ortho", log_mels=False, melkwargs)`` =
``Spectrogram(n_fft, win_length=n_fft, hop_length, pad=0, window_fn=hann_window (periodic), power=2,
normalized=False, center=True, pad_mode="reflect", onesided=True)`` -> ``MelScale(n_mels, sample_rate,
f_min=0, f_max=sr/2, n_stft=n_fft//2+1, norm=None, mel_scale="htk")`` (``melscale_fbanks``: triangles
between ``n_mels + 2`` points equally spaced on 2595 log10(1 + f/700), over ``linspace(0, sr//2, n_freqs)``)
-> ``AmplitudeToDB("power", top_db=80)`` (10 log10(max(x, 1e-10)), then max(x, max over the whole
spectrogram - top_db)) -> ``create_dct(n_mfcc, n_mels, "ortho")`` (DCT-II, orthonormal).
Loops and explicit formulas on purpose: nothing shared with src/backbones/features.py.
"""

from __future__ import annotations

import math

import numpy as np


def hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def melscale_fbanks(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> np.ndarray:
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2)
    f_pts = mel_to_hz_htk(m_pts)
    fb = np.zeros((n_freqs, n_mels))
    for j in range(n_mels):
        lo, c, hi = f_pts[j], f_pts[j + 1], f_pts[j + 2]
        for i, f in enumerate(all_freqs):
            down = (f - lo) / (c - lo)
            up = (hi - f) / (hi - c)
            fb[i, j] = max(0.0, min(down, up))
    return fb  # (n_freqs, n_mels)


def dct_ortho(n_mfcc: int, n_mels: int) -> np.ndarray:
    d = np.zeros((n_mels, n_mfcc))
    for k in range(n_mfcc):
        for n in range(n_mels):
            d[n, k] = math.cos(math.pi / n_mels * (n + 0.5) * k)
        d[:, k] *= math.sqrt(1.0 / n_mels) if k == 0 else math.sqrt(2.0 / n_mels)
    return d  # (n_mels, n_mfcc)


def torchaudio_mfcc(wave: np.ndarray, sample_rate=16000, n_mfcc=13, n_fft=400, hop_length=320, n_mels=128,
                    top_db=80.0) -> np.ndarray:  # fmt: skip
    """(T, n_mfcc) with T = len(wave) // hop_length + 1, float64."""
    x = np.asarray(wave, dtype=np.float64)
    half = n_fft // 2
    padded = np.concatenate(
        [x[1 : half + 1][::-1], x, x[-half - 1 : -1][::-1]]
    )  # reflect, edge sample not repeated
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)])  # periodic hann
    T = 1 + (len(padded) - n_fft) // hop_length
    power = np.zeros((n_fft // 2 + 1, T))
    for t in range(T):
        frame = padded[t * hop_length : t * hop_length + n_fft] * window
        power[:, t] = np.abs(np.fft.rfft(frame)) ** 2
    mel = melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate).T @ power  # (n_mels, T)
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - top_db)
    return (dct_ortho(n_mfcc, n_mels).T @ db).T  # (T, n_mfcc)


# ----------------------------------------------------------------------------- librosa's defaults (notebook D)


def hz_to_mel_slaney(f: float) -> float:
    """librosa ``hz_to_mel(htk=False)``: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / logstep


def mel_to_hz_slaney(m: float) -> float:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return f_sp * m if m < min_log_mel else min_log_hz * math.exp(logstep * (m - min_log_mel))


def librosa_mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa ``filters.mel(sr, n_fft, n_mels)`` defaults (slaney scale, area norm): ``(n_mels, 1 + n_fft // 2)``."""
    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    lo, hi = hz_to_mel_slaney(0.0), hz_to_mel_slaney(sr / 2)
    mel_f = np.array([mel_to_hz_slaney(lo + (hi - lo) * k / (n_mels + 1)) for k in range(n_mels + 2)])
    w = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        for j, f in enumerate(fftfreqs):
            lower = (f - mel_f[i]) / (mel_f[i + 1] - mel_f[i])
            upper = (mel_f[i + 2] - f) / (mel_f[i + 2] - mel_f[i + 1])
            w[i, j] = max(0.0, min(lower, upper))
        w[i] *= 2.0 / (mel_f[i + 2] - mel_f[i])
    return w


def librosa_default_mfcc(
    y: np.ndarray, sr: int, n_mels: int, n_fft: int, hop_length: int, n_mfcc: int = 20
) -> np.ndarray:
    """``librosa.feature.mfcc(y=y, sr=sr, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)`` with librosa >= 0.10
    defaults (hann, centred with zero padding, power 2, power_to_db(ref=1, amin=1e-10, top_db=80), DCT-II ortho),
    transposed: ``(frames, min(n_mfcc, n_mels))``."""
    x = np.asarray(y, dtype=np.float64)
    half = n_fft // 2
    padded = np.concatenate([np.zeros(half), x, np.zeros(half)])
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)])
    T = 1 + (len(padded) - n_fft) // hop_length
    power = np.stack([np.abs(np.fft.rfft(padded[t * hop_length : t * hop_length + n_fft] * window)) ** 2
                      for t in range(T)], axis=1)  # fmt: skip
    db = 10.0 * np.log10(np.maximum(librosa_mel_filters(sr, n_fft, n_mels) @ power, 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    k = min(n_mfcc, n_mels)
    return (dct_ortho(k, n_mels).T @ db).T
