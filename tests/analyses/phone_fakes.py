"""In-memory corpora and activation caches with known structure, for the analysis tests.

``phone_corpus`` lays phones end to end (each ``dur`` seconds, starting at 0) so that at
50 frames/s and ``dur = 0.1`` every phone owns exactly 5 frames; ``prototype_acts``
gives every frame of a phone its prototype vector (per layer) plus seeded noise.
``FakeActs`` offers the part of :class:`src.activations.Activations` the analyses read.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from src.datamodules.corpus import Corpus, Interval, Track, Utterance


class MemoryCorpus(Corpus):
    name = "memory"

    def __init__(self, utts: list[Utterance]) -> None:
        self._utts = utts

    def __len__(self) -> int:
        return len(self._utts)

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        return self._utts[i]

    @property
    def ids(self) -> list[str]:
        return [u.id for u in self._utts]

    def speaker(self, i: int) -> str:
        return self._utts[i].speaker

    def annotation(self, i: int) -> Utterance:
        return self._utts[i]

    def num_samples(self, i: int) -> int:
        return len(self._utts[i].audio)


def phone_corpus(
    sequences: list[list[str]],
    speakers: list[str],
    dur: float = 0.1,
    sample_rate: int = 16000,
    track: bool = False,
) -> MemoryCorpus:
    """One utterance per phone sequence; silent audio of the right length; optional 'ema'
    track (100 Hz, 2 channels: the phone's index in sorted order, and its square)."""
    utts = []
    order = sorted({p for seq in sequences for p in seq})
    for k, (seq, spk) in enumerate(zip(sequences, speakers)):
        ivs = [Interval(round(i * dur, 6), round((i + 1) * dur, 6), p) for i, p in enumerate(seq)]
        total = len(seq) * dur
        tracks = {}
        if track:
            per = round(dur * 100)  # track samples per phone
            idx = np.array([order.index(seq[j // per]) for j in range(per * len(seq))], dtype=np.float32)
            tracks["ema"] = Track(100.0, np.stack([idx, idx**2], 1), ("a", "b"))
        utts.append(Utterance(f"{spk}_{k:03d}", np.zeros(round(total * sample_rate), np.float32), sample_rate,
                              spk, tiers={"phones": ivs}, tracks=tracks))  # fmt: skip
    return MemoryCorpus(utts)


class FakeActs:
    """Activations-like: ``frames[u]`` is ``(L, T_u, D)``."""

    def __init__(self, ids, speakers, frames: list[np.ndarray], frame_rate: float = 50.0, frame_offset: float = 0.0,
                 name: str = "fake") -> None:  # fmt: skip
        self.ids, self.speakers = list(ids), list(speakers)
        self.lengths = np.array([f.shape[1] for f in frames], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self._layers = np.concatenate(frames, axis=1)  # (L, N, D)
        self.num_layers, self.hidden_size = self._layers.shape[0], self._layers.shape[2]
        self.frame_rate, self.frame_offset = frame_rate, frame_offset
        self.path = Path(f"/nonexistent/{name}")
        self.backbone = self.corpus = name
        self.meta = {}

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, u) -> int:
        return int(u) if isinstance(u, (int, np.integer)) else self.ids.index(u)

    def layer(self, i: int) -> np.ndarray:
        return self._layers[i]

    def frame_times(self, u) -> np.ndarray:
        return self.frame_offset + np.arange(self.lengths[self.index_of(u)]) / self.frame_rate


def prototype_acts(
    corpus: MemoryCorpus, prototypes: dict[str, np.ndarray], noise: float = 0.0, seed: int = 0,
    frame_rate: float = 50.0, frame_offset: float = 0.0, name: str = "fake",
) -> FakeActs:  # fmt: skip
    """Frames = the prototype of the phone at the frame's time (``(L, D)`` per phone) + noise."""
    rng = np.random.default_rng(seed)
    some = next(iter(prototypes.values()))
    L, D = some.shape
    frames = []
    for u in range(len(corpus)):
        ann = corpus.annotation(u)
        n = math.ceil(len(ann.audio) / ann.sample_rate * frame_rate - 1e-9)
        t = frame_offset + np.arange(n) / frame_rate
        out = np.zeros((L, n, D))
        for iv in ann.tiers["phones"]:
            sel = (t >= iv.start) & (t < iv.end)
            out[:, sel] = prototypes[iv.label][:, None, :]
        frames.append(out + noise * rng.standard_normal(out.shape))
    return FakeActs(
        corpus.ids, [corpus.speaker(u) for u in range(len(corpus))], frames, frame_rate, frame_offset, name
    )
