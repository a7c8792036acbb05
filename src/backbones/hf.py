"""Frozen `transformers` speech encoders: wav2vec2, HuBERT, WavLM, data2vec-audio (and Whisper in whisper.py).

A backbone is given a hub id or a local directory (``save_pretrained`` layout).  With
``pretrained: false`` the same architecture is built from its config with random
weights (the standard control, seeded).

Frame convention for the wav2vec2 family: the conv feature encoder (no padding) gives
frame ``i`` the samples ``[stride*i, stride*i + receptive_field)``; it stands for the
centre of that window, so ``frame_offset = receptive_field / 2 / sample_rate`` (12.5 ms
for the standard 400-sample field, stride 320).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.backbones.base import BackboneError, Encoded, SpeechBackbone

W2V_FAMILY = {"wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer", "unispeech", "unispeech-sat"}


def _looks_like_path(model_id: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else (or an existing path) is a directory."""
    return Path(model_id).expanduser().exists() or model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1


def _dir_fingerprint(path: Path) -> str:
    """Size + mtime of weight files in a local model directory (cheap)."""
    h = hashlib.sha256()
    for p in sorted(path.glob("*")):
        if p.suffix in {".bin", ".safetensors", ".json"}:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_hf_config(model_id: str, revision: str | None = None):
    """``AutoConfig`` with errors that say what to do (missing path, unreachable hub)."""
    from transformers import AutoConfig

    if _looks_like_path(model_id) and not Path(model_id).expanduser().exists():
        raise BackboneError(f"model path {model_id!r} does not exist")
    try:
        return AutoConfig.from_pretrained(str(Path(model_id).expanduser()) if Path(model_id).expanduser().exists() else model_id, revision=revision)
    except OSError as e:
        raise BackboneError(
            f"could not load model {model_id!r} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]}). "
            "If the model hub is unreachable (no network here), load the model from a local directory "
            "(backbone.model_id=/path/to/dir, saved with save_pretrained), or use the embedded pretrained "
            "model: backbone=whisper_tiny_en (or whisper_base)."
        ) from e


