"""Backbone records (src/backbones/spec.py): plain data in, the project's own classes out; names from the model."""

from __future__ import annotations

import shutil

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from src.backbones.spec import BackboneRecordError, build_backbone, read_record, record_from_config, record_of
from tests.conftest import ROOT


def _compose(config, overrides):
    from src.jobs.common import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", ["mfcc", "logmel"])
def test_spectral_record_round_trip(name):
    cfg = _compose("analyze", [f"backbone={name}"])
    bb = instantiate(cfg.backbone)
    rec = record_of(bb, cfg.backbone)
    assert rec["kind"] == "spectral" and rec["fingerprint"] == bb.fingerprint
    assert build_backbone(rec).fingerprint == bb.fingerprint


def test_whisper_hub_local_dir_is_named_after_the_model(tiny_whisper_dir, tmp_path):
    """Item 3: a local Whisper directory under backbone=whisper_hub (or backbone=local) is named after its
    directory, in the backbone, the run directory and hence the cache and results; never `whisper_base_hf`."""
    d = tmp_path / "whisper-tiny.en-local"
    shutil.copytree(tiny_whisper_dir, d)
    for choice in ("whisper_hub", "local"):
        cfg = _compose("train", [f"backbone={choice}", f"backbone.model_id={d}"])
        bb = instantiate(cfg.backbone)
        assert type(bb).__name__ == "WhisperBackbone" and bb.name == "whisper-tiny.en-local"
        assert "_whisper-tiny.en-local_" in cfg.hydra.run.dir and "whisper_base_hf" not in cfg.hydra.run.dir
        rec = record_of(bb, cfg.backbone)
        assert rec["kind"] in ("whisper", "auto") and build_backbone(rec).fingerprint == bb.fingerprint
    from src.backbones.spec import auto_backbone

    with pytest.raises(Exception, match="normalize does not apply"):
        auto_backbone(str(d), normalize=True)


def test_local_dispatches_wav2vec2_family(tiny_w2v2_dir):
    cfg = _compose("train", ["backbone=local", f"backbone.model_id={tiny_w2v2_dir}"])
    bb = instantiate(cfg.backbone)
    assert type(bb).__name__ == "HFBackbone" and bb.name == tiny_w2v2_dir.name


def test_record_refuses_non_project_targets_and_odd_values():
    with pytest.raises(BackboneRecordError, match="refused, not run"):
        record_from_config({"_target_": "os.system", "command": "true"})
    with pytest.raises(BackboneRecordError, match="unknown backbone kind"):
        read_record({"kind": "os.system", "args": {}}, "f.pt")
    with pytest.raises(BackboneRecordError, match="only str, int, float, bool, null"):
        read_record({"kind": "hf", "args": {"model_id": ["a"]}}, "f.pt")
    with pytest.raises(BackboneRecordError, match="non-finite"):
        read_record({"kind": "spectral", "args": {"top_db": float("nan")}}, "f.pt")
    rec = read_record({"kind": "hf", "args": {"model_id": "m", "trust_remote_code": True}}, "f.pt")
    assert "trust_remote_code" not in rec["args"]  # never from a file
    with pytest.raises(BackboneRecordError, match="never read from a file"):
        build_backbone({"kind": "multihead", "args": {"model_id": "m", "trust_remote_code": True}})
