"""No code runs from a file: a classifier checkpoint whose metadata names a payload is refused, with no side effect.

Each payload is first shown to be live (Hydra's ``instantiate`` of it, the old code path, creates the marker
file in a subprocess), so the refusal tests below could fail."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import pytest

from src.analyses.attribution import Attribution
from src.analyses.base import AnalysisContext, AnalysisError, load_classifier
from src.analyses.faithfulness import load_models
from src.probes.utterance import ClassifierError, UtteranceClassifier
from tests.attribution.conftest import make_classifier
from tests.conftest import ROOT


class _Touch:
    """Pickled, it creates ``path`` when unpickled (what a malicious pickle does, harmlessly)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _payloads(tmp_path) -> dict[str, tuple[dict, object]]:
    """name -> (meta["backbone"], marker path the payload would create)."""
    out = {}
    m = tmp_path / "np_marker"
    (tmp_path / "evil.npy").write_bytes(pickle.dumps(_Touch(m)))
    out["numpy_load"] = ({"_target_": "numpy.load", "file": str(tmp_path / "evil.npy"), "allow_pickle": True}, m)
    m = tmp_path / "torch_marker"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Touch(m)))
    out["torch_load"] = ({"_target_": "torch.load", "f": str(tmp_path / "evil.pt"), "weights_only": False}, m)
    m = tmp_path / "hub_marker"
    hub = tmp_path / "hubrepo"
    hub.mkdir()
    (hub / "hubconf.py").write_text(f"open({str(m)!r}, 'w').close()\ndef model():\n    return None\n")
    out["torch_hub_load"] = ({"_target_": "torch.hub.load", "repo_or_dir": str(hub), "model": "model",
                              "source": "local", "trust_repo": True}, m)  # fmt: skip
    m = tmp_path / "open_marker"
    out["builtins_open"] = ({"_target_": "builtins.open", "file": str(m), "mode": "w"}, m)
    m = tmp_path / "remote_marker"
    remote = tmp_path / "remote_model"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                                           "AutoModelForAudioClassification": "configuration_evil.EvilModel"}}))  # fmt: skip
    (remote / "configuration_evil.py").write_text(textwrap.dedent(f"""
        open({str(m)!r}, "w").close()
        from transformers import PretrainedConfig
        class EvilConfig(PretrainedConfig):
            model_type = "evil"
        class EvilModel:
            pass
    """))
    out["remote_code"] = ({"_target_": "src.backbones.remote.multihead_backbone", "model_id": str(remote),
                           "trust_remote_code": True}, m)  # fmt: skip
    return out


NAMES = ["numpy_load", "torch_load", "torch_hub_load", "builtins_open", "remote_code"]


def _checkpoint(bb, tmp_path, backbone_meta):
    path = tmp_path / "classifier.pt"
    make_classifier(bb).save(path, {"backbone": backbone_meta, "splits": {"test": ["c0"]}})
    return path


@pytest.mark.parametrize("name", ["numpy_load", "builtins_open", "torch_load", "torch_hub_load", "remote_code"])
def test_payloads_are_live_under_instantiate(name, tmp_path):
    """The control: the old code path (Hydra instantiate of meta["backbone"]) runs the payload."""
    cfg, marker = _payloads(tmp_path)[name]
    code = f"from hydra.utils import instantiate\ntry:\n    instantiate({cfg!r})\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120, capture_output=True)
    assert marker.exists()


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_payload_refused_without_side_effect(name, w2v_bb, tmp_path):
    cfg, marker = _payloads(tmp_path)[name]
    path = _checkpoint(w2v_bb, tmp_path, cfg)
    with pytest.raises(ClassifierError, match="refused, not run|never read from a file") as e:
        load_classifier(path)
    assert str(path) in str(e.value)
    with pytest.raises(ClassifierError):  # with the run's backbone given, the record is still validated first
        load_classifier(path, backbone=w2v_bb)
    with pytest.raises(AnalysisError, match=str(path)):  # faithfulness / attribution_agreement
        load_models({"trained": path})
    with pytest.raises(AnalysisError, match=str(path)):  # attribution with analysis.checkpoint=<path>
        Attribution(checkpoint=str(path), methods=["saliency"], inputs=["waveform"]).run(AnalysisContext(None, [], seed=0))
    assert not marker.exists()
    # the same payloads as a new-style record
    kind_rec = {"kind": "multihead" if name == "remote_code" else name, "args": {k: v for k, v in cfg.items()
                                                                              if k != "_target_"}}  # fmt: skip
    path2 = _checkpoint(w2v_bb, tmp_path, kind_rec)
    with pytest.raises(ClassifierError):
        load_classifier(path2)
    assert not marker.exists()


