"""Whisper's encoder as a frozen backbone.

The encoder is fed its fixed window (30 s for real checkpoints: ``2 * max_source_positions``
mel frames); the output frames are trimmed to the real audio.  Frame convention
(measured by the gradient of each frame w.r.t. the waveform): the mel STFT is centred
and conv2 has stride 2 and padding 1, so encoder frame ``i`` is centred at
``2 * hop * i`` samples, i.e. ``0.02 * i`` s: ``frame_offset = 0``.  An utterance of
``n`` samples keeps the frames whose centre lies inside the audio: ``ceil(n / 320)``.

``model_id`` may be ``embedded:tiny.en`` / ``embedded:base`` (CTranslate2 files shipped
in PyPI wheels, see ct2_whisper.py), a directory of CTranslate2 files (``model.bin``), a
local ``save_pretrained`` directory or a hub id (``openai/whisper-base``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.backbones.base import BackboneError, Encoded, SpeechBackbone, record_outputs
from src.backbones.hf import _dir_fingerprint, load_hf_config, load_hf_weights, resolve_attn_implementation


def _load(model_id: str, pretrained: bool, seed: int, attn_implementation: str):
    """(WhisperForConditionalGeneration, WhisperFeatureExtractor, fingerprint extras)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    extras: dict = {}
    if model_id.startswith("embedded:") or (Path(model_id).expanduser() / "model.bin").exists():
        from src.backbones.ct2_whisper import embedded_whisper_dir, load_ct2_whisper

        if model_id.startswith("embedded:"):
            d = embedded_whisper_dir(model_id.split(":", 1)[1])
        else:
            d = Path(model_id).expanduser()
        model, processor = load_ct2_whisper(d)
        fe = processor.feature_extractor
        extras["ct2"] = str(model_id) if model_id.startswith("embedded:") else _dir_fingerprint(d)
        if not pretrained:
            torch.manual_seed(seed)
            model = WhisperForConditionalGeneration(model.config)
    else:
        config = load_hf_config(model_id)
        if config.model_type != "whisper":
            raise BackboneError(f"model {model_id!r} is a {config.model_type!r} model, not Whisper")
        src = str(Path(model_id).expanduser()) if Path(model_id).expanduser().exists() else model_id
        attn_implementation = resolve_attn_implementation(config, attn_implementation)
        if pretrained:
            model = load_hf_weights(WhisperForConditionalGeneration, model_id, required_prefix="model.encoder.",
                                    attn_implementation=attn_implementation)
        else:
            torch.manual_seed(seed)
            model = WhisperForConditionalGeneration(config)
        try:
            fe = WhisperFeatureExtractor.from_pretrained(src)
        except (OSError, ValueError) as e:  # no (readable) preprocessor_config.json: the default for this window
            if Path(src).is_dir() and (Path(src) / "preprocessor_config.json").exists():
                import warnings

                warnings.warn(f"{Path(src) / 'preprocessor_config.json'} could not be read ({e.__class__.__name__}); "
                              "using Whisper's default log-mel feature extractor", stacklevel=3)  # fmt: skip
            window = 2 * config.max_source_positions * 160 // 16000
            fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=window)
        if Path(src).is_dir():
            extras["local"] = _dir_fingerprint(Path(src))
    model.set_attn_implementation(resolve_attn_implementation(model.config, attn_implementation))
    model.eval().requires_grad_(False)
    return model, fe, extras