class HFBackbone(SpeechBackbone):
    """A wav2vec2-family encoder; every hidden state (embedding output + each layer).

    Args:
        model_id: hub id (``facebook/wav2vec2-base``) or local directory.
        pretrained: false builds the architecture with random weights (seeded by ``seed``).
        revision: hub revision (part of the fingerprint).
        attn_implementation: ``sdpa`` (fast) or ``eager`` (needed for attention weights).
        name: short name used in cache paths and results (default: last part of model_id).
    """

    def __init__(
        self,
        model_id: str,
        pretrained: bool = True,
        revision: str | None = None,
        attn_implementation: str = "eager",
        name: str | None = None,
        seed: int = 0,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        model_id = str(model_id)
        self.model_id = model_id
        self.pretrained = bool(pretrained)
        self.revision = revision
        self.seed = seed
        config = load_hf_config(model_id, revision)
        for k, v in (config_overrides or {}).items():
            setattr(config, k, v)
        if config.model_type not in W2V_FAMILY:
            raise BackboneError(
                f"model {model_id!r} has model_type {config.model_type!r}; HFBackbone takes {sorted(W2V_FAMILY)} "
                "(use src.backbones.whisper.WhisperBackbone for Whisper)"
            )
        config._attn_implementation = attn_implementation
        src = str(Path(model_id).expanduser()) if Path(model_id).expanduser().exists() else model_id
        if self.pretrained:
            try:
                model = AutoModel.from_pretrained(src, config=config, revision=revision, attn_implementation=attn_implementation)
            except OSError as e:
                raise BackboneError(f"could not load weights of {model_id!r}: {e}") from e
        else:
            torch.manual_seed(seed)
            model = AutoModel.from_config(config, attn_implementation=attn_implementation)
        model.eval().requires_grad_(False)
        self.model = model
        self.config = model.config
        self.name = (name or model_id.rstrip("/").split("/")[-1]) + ("" if self.pretrained else "-random")
        self.num_layers = self.config.num_hidden_layers + 1
        self.hidden_size = self.config.hidden_size
        self.sample_rate = 16000
        stride = int(np.prod(self.config.conv_stride))
        rf, jump = 1, 1
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            rf += (k - 1) * jump
            jump *= s
        self.receptive_field = rf
        self.stride = stride
        self.frame_rate = self.sample_rate / stride
        self.frame_offset = rf / 2 / self.sample_rate
        # group-norm feature encoders (wav2vec2-base, HuBERT/WavLM base) take no attention
        # mask: zero padding changes their outputs, so they must not be batched with padding.
        self.use_attention_mask = getattr(self.config, "feat_extract_norm", "group") == "layer"
        # data2vec-audio stacks several positional conv layers: after the first, padded frames are no
        # longer zero, so even with an attention mask padding changes the valid frames (measured in
        # tests/backbones/test_hf_backbones.py). Batch it by equal length only.
        self.padding_safe = self.use_attention_mask and self.config.model_type != "data2vec-audio"
        self.do_normalize = self._read_do_normalize(src)
        self._local_fp = _dir_fingerprint(Path(src)) if Path(src).is_dir() else ""

    def _read_do_normalize(self, src: str) -> bool:
        p = Path(src) / "preprocessor_config.json"
        if p.exists():
            return bool(json.loads(p.read_text()).get("do_normalize", True))
        try:
            from transformers import AutoFeatureExtractor

            return bool(getattr(AutoFeatureExtractor.from_pretrained(src, revision=self.revision), "do_normalize", True))
        except Exception:
            return True

    @property
    def config_dict(self) -> dict:
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "pretrained": self.pretrained,
            "seed": None if self.pretrained else self.seed,
            "config": json.loads(self.config.to_json_string(use_diff=False)),
            "local": self._local_fp,
            "normalize": self.do_normalize,
        }

    def num_frames(self, num_samples: int) -> int:
        n = num_samples
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            n = (n - k) // s + 1 if n >= k else 0
        return int(n)

    def layer_modules(self) -> list[torch.nn.Module]:
        return list(self.model.encoder.layers)

    def attention_modules(self) -> list[torch.nn.Module]:
        return [layer.attention for layer in self.model.encoder.layers]

    def _prepare(self, waveforms: list[Tensor]) -> tuple[Tensor, Tensor | None, Tensor]:
        lengths = torch.tensor([w.shape[-1] for w in waveforms])
        batch = torch.zeros(len(waveforms), int(lengths.max()))  # (B, S)
        for i, w in enumerate(waveforms):
            w = w.float()
            if self.do_normalize:  # per-utterance zero mean, unit variance (as the feature extractor does)
                w = (w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7)
            batch[i, : w.shape[-1]] = w
        if not self.padding_safe and len(set(lengths.tolist())) > 1:
            raise BackboneError(
                f"{self.name} has a group-norm feature encoder without attention mask: padding changes its "
                "outputs, so a batch must hold utterances of equal length"
            )
        mask = (torch.arange(batch.shape[1])[None] < lengths[:, None]).long() if self.use_attention_mask else None
        frames = torch.tensor([self.num_frames(int(n)) for n in lengths])
        return batch, mask, frames

    @torch.no_grad()
    def encode(self, waveforms: list[Tensor], output_attentions: bool = False) -> Encoded:
        batch, mask, frames = self._prepare(waveforms)
        out = self.model(batch, attention_mask=mask, output_hidden_states=True, output_attentions=output_attentions)
        hidden = torch.stack(out.hidden_states)  # (L, B, T, D)
        attn = torch.stack(out.attentions) if output_attentions and out.attentions else None  # (L-1, B, H, T, T)
        return Encoded(hidden=hidden, lengths=frames, attentions=attn)


def tiny_w2v2_config(model_type: str = "wav2vec2", norm: str = "group", **kw):
    """A tiny random config of a wav2vec2-family model (tests, quick runs)."""
    from transformers import AutoConfig

    base = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16),
        conv_stride=(5, 4, 4, 4),  # 320 samples: 50 Hz, like the real models
        conv_kernel=(10, 8, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
        vocab_size=12,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )
    base.update(kw)
    return AutoConfig.for_model(model_type, **base)


def save_tiny_model(path: str | Path, model_type: str = "wav2vec2", norm: str = "group", seed: int = 0, **kw) -> Path:
    """Build a tiny random model and save it (plus a feature extractor config) to ``path``."""
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    path = Path(path)
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_w2v2_config(model_type, norm, **kw))
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=norm == "layer").save_pretrained(path)
    return path
