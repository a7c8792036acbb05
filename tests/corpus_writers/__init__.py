"""Writers of small corpora in real on-disk layouts (../shared/CORPORA.md), for reader tests.

:func:`grid_utterances` makes a small tone corpus (as ``make_tone_corpus`` in tests/conftest.py)
whose interval times lie on a 10 ms grid, so every layout (seconds as text, 16 kHz sample
indices, lhotse start + duration, HF floats) represents them exactly; the format writers in
this package take its :class:`~src.datamodules.corpus.Utterance` list.
"""

from __future__ import annotations

import numpy as np

PHONE_FREQS = {"a": 300.0, "i": 900.0, "s": 2500.0, "m": 150.0, "o": 600.0}
GRID = 0.01  # s


def grid_utterances(num: int = 8, speakers: tuple[str, ...] = ("spk1", "spk2"), seed: int = 0,
                    sample_rate: int = 16000, vocabulary: int = 5, noise: float = 0.01, tracks: bool = False) -> list:  # fmt: skip
    """Utterances ``<spk>_<k:03d>`` of 2-3 words drawn from a lexicon of ``vocabulary`` phone strings;
    audio holds 16-bit PCM values exactly (every container stores it losslessly); each phone a tone of 8-20 grid steps (10 ms), 50 ms of silence at both ends; tiers ``phones``
    and ``words`` (a word spells its phones), Gaussian noise of standard deviation ``noise``; text = the words joined by spaces. Sorted by
    (speaker, id), the order every reader of the folder layouts gives. With ``tracks``, an EMA-like
    track ``ema`` at 100 Hz with channels ``TT_x`` (the phone's tone frequency / 1000, 0 in silence)
    and ``TT_z`` (a 1 Hz sine), float32, one row per 10 ms of audio."""
    from src.datamodules.corpus import Interval, Track, Utterance

    rng = np.random.default_rng(seed)
    lex_rng = np.random.default_rng(seed + 1000)
    phones = list(PHONE_FREQS)
    lexicon = sorted({"".join(lex_rng.choice(phones, size=int(lex_rng.integers(2, 4)))) for _ in range(vocabulary)})
    out = []
    for u in range(num):
        spk = speakers[u % len(speakers)]
        words = [lexicon[int(rng.integers(len(lexicon)))] for _ in range(int(rng.integers(2, 4)))]
        step = int(round(GRID * sample_rate))
        pos = 5 * step
        audio = [np.zeros(pos, np.float32)]
        ph, wd = [], []
        for w in words:
            w0 = pos
            for p in w:
                n = int(rng.integers(8, 21)) * step
                tt = np.arange(n) / sample_rate
                gain = 0.3 if spk == speakers[0] else 0.2
                audio.append((gain * np.sin(2 * np.pi * PHONE_FREQS[p] * tt) + noise * rng.standard_normal(n)).astype(np.float32))
                ph.append(Interval(round(pos / sample_rate, 6), round((pos + n) / sample_rate, 6), p))
                pos += n
            wd.append(Interval(round(w0 / sample_rate, 6), round(pos / sample_rate, 6), w))
        audio.append(np.zeros(5 * step, np.float32))
        q = np.clip(np.round(np.concatenate(audio) * 32768), -32768, 32767)  # exactly 16-bit PCM values
        wav = (q / 32768).astype(np.float32)
        trk = {}
        if tracks:
            t = np.arange(len(wav) // step) * GRID  # (T,) row times
            f = np.zeros_like(t)
            for iv in ph:
                f[(t >= iv.start - 1e-9) & (t < iv.end - 1e-9)] = PHONE_FREQS[iv.label] / 1000
            trk["ema"] = Track(100.0, np.stack([f, np.sin(2 * np.pi * t)], axis=1).astype(np.float32), ("TT_x", "TT_z"))
        out.append(Utterance(id=f"{spk}_{u:03d}", audio=wav, sample_rate=sample_rate, speaker=spk,
                             text=" ".join(words), tiers={"phones": ph, "words": wd}, tracks=trk))  # fmt: skip
    return sorted(out, key=lambda x: (x.speaker, x.id))


def pcm16(audio: np.ndarray) -> np.ndarray:
    """The int16 samples of audio made by :func:`grid_utterances` (written as int16: libsndfile scales floats
    by 32767 on write and 1/32768 on read, so a float round trip through PCM_16 is not exact)."""
    q = np.round(np.asarray(audio, np.float64) * 32768)
    assert np.array_equal(q / 32768, np.asarray(audio, np.float64)), "audio is not on the 16-bit grid"
    assert q.size == 0 or (q.min() >= -32768 and q.max() <= 32767), "audio outside the 16-bit range"
    return q.astype(np.int16)


def write_textgrid_corpus(root, utts) -> None:
    """The MFA layout ``<root>/<speaker>/<id>.wav`` + ``.TextGrid`` (data=textgrid)."""
    from pathlib import Path

    import soundfile as sf

    from src.datamodules.corpus import save_tracks, write_textgrid

    for u in utts:
        d = Path(root) / u.speaker
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{u.id}.wav", pcm16(u.audio), u.sample_rate, subtype="PCM_16")
        write_textgrid(d / f"{u.id}.TextGrid", u.tiers, len(u.audio) / u.sample_rate)
        if u.tracks:
            save_tracks(d / f"{u.id}.tracks.npz", u.tracks)
