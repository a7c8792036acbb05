"""Helpers shared by the test modules of this folder (imported from here, not from another test module)."""

from __future__ import annotations

import numpy as np
import torch

from src.datamodules.commands import CommandItem
from src.datamodules.corpus import Interval, Utterance

HEADS = {"action": ["go", "stop", "turn"], "object": ["lamp", "door"]}


WORDS = [["go", "the", "lamp"], ["stop", "a", "door"], ["turn", "the", "door"], ["go", "a", "door"]]


class FakeCommands:
    """Commands-like corpus: 3-word utterances (tones + noise), action = word 0, object = word 2."""

    name = "fake_commands"

    def __init__(self, n: int = 4, seconds: float = 0.5):
        self.utts, self.items = [], []
        sr = 16000
        for u in range(n):
            rng = np.random.default_rng(100 + u)
            N = int(seconds * sr)
            t = np.arange(N) / sr
            audio = 0.02 * rng.standard_normal(N)
            bounds = [(0.03, 0.15), (0.18, 0.28), (0.31, 0.46)]
            words = []
            for w, (s, e) in enumerate(bounds):
                on = (t >= s) & (t < e)
                audio[on] += 0.3 * np.sin(2 * np.pi * (200 + 150 * (u + w)) * t[on])
                words.append(Interval(s, e, WORDS[u][w]))
            uid = f"cmd{u}"
            self.utts.append(Utterance(uid, audio.astype(np.float32), sr, tiers={"words": words}))
            self.items.append(CommandItem(uid, " ".join(WORDS[u]), {"action": WORDS[u][0], "object": WORDS[u][2]},
                                          {"action": (0,), "object": (2,)}))  # fmt: skip
        self.ids = [x.id for x in self.utts]

    def __len__(self):
        return len(self.utts)

    def __getitem__(self, i):
        return self.utts[i]

    def command_item(self, i):
        return self.items[i]

    def slot_classes(self):
        return HEADS


def save_classifier(bb, path, model_dir, seed=0, test_ids=None):
    from src.probes.utterance import UtteranceClassifier

    torch.manual_seed(seed)
    clf = UtteranceClassifier(HEADS, bb.hidden_size, bb.layer_names, bb.num_layers, layer=-1)
    with torch.no_grad():
        for lin in clf.linears.values():
            lin.weight.normal_(0, 1.0)
    meta = {"backbone": {"_target_": "src.backbones.hf.HFBackbone", "model_id": str(model_dir)}, "seed": seed,
            "splits": {"test": list(test_ids or [])}}  # fmt: skip
    clf.save(path, meta)
    return path