def test_nested_payload_in_a_project_target_is_refused(w2v_bb, tmp_path, tiny_w2v2_dir):
    marker = tmp_path / "nested_marker"
    cfg = {"_target_": "src.backbones.hf.HFBackbone",
           "model_id": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}}  # fmt: skip
    with pytest.raises(ClassifierError, match="only str, int, float, bool, null"):
        load_classifier(_checkpoint(w2v_bb, tmp_path, cfg))
    cfg = {"_target_": "src.backbones.hf.HFBackbone", "model_id": str(tiny_w2v2_dir),
           "config_overrides": {"x": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}}}  # fmt: skip
    with pytest.raises(ClassifierError, match="config_overrides.x"):
        load_classifier(_checkpoint(w2v_bb, tmp_path, cfg))
    cfg = {"_target_": "src.backbones.hf.HFBackbone", "model_id": str(tiny_w2v2_dir), "unknown_arg": 1}
    with pytest.raises(ClassifierError, match="takes no argument 'unknown_arg'"):
        load_classifier(_checkpoint(w2v_bb, tmp_path, cfg))
    assert not marker.exists()


def test_a_project_backbone_record_still_loads(w2v_bb, tmp_path, tiny_w2v2_dir):
    """A legitimate old-style record (the Hydra config of a project class) and a new record both rebuild."""
    old = {"_target_": "src.backbones.hf.HFBackbone", "model_id": str(tiny_w2v2_dir)}
    bb, clf, _ = load_classifier(_checkpoint(w2v_bb, tmp_path, old))
    assert bb.fingerprint == w2v_bb.fingerprint
    new = {"kind": "hf", "args": {"model_id": str(tiny_w2v2_dir)}, "name": w2v_bb.name, "fingerprint": w2v_bb.fingerprint}
    bb, clf, _ = load_classifier(_checkpoint(w2v_bb, tmp_path, new), backbone=w2v_bb)
    assert bb is w2v_bb  # the run's backbone serves: no second instance


def test_mismatched_backbone_is_refused_naming_both(w2v_bb, tmp_path, tiny_w2v2_dir):
    """Item 3: a checkpoint trained on another backbone than the configured one is refused, naming both."""
    from src.backbones.hf import HFBackbone

    rec = {"kind": "hf", "args": {"model_id": str(tiny_w2v2_dir)}, "name": w2v_bb.name, "fingerprint": w2v_bb.fingerprint}
    path = _checkpoint(w2v_bb, tmp_path, rec)
    other = HFBackbone(str(tiny_w2v2_dir), pretrained=False, seed=3)
    with pytest.raises(ClassifierError) as e:
        load_classifier(path, backbone=other)
    assert w2v_bb.name in str(e.value) and other.name in str(e.value) and "fingerprint" in str(e.value)
    with pytest.raises(AnalysisError, match="configured with backbone"):
        load_models({"trained": path}, other)


def test_damaged_or_foreign_file_gives_no_unsafe_advice(tmp_path):
    """Item 2: never torch's 'weights_only=False will likely succeed'; say damaged and how to rebuild."""
    import torch

    foreign = tmp_path / "foreign.pt"
    torch.save({"x": _Touch(tmp_path / "m")}, foreign)
    truncated = tmp_path / "trunc.pt"
    UtteranceClassifier({"a": ["x", "y"]}, 4, ["0", "1"], 2, layer=1).save(truncated, {})
    truncated.write_bytes(truncated.read_bytes()[:200])
    for p in (foreign, truncated, tmp_path / "garbage.pt"):
        if not p.exists():
            p.write_bytes(b"\x80\x04garbage")
        with pytest.raises(ClassifierError) as e:
            UtteranceClassifier.load(p)
        msg = str(e.value)
        assert "weights_only" not in msg and "likely succeed" not in msg
        assert "damaged or not a classifier checkpoint of this project" in msg and "python train.py" in msg
    assert not (tmp_path / "m").exists()
