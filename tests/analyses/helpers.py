"""Helpers shared by the test modules of this folder (imported from here, not from another test module)."""

from __future__ import annotations

import numpy as np

from src.datamodules.corpus import Utterance
from tests.analyses.phone_fakes import FakeActs, MemoryCorpus

SPEAKERS = ["ann", "bob", "cat"]


SENTENCES = ["one two", "three four", "five six", "seven eight"]


D = 12


def _basis(k: int) -> np.ndarray:
    e = np.zeros(D)
    e[k] = 1.0
    return e


def _build(a: float = 2.0, b: float = 1.0, extra: bool = True):
    """Utterance mean = a s_speaker + b t_sentence (layer 0) and b s + a t (layer 1), orthonormal s, t.

    Each utterance has 3 frames mean + d, mean, mean - d (d orthogonal to all), so its mean is exact.
    ``extra`` adds a sentence read by two speakers only (must be dropped) and an untranscribed utterance.
    """
    items = [(spk, txt) for txt in SENTENCES for spk in SPEAKERS]
    if extra:
        items += [("ann", "only two read this"), ("bob", "only two read this"), ("cat", "")]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(items))  # corpus order must not matter
    items = [items[i] for i in order]
    utts, frames = [], []
    for k, (spk, txt) in enumerate(items):
        s = _basis(SPEAKERS.index(spk))
        t = _basis(3 + SENTENCES.index(txt)) if txt in SENTENCES else _basis(8 if txt else 9)
        d = 5.0 * _basis(10) + 3.0 * _basis(11)
        out = []
        for m in (a * s + b * t, b * s + a * t):
            out.append(np.stack([m + d, m, m - d]))  # (3, D)
        frames.append(np.stack(out))  # (L=2, T=3, D)
        utts.append(Utterance(f"{spk}_{k:02d}", np.zeros(160, np.float32), 16000, spk, text=txt))
    corpus = MemoryCorpus(utts)
    return FakeActs(corpus.ids, [u.speaker for u in utts], frames), corpus
