"""Contracts: every config composes, every ``_target_`` resolves, the math imports no framework."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from tests.conftest import ROOT

CONF = ROOT / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _targets(node, found=None):
    found = [] if found is None else found
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for v in node.values():
            _targets(v, found)
    elif isinstance(node, list):
        for v in node:
            _targets(v, found)
    return found


def _resolve(target: str) -> None:
    try:
        get_class(target)
    except Exception:
        get_method(target)


def _compose(config: str, overrides: list[str]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    config = "analyze" if experiment.startswith("cka") else "train"
    cfg = _compose(config, [f"experiment={experiment}"])
    for t in _targets(OmegaConf.to_container(cfg, resolve=False)):
        _resolve(t)


@pytest.mark.parametrize("group", ["backbone", "data", "task", "probe", "cache", "trainer", "logger"])
def test_every_train_option_composes_and_targets_resolve(group):
    for option in _options(group):
        cfg = _compose("train", [f"{group}={option}"])
        for t in _targets(OmegaConf.to_container(cfg, resolve=False)):
            _resolve(t)


def test_every_analysis_composes():
    for option in _options("analysis"):
        cfg = _compose("analyze", [f"analysis={option}"])
        assert cfg.analysis.name
        for t in _targets(OmegaConf.to_container(cfg, resolve=False)):
            _resolve(t)


def test_launchers_compose():
    for launcher in ("joblib", "submitit_slurm"):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


def test_functional_imports_no_framework():
    code = (
        "import sys, importlib, pkgutil, src.functional as f\n"
        "for m in pkgutil.iter_modules(f.__path__): importlib.import_module('src.functional.' + m.name)\n"
        "bad = [m for m in ('lightning', 'hydra', 'pytorch_lightning', 'wandb', 'transformers') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
