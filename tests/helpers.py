"""Helpers shared by the test modules (imported from here, never from another test module): the CLI runner,
a deterministic fake backbone, an in-memory corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from src.backbones.base import Encoded, SpeechBackbone
from src.datamodules.corpus import Corpus

ROOT = Path(__file__).resolve().parents[1]


def run_cli(script: str, overrides: list[str], run_dir: Path, env_extra: dict | None = None, multirun: bool = False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    cmd = [sys.executable, str(ROOT / script), *(["-m"] if multirun else []), *overrides, f"{key}={run_dir}"]
    proc = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


class FakeBackbone(SpeechBackbone):
    """Deterministic states of 10 ms frames: residual ``k`` = (frames @ W) * (k + 1) + k, then
    ``final_norm`` = a LayerNorm of the last residual state.  ``poison = (audio, state, value)``
    puts ``value`` at frame 2, feature 1 of that state for that audio."""

    def __init__(self, hidden_size: int = 6, residual: int = 3, extras=("final_norm",), poison=None, name="fake"):
        super().__init__()
        self.name = name
        self.num_layers = residual
        self.hidden_size = hidden_size
        self.frame_rate = 100.0
        self.frame_offset = 0.005
        self.sample_rate = 16000
        self.padding_safe = True
        self._extras = list(extras)
        self.poison = poison
        self.W = torch.randn(160, hidden_size, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    @property
    def layer_names(self) -> list[str]:
        return [str(i) for i in range(self.num_layers)] + self._extras

    @property
    def config_dict(self) -> dict:
        return {"hidden_size": self.hidden_size, "residual": self.num_layers, "extras": self._extras}

    def num_frames(self, num_samples: int) -> int:
        return int(num_samples) // 160

    def states_one(self, audio: torch.Tensor) -> torch.Tensor:
        T = self.num_frames(audio.shape[-1])
        x = audio[: T * 160].reshape(T, 160).float() @ self.W  # (T, D)
        res = [x * (k + 1) + k for k in range(self.num_layers)]
        extra = [torch.nn.functional.layer_norm(res[-1], (self.hidden_size,))] if self._extras else []
        return torch.stack(res + extra)  # (S, T, D)

    @torch.no_grad()
    def encode(self, waveforms, output_attentions: bool = False) -> Encoded:
        self.calls += 1
        per = [self.states_one(torch.as_tensor(w)) for w in waveforms]
        lengths = torch.tensor([p.shape[1] for p in per])
        hidden = torch.full((per[0].shape[0], len(per), int(lengths.max()), self.hidden_size), 7.0)
        for b, p in enumerate(per):
            hidden[:, b, : p.shape[1]] = p
            if self.poison is not None and np.array_equal(np.asarray(waveforms[b]), self.poison[0]):
                hidden[self.poison[1], b, 2, 1] = self.poison[2]
        return Encoded(hidden=hidden, lengths=lengths)


class ListCorpus(Corpus):
    """A corpus over a list of ``Utterance`` objects (``cues``: optional per-item extras for subclasses)."""

    name = "list"

    def __init__(self, utts, cues=None):
        self.utts, self.cues = list(utts), cues

    def __len__(self):
        return len(self.utts)

    def __getitem__(self, i):
        return self.utts[i]

    @property
    def ids(self):
        return [u.id for u in self.utts]
