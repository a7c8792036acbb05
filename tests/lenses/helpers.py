"""Helpers shared by the test modules of this folder (imported from here, not from another test module):
a toy phone corpus and the part of a cache the CTC heads read."""

from __future__ import annotations

import numpy as np

from src.datamodules.corpus import Corpus, Interval, Utterance
from src.layers import resolve_layers

PHONES = ["a", "b", "c", "d", "e"]


class _Corpus(Corpus):
    name = "ctc-fake"

    def __init__(self, utts):
        self._utts = utts

    def __len__(self):
        return len(self._utts)

    def __getitem__(self, i):
        return self._utts[i]

    @property
    def ids(self):
        return [u.id for u in self._utts]

    def speaker(self, i):
        return self._utts[i].speaker

    def annotation(self, i):
        return self._utts[i]

    def num_samples(self, i):
        return len(self._utts[i].audio)


class _Acts:
    """The part of `src.activations.Activations` the CTC code reads; states ``(N, D)`` each."""

    def __init__(self, ids, frames, names):  # frames: per utterance (S, T, D)
        self.ids = list(ids)
        self.lengths = np.array([f.shape[1] for f in frames], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self._states = np.concatenate(frames, axis=1).astype(np.float32)  # (S, N, D)
        self.layer_names = list(names)
        self.num_layers = sum(not n.startswith("final") for n in names)
        self.hidden_size = self._states.shape[2]
        self.backbone, self.meta = "fake", {"backbone_fingerprint": "0123"}

    extra_states = property(lambda self: self.layer_names[self.num_layers :])

    def resolve_layers(self, spec, what="layers"):
        return resolve_layers(spec, self.num_layers, extras=self.extra_states, what=what)

    def layer_index(self, i):
        return self.layer_names.index(i) if isinstance(i, str) and i in self.layer_names else int(i)

    def index_of(self, u):
        return self.ids.index(u)

    def layer(self, i):
        return self._states[self.layer_index(i)]


def toy(n_utts=40, dim=12, frames_per_phone=4, noise=0.1, seed=0, short=()):
    """Corpus of random 3-6 phone sequences; states: 0 = linear code of the phone + noise, 1 = noise.

    Utterances in ``short`` get one frame in total (their target cannot fit)."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((len(PHONES), dim)) * 2
    utts, frames = [], []
    for u in range(n_utts):
        seq: list[str] = []
        n_phones = int(rng.integers(3, 7))
        while len(seq) < n_phones:  # no adjacent repeats (they would need a gap frame between them)
            p = PHONES[int(rng.integers(len(PHONES)))]
            if not seq or p != seq[-1]:
                seq.append(p)
        labels = ["sil", *[p.upper() + "1" for p in seq], "sil"]  # through the label normalisation
        ivs = [Interval(0.1 * j, 0.1 * (j + 1), lab) for j, lab in enumerate(labels)]
        utts.append(
            Utterance(
                f"s{u % 2}_{u:03d}", np.zeros(1600, np.float32), 16000, f"s{u % 2}", tiers={"phones": ivs}
            )
        )
        ids = [PHONES.index(p) for p in seq]
        code = np.concatenate(
            [np.zeros((2, dim)), np.repeat(protos[ids], frames_per_phone, 0), np.zeros((2, dim))]
        )
        if u in short:
            code = code[:1]
        lin = code + noise * rng.standard_normal(code.shape)
        frames.append(np.stack([lin, rng.standard_normal(code.shape)]))  # (2, T, D)
    return _Corpus(utts), _Acts([u.id for u in utts], frames, ["0", "1"])


def _splits(n):
    idx = np.arange(n)
    return {
        "train": idx[: int(0.6 * n)],
        "val": idx[int(0.6 * n) : int(0.8 * n)],
        "test": idx[int(0.8 * n) :],
    }
