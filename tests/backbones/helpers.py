"""Helpers shared by the test modules of this folder (imported from here, not from another test module)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

DTYPE_ID = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


NP_DTYPE = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4", "float16": "<f2"}


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"  # CTranslate2 writes the NUL into the counted bytes
    return struct.pack("<H", len(raw)) + raw


def _f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a, dtype="<f4").view("<u4") >> 16).astype("<u2")


def write_ct2(
    path: Path,
    variables: list[tuple[str, np.ndarray, str]],
    version: int = 6,
    spec: str = "WhisperSpec",
    revision: int = 3,
    aliases: list[tuple[str, str]] = (),
) -> Path:
    """model.bin as CTranslate2 writes it: dtype id + byte count from version 4, item size +
    element count before; aliases from version 3; spec from version 2."""
    out = struct.pack("<I", version)
    if version >= 2:
        out += _string(spec) + struct.pack("<I", revision)
    out += struct.pack("<I", len(variables))
    for name, arr, dtype in variables:
        raw = (
            _f32_to_bf16_bits(arr).tobytes()
            if dtype == "bfloat16"
            else np.asarray(arr, NP_DTYPE[dtype]).tobytes()
        )
        arr = np.asarray(arr)
        out += _string(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        if version >= 4:
            out += struct.pack("<BI", DTYPE_ID[dtype], len(raw))
        else:
            item = np.dtype(NP_DTYPE[dtype]).itemsize
            out += struct.pack("<BI", item, len(raw) // item)
        out += raw
    if version >= 3:
        out += struct.pack("<I", len(aliases))
        for alias, target in aliases:
            out += _string(alias) + _string(target)
    path.write_bytes(out)
    return path


def tiny_hf_whisper(seed: int = 0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=300,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        num_mel_bins=80,
        max_source_positions=50,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-trivial layer norms and biases
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_to_ct2_variables(
    model, key_bias_scale: float = 0.3, seed: int = 1
) -> list[tuple[str, np.ndarray, str]]:
    """Literal inverse of the loader: a transformers Whisper as CTranslate2 variables.

    Key biases are filled with random values (CTranslate2 writes zeros): the loader drops
    them, which must not change any output because softmax ignores a per-query shift.
    """
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    c = model.config
    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray, str]] = []

    def add(name, arr):
        out.append((name, np.asarray(arr, np.float32), "float32"))

    def key_bias():
        return key_bias_scale * rng.standard_normal(c.d_model)

    for side, n in (("encoder", c.encoder_layers), ("decoder", c.decoder_layers)):
        for i in range(n):
            t, s = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            a = f"{t}.self_attn"
            add(f"{s}/self_attention/layer_norm/gamma", sd[f"{t}.self_attn_layer_norm.weight"])
            add(f"{s}/self_attention/layer_norm/beta", sd[f"{t}.self_attn_layer_norm.bias"])
            add(
                f"{s}/self_attention/linear_0/weight",
                np.concatenate(
                    [sd[f"{a}.q_proj.weight"], sd[f"{a}.k_proj.weight"], sd[f"{a}.v_proj.weight"]]
                ),
            )
            add(
                f"{s}/self_attention/linear_0/bias",
                np.concatenate([sd[f"{a}.q_proj.bias"], key_bias(), sd[f"{a}.v_proj.bias"]]),
            )
            add(f"{s}/self_attention/linear_1/weight", sd[f"{a}.out_proj.weight"])
            add(f"{s}/self_attention/linear_1/bias", sd[f"{a}.out_proj.bias"])
            if side == "decoder":
                x = f"{t}.encoder_attn"
                add(f"{s}/attention/layer_norm/gamma", sd[f"{t}.encoder_attn_layer_norm.weight"])
                add(f"{s}/attention/layer_norm/beta", sd[f"{t}.encoder_attn_layer_norm.bias"])
                add(f"{s}/attention/linear_0/weight", sd[f"{x}.q_proj.weight"])
                add(f"{s}/attention/linear_0/bias", sd[f"{x}.q_proj.bias"])
                add(
                    f"{s}/attention/linear_1/weight",
                    np.concatenate([sd[f"{x}.k_proj.weight"], sd[f"{x}.v_proj.weight"]]),
                )
                add(f"{s}/attention/linear_1/bias", np.concatenate([key_bias(), sd[f"{x}.v_proj.bias"]]))
                add(f"{s}/attention/linear_2/weight", sd[f"{x}.out_proj.weight"])
                add(f"{s}/attention/linear_2/bias", sd[f"{x}.out_proj.bias"])
            add(f"{s}/ffn/layer_norm/gamma", sd[f"{t}.final_layer_norm.weight"])
            add(f"{s}/ffn/layer_norm/beta", sd[f"{t}.final_layer_norm.bias"])
            add(f"{s}/ffn/linear_0/weight", sd[f"{t}.fc1.weight"])
            add(f"{s}/ffn/linear_0/bias", sd[f"{t}.fc1.bias"])
            add(f"{s}/ffn/linear_1/weight", sd[f"{t}.fc2.weight"])
            add(f"{s}/ffn/linear_1/bias", sd[f"{t}.fc2.bias"])
        add(f"{side}/layer_norm/gamma", sd[f"model.{side}.layer_norm.weight"])
        add(f"{side}/layer_norm/beta", sd[f"model.{side}.layer_norm.bias"])
    for conv in ("conv1", "conv2"):
        add(f"encoder/{conv}/weight", sd[f"model.encoder.{conv}.weight"])
        add(f"encoder/{conv}/bias", sd[f"model.encoder.{conv}.bias"])
    add("encoder/position_encodings/encodings", sd["model.encoder.embed_positions.weight"])
    add("decoder/position_encodings/encodings", sd["model.decoder.embed_positions.weight"])
    add("decoder/embeddings/weight", sd["model.decoder.embed_tokens.weight"])
    out += [
        ("encoder/num_heads", np.int16(c.encoder_attention_heads), "int16"),
        ("decoder/num_heads", np.int16(c.decoder_attention_heads), "int16"),
        ("decoder/activation", np.int8(3), "int8"),
        ("decoder/pre_norm", np.int8(1), "int8"),
        ("decoder/scale_embeddings", np.int8(0), "int8"),
        ("decoder/alibi", np.int8(0), "int8"),
        ("decoder/alignment_layer", np.int16(-1), "int16"),
    ]
    return out


def _write_tiny_tokenizer(d: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer.json with Whisper's special tokens at the end of the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    fill = [f"tok{i}" for i in range(vocab_size - len(alphabet) - len(specials))]
    vocab = {t: i for i, t in enumerate(alphabet + fill)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.save(str(d / "tokenizer.json"))
    (d / "vocabulary.txt").write_text("\n".join(alphabet + fill + specials) + "\n")
