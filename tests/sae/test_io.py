"""Saved SAEs: round trip (every tensor and the metadata), standardisation folded into the SAELens file
and unfolded on load, atomic writes, and clear errors for truncated / altered / missing files and for an
SAE whose width or layer does not match a backbone."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from src.sae import SAEFileError, SAEMismatchError, check_backbone, load_sae, save_sae
from src.sae.io import CFG_FILE, META_FILE, WEIGHTS_FILE
from tests.sae.helpers import make


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_round_trip(tmp_path, arch):
    s = make(arch)
    save_sae(s, tmp_path / "sae")
    t = load_sae(tmp_path / "sae")
    assert (t.architecture, t.k, t.d_in, t.d_sae) == (arch, s.k, 8, 24)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(t, name), getattr(s, name), rtol=1e-5, atol=1e-5)
    if arch in ("jumprelu", "batchtopk"):
        torch.testing.assert_close(t.threshold, s.threshold, rtol=1e-6, atol=1e-7)
    for key in ("layer_name", "layer", "backbone", "cache_key", "norm_mean", "norm_std"):
        assert t.meta[key] == s.meta[key]
    x = torch.randn(20, 8) * 2
    torch.testing.assert_close(t.encode(t.normalize(x)), s.encode(s.normalize(x)), rtol=1e-4, atol=1e-4)
    cfg = json.loads((tmp_path / "sae" / CFG_FILE).read_text())
    assert (
        cfg["architecture"]
        == {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}[arch]
    )
    assert cfg["metadata"]["hook_name"] == "2" and cfg["normalize_activations"] == "none"


def test_standardisation_is_folded_into_the_file(tmp_path):
    """The safetensors weights act on raw activations: encode(raw) with them = the SAE on normalize(raw)."""
    from safetensors.torch import load_file

    s = make("relu")
    save_sae(s, tmp_path / "sae")
    w = load_file(str(tmp_path / "sae" / WEIGHTS_FILE))
    x = torch.randn(10, 8) * 3
    raw = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])  # SAELens's standard encode, by hand
    torch.testing.assert_close(raw, s.encode(s.normalize(x)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        raw @ w["W_dec"] + w["b_dec"], s.denormalize(s(s.normalize(x))), rtol=1e-4, atol=1e-4
    )


def test_truncated_or_altered_files_are_refused(tmp_path):
    save_sae(make(), tmp_path / "a")
    wf = tmp_path / "a" / WEIGHTS_FILE
    data = wf.read_bytes()
    wf.write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEFileError, match=rf"{WEIGHTS_FILE}: checksum mismatch .*truncated or altered"):
        load_sae(tmp_path / "a")
    save_sae(make(), tmp_path / "b")
    (tmp_path / "b" / META_FILE).write_text("{not json")
    with pytest.raises(SAEFileError, match=rf"{META_FILE}: unreadable json"):
        load_sae(tmp_path / "b")
    save_sae(make(), tmp_path / "c")
    (tmp_path / "c" / CFG_FILE).unlink()
    with pytest.raises(SAEFileError, match=rf"{CFG_FILE}: missing"):
        load_sae(tmp_path / "c")
    with pytest.raises(SAEFileError, match="no saved SAE here"):
        load_sae(tmp_path / "nothing")


def test_write_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous SAE intact and no folder that reads as complete."""
    save_sae(make(std=False), tmp_path / "sae")
    before = load_sae(tmp_path / "sae").W_dec.clone()

    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_sae(make(), tmp_path / "sae")
    with pytest.raises(OSError, match="disk full"):
        save_sae(make(), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temp folder left behind
    torch.testing.assert_close(load_sae(tmp_path / "sae").W_dec, before)


def test_backbone_mismatch_names_both(tmp_path):
    s = make()
    ok = SimpleNamespace(hidden_size=8, name="tiny", num_layers=4, layer_names=None, fingerprint="fp")
    check_backbone(s, ok)
    save_sae(s, tmp_path / "sae")
    load_sae(tmp_path / "sae", backbone=ok)
    wide = SimpleNamespace(hidden_size=16, name="wide", num_layers=4, layer_names=None)
    with pytest.raises(
        SAEMismatchError, match=r"8-dim activations \(layer '2'\) but backbone 'wide' has hidden size 16"
    ):
        load_sae(tmp_path / "sae", backbone=wide)
    shallow = SimpleNamespace(hidden_size=8, name="shallow", num_layers=2, layer_names=None)
    with pytest.raises(
        SAEMismatchError, match=r"layer '2', which backbone 'shallow' does not have \(its layers: 0, 1\)"
    ):
        check_backbone(s, shallow)
