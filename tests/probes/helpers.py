"""Helpers shared by the test modules of this folder (imported from here, not from another test module)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


def trainer_factory(max_epochs: int = 15, **kw):  # conf/trainer/default.yaml's 15 epochs
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)  # fmt: skip


def conf_probe(name: str = "linear", **over):
    """The probe partial exactly as ``train.py probe=<name>`` builds it (with overrides)."""
    cfg = OmegaConf.load(ROOT / "conf" / "probe" / f"{name}.yaml")
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return instantiate(cfg)