class WhisperBackbone(SpeechBackbone):
    """Whisper encoder states, trimmed to the audio: the residual stream (input to layer 1 = conv
    stem + positions, then each layer's raw output), then ``final_norm`` = ``encoder.layer_norm``
    of the last layer's output (the encoder's output, what the decoder cross-attends to).

    transformers returns the last state *after* that LayerNorm and all others before it; here the
    raw last-layer output is taken with a forward hook on the last encoder layer (removed on exit
    and on error), so state N is comparable with states 1..N-1 and with other models.
    """

    def __init__(
        self,
        model_id: str = "embedded:tiny.en",
        pretrained: bool = True,
        name: str | None = None,
        seed: int = 0,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        self.model_id = model_id
        self.pretrained = bool(pretrained)
        self.seed = seed
        self.model, self.feature_extractor, self._extras = _load(model_id, self.pretrained, seed, attn_implementation)
        self.config = self.model.config
        self.encoder = self.model.model.encoder
        self.name = (name or model_id.split(":")[-1].rstrip("/").split("/")[-1]) + ("" if self.pretrained else "-random")
        self.num_layers = self.config.encoder_layers + 1
        self.hidden_size = self.config.d_model
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.hop = int(self.feature_extractor.hop_length) * 2  # conv2 stride 2
        self.frame_rate = self.sample_rate / self.hop
        self.frame_offset = 0.0
        self.window_samples = int(self.feature_extractor.n_samples)
        self.padding_safe = True  # every item is padded to the fixed window anyway

    @property
    def config_dict(self) -> dict:
        return {
            "model_id": self.model_id,
            "pretrained": self.pretrained,
            "seed": None if self.pretrained else self.seed,
            "config": json.loads(self.config.to_json_string(use_diff=False)),
            **self._extras,
        }

    def num_frames(self, num_samples: int) -> int:
        return min(int(math.ceil(num_samples / self.hop)), self.config.max_source_positions)

    def check_input(self, num_samples: int, utt_id: str = "?") -> None:
        super().check_input(num_samples, utt_id)
        n = int(num_samples)
        if n > self.window_samples:
            raise BackboneError(
                f"utterance {utt_id!r}: {n / self.sample_rate:.2f} s is longer than Whisper's "
                f"{self.window_samples / self.sample_rate:.0f} s window; split it first"
            )

    norm_layout = "pre_ln"  # pre-LN layers, encoder.layer_norm after the last one

    @property
    def layer_names(self) -> list[str]:
        return [str(i) for i in range(self.num_layers)] + ["final_norm"]

    def final_norm_module(self) -> torch.nn.Module:
        """``encoder.layer_norm``, applied after the last encoder layer (state ``final_norm``)."""
        return self.encoder.layer_norm

    def layer_modules(self) -> list[torch.nn.Module]:
        return list(self.encoder.layers)

    def attention_modules(self) -> list[torch.nn.Module]:
        return [layer.self_attn for layer in self.encoder.layers]

    def features(self, waveforms: list[Tensor]) -> Tensor:
        """Log-mel input of the fixed window: (B, n_mels, 2 * max_source_positions)."""
        audio = [np.asarray(w, dtype=np.float32) for w in waveforms]
        feats = self.feature_extractor(audio, sampling_rate=self.sample_rate, return_tensors="pt")
        return feats["input_features"]  # (B, M, F)

    @torch.no_grad()
    def encode(self, waveforms: list[Tensor], output_attentions: bool = False) -> Encoded:
        for w in waveforms:
            self.check_input(w.shape[-1])
        feats = self.features(waveforms)
        with record_outputs([self.encoder.layers[-1]]) as last:
            out = self.encoder(feats, output_hidden_states=True, output_attentions=output_attentions)
        states = list(out.hidden_states)  # transformers: the last one is after encoder.layer_norm
        if len(states) != self.num_layers or last[0] is None:
            raise BackboneError(f"{self.name}: the encoder returned {len(states)} hidden states, expected {self.num_layers}")
        states[-1] = last[0]  # raw output of the last layer (residual stream)
        states.append(self.encoder.layer_norm(last[0]))  # final_norm
        hidden = torch.stack(states)  # (S, B, 1500, D)
        lengths = torch.tensor([self.num_frames(int(w.shape[-1])) for w in waveforms])
        hidden = hidden[:, :, : int(lengths.max())]  # (S, B, T, D): trim to the longest real audio
        attn = None
        if output_attentions and out.attentions:
            t = int(lengths.max())
            attn = torch.stack(out.attentions)[..., :t, :t]  # (L-1, B, H, T, T)
        return Encoded(hidden=hidden, lengths=lengths, attentions=attn)


def tiny_whisper(path: str | Path | None = None, seed: int = 0, max_source_positions: int = 100, **kw):
    """A tiny random Whisper (2 s window) for tests; saved with its feature extractor when ``path``."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    cfg = dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=max_source_positions,
        max_target_positions=32,
        vocab_size=64,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=2,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    cfg.update(kw)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**cfg))
    fe = WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"], chunk_length=2 * max_source_positions * 160 // 16000)
    if path is not None:
        model.save_pretrained(path)
        fe.save_pretrained(path)
    return model, fe
