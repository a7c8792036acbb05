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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.backbones.base import BackboneError, Encoded, SpeechBackbone, record_model_load
from src.backbones.hf import (
    _dir_fingerprint,
    check_attn_choice,
    check_local_weights,
    load_hf_config,
    load_hf_weights,
    resolve_attn_implementation,
)
from src.backbones.hooks import first_output, record_outputs


def _is_ct2(model_id: str) -> bool:
    return model_id.startswith("embedded:") or (Path(model_id).expanduser() / "model.bin").exists()


def _hf_feature_extractor(src: str, config):
    """``WhisperFeatureExtractor.from_pretrained(src)``, or Whisper's default log-mel for the model's window when
    the directory has no (readable) ``preprocessor_config.json`` (a warning when it has an unreadable one)."""
    from transformers import WhisperFeatureExtractor

    try:
        return WhisperFeatureExtractor.from_pretrained(src)
    except (OSError, ValueError) as e:  # no (readable) preprocessor_config.json: the default for this window
        if Path(src).is_dir() and (Path(src) / "preprocessor_config.json").exists():
            import warnings

            warnings.warn(f"{Path(src) / 'preprocessor_config.json'} could not be read ({e.__class__.__name__}); "
                          "using Whisper's default log-mel feature extractor", stacklevel=4)  # fmt: skip
        window = 2 * config.max_source_positions * 160 // 16000
        return WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=window)


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _checkpoint_files(src: str, revision: str | None = None) -> list[Path]:
    """The weight file(s) of a transformers checkpoint (local directory or hub id, via transformers' own cache
    lookup ``cached_file``): the first of ``_WEIGHT_FILES`` that exists, shards resolved from the index."""
    from transformers.utils import cached_file

    for name in _WEIGHT_FILES:
        try:
            got = cached_file(src, name, revision=revision, _raise_exceptions_for_missing_entries=False)
        except Exception as e:  # hub errors: a BackboneError with what to do
            from src.backbones.hf import _hub_error

            raise _hub_error(src, e) from e
        if got is None:
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(Path(got).read_text())["weight_map"].values()))
            return [Path(cached_file(src, sh, revision=revision)) for sh in shards]
        return [Path(got)]
    where = f"model directory {src!r}" if Path(src).is_dir() else f"model {src!r}"
    raise BackboneError(f"{where} has no weight file ({', '.join(_WEIGHT_FILES)}); re-save it with save_pretrained")


def _read_encoder_state(files: list[Path]) -> tuple[dict[str, Tensor], str]:
    """The encoder's tensors of a Whisper checkpoint, keys relative to ``WhisperEncoder`` (``conv1.weight``...):
    checkpoints of ``WhisperForConditionalGeneration`` prefix them ``model.encoder.``, of ``WhisperModel``
    ``encoder.``. Only those tensors are read (safetensors: by name; ``.bin``: memory-mapped torch.load).
    Returns ``(state, prefix)``; ``({}, "")`` when there are none."""
    prefixes = ("model.encoder.", "encoder.")
    out: dict[str, Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    p = next((p for p in prefixes if k.startswith(p)), None)
                    if p is not None:
                        out.setdefault(p + "|" + k[len(p) :], st.get_tensor(k))
        else:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            for k, v in sd.items():
                p = next((p for p in prefixes if k.startswith(p)), None)
                if p is not None:
                    out.setdefault(p + "|" + k[len(p) :], v.clone())
    for p in prefixes:  # one prefix only: the first that has keys
        mine = {k.split("|", 1)[1]: v for k, v in out.items() if k.startswith(p + "|")}
        if mine:
            return mine, p
    return {}, ""


def whisper_log_mel(waveform: Tensor, feature_extractor, n_samples: int | None = None) -> Tensor:
    """Differentiable ``WhisperFeatureExtractor`` (torch path, float32): ``(B, N)`` waveforms -> ``(B, M, F)``.

    Zero-pads (or truncates) to ``n_samples`` (default the extractor's window), then the extractor's steps
    (``_torch_extract_fbank_features``): ``stft(n_fft, hop, hann, center=True, reflect)``, drop the last frame,
    ``|.|^2``, mel filters, ``log10(clamp(., 1e-10))``, per item ``max(x, x.max() - 8)``, ``(x + 4) / 4``.
    Written here because the extractor works in numpy without gradients (within 1e-5 of it:
    tests/attribution/test_inputs.py).
    """
    fe = feature_extractor
    if float(getattr(fe, "dither", 0.0) or 0.0) != 0.0:
        raise BackboneError(f"WhisperFeatureExtractor.dither={fe.dither}: the log-mel is random; set it to 0")
    n = int(n_samples or fe.n_samples)
    w = waveform.to(torch.float32)
    if w.shape[-1] < n:
        w = torch.nn.functional.pad(w, (0, n - w.shape[-1]))  # (B, n): the extractor's zero padding
    w = w[..., :n]
    window = torch.hann_window(fe.n_fft, device=w.device)
    stft = torch.stft(w, fe.n_fft, fe.hop_length, window=window, return_complex=True)  # (B, n_fft/2+1, F+1)
    power = stft[..., :-1].abs() ** 2  # (B, n_freq, F)
    mel = torch.as_tensor(np.asarray(fe.mel_filters), dtype=torch.float32, device=w.device).T @ power  # (B, M, F)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    top = log_spec.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    log_spec = torch.maximum(log_spec, top - 8.0)
    return (log_spec + 4.0) / 4.0


class WhisperBackbone(SpeechBackbone):
    """Whisper encoder states, trimmed to the audio: the residual stream (input to layer 1 = conv
    stem + positions, then each layer's raw output), then ``final_norm`` = ``encoder.layer_norm``
    of the last layer's output (the encoder's output, what the decoder cross-attends to).

    transformers returns the last state *after* that LayerNorm and all others before it; here the
    raw last-layer output is taken with a forward hook on the last encoder layer (removed on exit
    and on error), so state N is comparable with states 1..N-1 and with other models.
    """

    _lazy_attrs = ("model", "encoder")
    family = "whisper"
    model_type = "whisper"
    has_decoder = True  # decoder_layer_modules(), output_head(), generation (the full model loads on first use)
    has_frontend = True  # differentiable_features (log-mel) -> frontend (conv stem + positions) -> states
    pads_to_window = True  # every input is padded to the fixed window

    def __init__(
        self,
        model_id: str = "embedded:tiny.en",
        pretrained: bool = True,
        name: str | None = None,
        seed: int = 0,
        attn_implementation: str = "sdpa",
    ) -> None:
        """Reads the config and the feature extractor only (CTranslate2: ``model.bin`` memory-mapped for its
        shapes; transformers: ``config.json`` and ``preprocessor_config.json``). The encoder loads alone on first
        use of ``encoder`` / ``encode``; the full model (decoder too) on first use of ``model`` or the decoder
        surface, taking over the encoder already loaded (the same module)."""
        super().__init__()
        model_id = str(model_id)
        self.model_id = model_id
        self.pretrained = bool(pretrained)
        self.seed = seed
        self._extras: dict = {}
        self._ct2: tuple | None = None  # (dir, variables (memory-mapped), ct2 config, vocab)
        # decoder positions the greedy loop has run (rows x positions fed, summed over steps): a work count analyses
        # report (results.json ``decoder_positions``) and bench/commands.py prices as its decoding floor
        self.decoded_positions = 0
        if _is_ct2(model_id):
            from src.backbones.ct2_whisper import (
                EMBEDDED_SHA256,
                ct2_feature_extractor,
                embedded_whisper_dir,
                read_ct2_dir,
            )

            if model_id.startswith("embedded:"):
                d = embedded_whisper_dir(model_id.split(":", 1)[1])  # checks model.bin against its pinned sha256
                self._extras["ct2"] = model_id
                self._extras["ct2_sha256"] = EMBEDDED_SHA256[model_id.split(":", 1)[1]]
            else:
                d = Path(model_id).expanduser()
                self._extras["ct2"] = _dir_fingerprint(d)
            variables, config, ct2_config, vocab = read_ct2_dir(d)
            self._ct2 = (d, variables, ct2_config, vocab)
            self.feature_extractor = ct2_feature_extractor(d, config)
            self._src = str(d)
        else:
            config = load_hf_config(model_id)
            if config.model_type != "whisper":
                raise BackboneError(f"model {model_id!r} is a {config.model_type!r} model, not Whisper")
            src = str(Path(model_id).expanduser()) if Path(model_id).expanduser().exists() else model_id
            if self.pretrained:
                check_local_weights(model_id)
            self.feature_extractor = _hf_feature_extractor(src, config)
            if Path(src).is_dir():
                self._extras["local"] = _dir_fingerprint(Path(src))
            self._src = src
        # the choice is checked now; whether the model class supports it only when a model is built (that check
        # imports transformers' Whisper modelling code, seconds an analysis over an existing cache never needs)
        self._attn_requested = check_attn_choice(attn_implementation)
        self._attn_resolved: str | None = None
        self.config = config
        # the fingerprint's config part, frozen now: building the model may add keys to the live config
        self._config_json = json.loads(config.to_json_string(use_diff=False))
        self.name = (name or model_id.split(":")[-1].rstrip("/").split("/")[-1]) + ("" if self.pretrained else "-random")
        self.num_layers = self.config.encoder_layers + 1
        self.hidden_size = self.config.d_model
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.feature_hop = int(self.feature_extractor.hop_length)  # samples per log-mel frame
        self.hop = int(self.feature_extractor.hop_length) * 2  # conv2 stride 2
        self.frame_rate = self.sample_rate / self.hop
        self.frame_offset = 0.0
        self.window_samples = int(self.feature_extractor.n_samples)
        self.padding_safe = True  # every item is padded to the fixed window anyway

    @property
    def attn_implementation(self) -> str:
        """The attention implementation models are built with: the requested one where Whisper's model class
        supports it, else eager (with a warning); resolved on first use."""
        if self._attn_resolved is None:
            self._attn_resolved = resolve_attn_implementation(self.config, self._attn_requested)
        return self._attn_resolved

    @attn_implementation.setter
    def attn_implementation(self, value: str) -> None:
        self._attn_resolved = str(value)

    # ------------------------------------------------------------------ lazy weights

    @property
    def encoder_loaded(self) -> bool:
        return "encoder" in self._modules

    @property
    def model_loaded(self) -> bool:
        """True once the full model (decoder too) is built."""
        return "model" in self._modules

    def _materialise(self, attr: str) -> None:
        if attr == "encoder" and self.pretrained:
            self.encoder = self._placed(self._load_encoder())
            record_model_load(self.name, "encoder")
            return
        model = self._build_full(self.__dict__["_modules"].get("encoder"))
        self.model = self._placed(model)
        self.encoder = self.model.model.encoder

    def _load_encoder(self):
        """Only ``WhisperEncoder`` with the checkpoint's encoder weights (the decoder is not read)."""
        if self._ct2 is not None:
            from src.backbones.ct2_whisper import build_whisper_encoder_from_ct2

            _, variables, _, _ = self._ct2
            encoder = build_whisper_encoder_from_ct2(variables, self.config)
        else:
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            files = _checkpoint_files(self._src)
            state, prefix = _read_encoder_state(files)
            where = f"model directory {self._src!r}" if Path(self._src).is_dir() else f"model {self.model_id!r}"
            if not state:
                raise BackboneError(f"{where}: {', '.join(f.name for f in files)} has no encoder weights "
                                    "(model.encoder.* or encoder.*): is it a Whisper checkpoint?")  # fmt: skip
            auto = getattr(self.config, "dtype", None)
            auto = getattr(torch, auto) if isinstance(auto, str) and hasattr(torch, auto) else auto
            if isinstance(auto, torch.dtype):  # from_pretrained's dtype="auto": the config's dtype
                state = {k: v.to(auto) if v.is_floating_point() else v for k, v in state.items()}
            with torch.device("meta"):
                encoder = WhisperEncoder(self.config)
            res = encoder.load_state_dict(state, strict=False, assign=True)
            missing = sorted(prefix + k for k in res.missing_keys)  # named as in the checkpoint
            if missing or any(t.is_meta for t in [*encoder.parameters(), *encoder.buffers()]):
                raise BackboneError(f"{where}: the checkpoint ({', '.join(f.name for f in files)}) lacks "
                                    f"{len(missing)} weights the encoder needs (e.g. {', '.join(missing[:3])}); "
                                    "re-save it with save_pretrained")  # fmt: skip
            if res.unexpected_keys:
                raise BackboneError(f"{where}: encoder weights {res.unexpected_keys[:3]} do not belong to a "
                                    "WhisperEncoder of this config.json")  # fmt: skip
        encoder.set_attn_implementation(self.attn_implementation)
        return encoder.eval().requires_grad_(False)

    def _build_full(self, encoder):
        """``WhisperForConditionalGeneration``: pretrained weights (taking over ``encoder`` when it is loaded
        already, so module references stay valid) or seeded random weights (``pretrained: false``)."""
        from transformers import WhisperForConditionalGeneration

        if not self.pretrained:
            with torch.random.fork_rng(devices=[]):  # the same weights as manual_seed(seed) + the constructor,
                torch.manual_seed(self.seed)  # without reseeding the caller's generator at first use
                model = WhisperForConditionalGeneration(self.config)
            record_model_load(self.name, "random")
        elif self._ct2 is not None:
            from src.backbones.ct2_whisper import build_whisper_from_ct2

            _, variables, ct2_config, vocab = self._ct2
            model = build_whisper_from_ct2(variables, ct2_config, vocab, config=self.config, encoder=encoder)
            record_model_load(self.name, "full")
        else:
            model = load_hf_weights(WhisperForConditionalGeneration, self.model_id, required_prefix="model.encoder.",
                                    config=self.config, attn_implementation=self.attn_implementation)  # fmt: skip
            record_model_load(self.name, "full")
            if encoder is not None:
                loaded = model.model.encoder.state_dict()
                for k, v in encoder.state_dict().items():
                    if not torch.equal(loaded[k].to(v.device), v):
                        raise BackboneError(f"{self.model_id!r}: encoder weight {k} of the full model differs from "
                                            "the encoder loaded before; the checkpoint changed on disk")  # fmt: skip
                model.model.encoder = encoder
        model.set_attn_implementation(self.attn_implementation)
        return model.eval().requires_grad_(False)

    @property
    def config_dict(self) -> dict:
        return {
            "model_id": self.model_id,
            "pretrained": self.pretrained,
            "seed": None if self.pretrained else self.seed,
            "config": self._config_json,
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

    def mlp_modules(self) -> list[torch.nn.Module]:
        """Each encoder layer's ``fc2``: its output is the MLP output (before the residual add)."""
        return [layer.fc2 for layer in self.encoder.layers]

    def features(self, waveforms: list[Tensor]) -> Tensor:
        """Log-mel input of the fixed window: (B, n_mels, 2 * max_source_positions)."""
        audio = [np.asarray(w.detach().cpu() if isinstance(w, Tensor) else w, dtype=np.float32) for w in waveforms]
        feats = self.feature_extractor(audio, sampling_rate=self.sample_rate, return_tensors="pt")
        return feats["input_features"]  # (B, M, F)

    # ------------------------------------------------------------------ live encoder and front end

    def encoder_run(self, waveform: Tensor, utt_id: str = "?"):
        """``(run, T)``: one forward of the encoder on the log-mel of ``waveform`` (:meth:`features`, in the model's
        dtype and device) over the whole window; ``T = max_source_positions``. Longer than the window or empty:
        BackboneError naming ``utt_id``."""
        w = torch.as_tensor(waveform).reshape(-1)
        n = int(w.shape[-1])
        p = next(self.model.parameters())
        if n > self.window_samples:
            raise BackboneError(
                f"utterance {utt_id!r}: {n / self.sample_rate:.2f} s is longer than Whisper's "
                f"{self.window_samples / self.sample_rate:.0f} s window; split it first"
            )
        if n < 1:
            raise BackboneError(f"utterance {utt_id!r}: empty audio")
        feats = self.features([w]).to(device=p.device, dtype=p.dtype)  # (1, M, 2F)
        enc = self.encoder
        return (lambda: enc(feats)), int(self.config.max_source_positions)

    def differentiable_features(self, waveforms: Tensor) -> Tensor:
        """:func:`whisper_log_mel` of waveforms ``(B, N)``: the log-mel ``(B, M, F)`` of the whole window."""
        return whisper_log_mel(waveforms, self.feature_extractor)

    def frontend(self, features: Tensor) -> Tensor:
        """State 0 from log-mel ``(B, M, F)``: ``gelu(conv2(gelu(conv1(mel))))`` + sinusoidal positions, ``(B, F/2, D)``."""
        enc = self.encoder
        h = torch.nn.functional.gelu(enc.conv1(features))
        h = torch.nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)  # (B, F, D)
        return h + enc.embed_positions.weight[: h.shape[1]]

    def states_from_frontend(self, h: Tensor) -> list[Tensor]:
        """The encoder layers run one by one on state 0 ``h`` (``layer(h, None)``, exactly what the encoder does),
        then ``final_norm``: every state of :attr:`layer_names` over the window."""
        states = [h]
        for layer in self.encoder.layers:
            h = first_output(layer(h, None))
            states.append(h)
        states.append(self.encoder.layer_norm(h))  # final_norm
        return states

    @torch.no_grad()
    def encode(self, waveforms: list[Tensor], output_attentions: bool = False) -> Encoded:
        for w in waveforms:
            self.check_input(w.shape[-1])
        feats = self.features(waveforms).to(self._device_anchor.device)  # the device the backbone was moved to
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

    # ------------------------------------------------------------------ decoder surface (lenses)
    # Added for the decoder lens and the decoder logit lens (src/analyses/decoder_lens.py,
    # logit_lens.py): the decoder, its final norm and head, the generation prompt, and greedy
    # decoding from given encoder states. Nothing above depends on these.

    def decoder_layer_modules(self) -> list[torch.nn.Module]:
        """The decoder's transformer layers (decoder state ``k`` is the output of layer ``k - 1`` of this list)."""
        return list(self.model.model.decoder.layers)

    def decoder_attention_modules(self) -> list[torch.nn.Module]:
        """Each decoder layer's self-attention (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``)."""
        return [layer.self_attn for layer in self.decoder_layer_modules()]

    def cross_attention_modules(self) -> list[torch.nn.Module]:
        """Each decoder layer's cross-attention to the encoder output (``encoder_attn``)."""
        return [layer.encoder_attn for layer in self.decoder_layer_modules()]

    def decoder_final_norm_module(self) -> torch.nn.Module:
        """``decoder.layer_norm``: applied once after the last decoder layer, before ``proj_out``."""
        return self.model.model.decoder.layer_norm

    def output_head(self) -> torch.nn.Module:
        """``proj_out``: decoder states (after ``decoder.layer_norm``) -> vocabulary logits (tied to the embeddings)."""
        return self.model.proj_out

    def decoder_mlp_modules(self) -> list[torch.nn.Module]:
        """Each decoder layer's ``fc2``: its output is the decoder layer's MLP output (before the residual add)."""
        return [layer.fc2 for layer in self.decoder_layer_modules()]

    def decoder_logits(self, input_ids: Tensor, encoder_states: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, N, V)`` of decoder ``input_ids`` ``(B, N)`` cross-attending to the encoder
        output ``encoder_states`` ``(B, F, D)`` (already through ``encoder.layer_norm``): the full model's forward
        from the encoder output, ``use_cache=False`` (as :meth:`teacher_forced`); differentiable."""
        from transformers.modeling_outputs import BaseModelOutput

        return self.model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states), decoder_input_ids=input_ids,
                          use_cache=False, return_dict=True).logits  # fmt: skip

    @property
    def is_multilingual(self) -> bool:
        """True for multilingual checkpoints (a language and a task token in the prompt)."""
        return bool(getattr(self.model.generation_config, "is_multilingual", False))

    @property
    def eos_token_id(self) -> int:
        """``<|endoftext|>`` (the first one where the generation config lists several)."""
        eos = self.model.generation_config.eos_token_id
        return int(eos if isinstance(eos, int) else list(eos)[0])

    def decoder_output(self, input_ids: Tensor, encoder_states: Tensor) -> Tensor:
        """The decoder's output ``(B, T, d)`` (after ``decoder.layer_norm``: what :meth:`output_head` reads) for
        teacher-forced ``input_ids`` ``(B, T)`` cross-attending to ``encoder_states`` ``(B, F, d)``; differentiable."""
        return self.model.model.decoder(input_ids=input_ids, encoder_hidden_states=encoder_states).last_hidden_state

    @torch.no_grad()
    def decoder_states(self, encoder_states: Tensor, input_ids: Tensor) -> list[Tensor]:
        """Decoder states 0..D (the raw residual stream: state 0 = token + position embeddings, state k = the raw
        output of decoder layer k) for teacher-forced ``input_ids`` ``(B, T)`` cross-attending to
        ``encoder_states`` ``(B, F, d)``: ``D + 1`` tensors ``(B, T, d)``. transformers' last hidden state is after
        ``decoder.layer_norm``; the raw one is taken with a hook on the last layer (removed on exit and on error)."""
        layers = self.decoder_layer_modules()
        with record_outputs([layers[-1]]) as last:
            out = self.model.model.decoder(input_ids=input_ids, encoder_hidden_states=encoder_states,
                                           output_hidden_states=True, use_cache=False)  # fmt: skip
        hs = list(out.hidden_states)  # transformers: the last one is after decoder.layer_norm
        if len(hs) != len(layers) + 1 or last[0] is None:
            raise BackboneError(f"{self.name}: the decoder returned {len(hs)} hidden states, expected {len(layers) + 1}")
        hs[-1] = last[0]  # raw output of the last decoder layer
        return hs

    def teacher_forced(self, features: Tensor, input_ids: Tensor, output_attentions: bool = False):
        """One teacher-forced forward: the encoder alone on log-mel ``features`` ``(B, M, 2F)`` (without attention
        weights: its T x T maps are large and not needed), then the full model on decoder ``input_ids`` ``(B, N)``
        cross-attending to its output, ``use_cache=False``. Returns transformers' ``Seq2SeqLMOutput`` (``logits``,
        ``decoder_attentions`` / ``cross_attentions`` with ``output_attentions``, ``encoder_last_hidden_state``)."""
        enc = self.model.model.encoder(features, return_dict=True)
        return self.model(encoder_outputs=enc, decoder_input_ids=input_ids, use_cache=False,
                          output_attentions=output_attentions, return_dict=True)  # fmt: skip

    @torch.no_grad()
    def window_states(self, waveforms: list[Tensor], utt_ids: list[str] | None = None) -> Tensor:
        """Every state of ``layer_names`` over the *whole* window, untrimmed: ``(S, B, F, D)`` with
        ``F = max_source_positions`` (1500 for real checkpoints) -- what the decoder cross-attends to.

        Same convention as :meth:`encode` (residual states raw, the last ``final_norm`` = the encoder's
        output); audio longer than the window is an error naming the utterance."""
        ids = list(utt_ids) if utt_ids is not None else [str(i) for i in range(len(waveforms))]
        for w, u in zip(waveforms, ids):
            self.check_input(int(w.shape[-1]), u)
        dtype = next(self.encoder.parameters()).dtype  # a float64 model gets float64 features (as make_inputs does)
        feats = self.features(waveforms).to(device=self._device_anchor.device, dtype=dtype)  # (B, M, 2F)
        with record_outputs([self.encoder.layers[-1]]) as last:
            out = self.encoder(feats, output_hidden_states=True)
        states = list(out.hidden_states)  # transformers: the last one is after encoder.layer_norm
        if len(states) != self.num_layers or last[0] is None:
            raise BackboneError(f"{self.name}: the encoder returned {len(states)} hidden states, expected {self.num_layers}")
        states[-1] = last[0]  # raw output of the last layer
        states.append(out.last_hidden_state)  # final_norm = encoder.layer_norm(last layer output), as transformers computed it
        return torch.stack(states)  # (S, B, F, D)

    def lens_encoder_states(self, states: Tensor, layer: int) -> Tensor:
        """What the decoder reads in the decoder lens at state ``layer`` of ``window_states`` output ``(S, B, F, D)``:
        the residual states through ``encoder.layer_norm``; the ``final_norm`` state (already normed) as is."""
        h = states[layer]  # (B, F, D)
        return h if layer >= self.num_layers else self.final_norm_module()(h)

    def generation_kwargs(self, language: str | None = "en", task: str = "transcribe") -> dict:
        """Keyword arguments of the model's usual greedy decoding: ``num_beams=1, do_sample=False``; multilingual
        models get ``language`` (None: detected per item, as Whisper does) and ``task``; English-only ones neither."""
        kw: dict = {"num_beams": 1, "do_sample": False, "return_timestamps": False}
        if getattr(self.model.generation_config, "is_multilingual", False):
            if language is not None:
                kw["language"] = language
            kw["task"] = task
        return kw

    def decoder_prompt_ids(self, language: str | None = "en", task: str = "transcribe") -> list[int]:
        """The prompt ``generate`` starts from: ``<|startoftranscript|>`` [``<|lang|>`` ``<|task|>``] ``<|notimestamps|>``
        (English-only models: no language or task token). A multilingual prompt needs ``language``."""
        gc = self.model.generation_config
        ids = [int(gc.decoder_start_token_id)]
        if getattr(gc, "is_multilingual", False):
            if language is None:
                raise BackboneError(f"{self.name}: a multilingual model's prompt needs a language (e.g. 'en')")
            lang_to_id = dict(getattr(gc, "lang_to_id", None) or {})
            key = language if language.startswith("<|") else f"<|{language}|>"
            if key not in lang_to_id:
                raise BackboneError(f"{self.name}: unknown language {language!r}; known: {sorted(lang_to_id)[:10]}...")
            ids += [int(lang_to_id[key]), int(gc.task_to_id[task])]
        if getattr(gc, "no_timestamps_token_id", None) is not None:
            ids.append(int(gc.no_timestamps_token_id))
        return ids

    def strip_generated(self, sequences: Tensor, caps: list[int] | None = None) -> tuple[list[list[int]], list[bool]]:
        """Generated ids without the prompt (where ``generate`` returned it), the end-of-text token and the padding
        after it (Whisper drops the final end-of-text and pads finished rows with ``pad_token_id``, which is
        end-of-text in real checkpoints; where it is not, trailing pad ids are padding); and per row whether an
        end-of-text or padding was seen."""
        gc = self.model.generation_config
        eos = {int(gc.eos_token_id)} if isinstance(gc.eos_token_id, int) else {int(t) for t in gc.eos_token_id}
        start = int(gc.decoder_start_token_id)
        pad = None if getattr(gc, "pad_token_id", None) is None else int(gc.pad_token_id)
        special = {start, *(int(t) for t in [getattr(gc, "no_timestamps_token_id", None)] if t is not None),
                   *(int(t) for t in (getattr(gc, "lang_to_id", None) or {}).values()),
                   *(int(t) for t in (getattr(gc, "task_to_id", None) or {}).values())}  # fmt: skip
        out, ended = [], []
        for i, row in enumerate(sequences.tolist()):
            if row and row[0] == start:  # the prompt is still there: drop it
                while row and row[0] in special:
                    row = row[1:]
            if caps is not None:
                row = row[: caps[i]]  # a row stopped at its cap is padded after it
            toks, end = [], False
            for t in row:
                if t in eos:
                    end = True
                    break
                toks.append(int(t))
            if pad is not None and pad not in eos:  # Whisper drops the final end-of-text and pads with pad_token_id
                while toks and toks[-1] == pad:
                    toks.pop()
                    end = True
            out.append(toks)
            ended.append(end)
        return out, ended

    _strip = strip_generated  # the former private name (tests, bench)

    @torch.no_grad()
    def generate_from_encoder_states(
        self,
        encoder_states: Tensor | None,
        max_new_tokens: int | list[int] | None = None,
        language: str | None = "en",
        task: str = "transcribe",
        loop: str = "auto",
        cross_kv: list[tuple[Tensor, Tensor]] | None = None,
        on_rows: Callable[[Tensor], None] | None = None,
    ) -> tuple[list[list[int]], list[bool]]:
        """Greedy decoding (the model's usual prompt, :meth:`generation_kwargs`) cross-attending to
        ``encoder_states`` ``(B, F, D)`` (already through the encoder's final norm: :meth:`lens_encoder_states`).

        ``cross_kv``: :meth:`cross_attention_kv` of these same ``encoder_states``, when the caller decodes them
        several times under interventions that leave the cross-attention keys and values alone (decoder head
        ablations): the greedy loop starts from them instead of projecting the window again (the same numbers;
        the projection of 1500 frames is most of a short decoding). ``generate`` (below) computes its own.
        With ``cross_kv`` the greedy loop reads nothing of ``encoder_states`` but its shape, so they may be a
        stride-0 view (rows of many interventions on one item) or None (an error where only ``generate`` can
        decode, since it projects the states itself).

        ``on_rows``: called with the indices (into the rows of the previous decoder call) of the rows the decoder
        runs next, whenever that set shrinks (finished rows leave the greedy batch), for per-row hooks
        (``src.interventions.patched_rows``' ``select``). The greedy loop only (``generate`` keeps every row).

        ``max_new_tokens``: one cap for all items, or one per item (a stopping criterion per row, so an item's
        tokens do not depend on the other items of the batch); None: the model's maximum length.
        Every item has the same fixed window of ``F`` frames, so no encoder attention mask is needed.
        Returns the token ids of each item (prompt and end-of-text removed) and whether it stopped without
        end-of-text (at its cap or at the model's maximum length).

        ``loop``: ``"greedy"`` -- an own greedy loop (:meth:`_greedy_rows`) that drops every row (and its cache
        rows) as soon as it emits end-of-text or reaches its cap, so finished rows cost nothing (the point of
        decoding many lens layers in one batch); same ids as ``generate``. ``"generate"`` -- transformers'
        ``generate`` (which keeps computing finished rows until the longest ends). ``"auto"`` (default): greedy
        unless the prompt is not known in advance (multilingual model with ``language=None``: Whisper's
        language detection) or the generation config asks for logits processing the greedy loop does not
        reproduce (:meth:`_greedy_supported`); then generate.
        """
        if loop not in ("auto", "greedy", "generate"):
            raise ValueError(f"loop must be 'auto', 'greedy' or 'generate', got {loop!r}")
        states_given = encoder_states is not None
        if not states_given:
            if cross_kv is None:
                raise ValueError("encoder_states=None needs cross_kv (the keys and values of the states)")
            k0 = cross_kv[0][0]  # (B, heads, F, head_dim): a stride-0 view of the right shape, never read
            encoder_states = k0.new_zeros(1, 1, int(self.hidden_size)).expand(int(k0.shape[0]), int(k0.shape[2]), -1)
        multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        why = "loop='generate' was asked for"
        if loop != "generate":
            why = self._greedy_supported()
            if multilingual and language is None:
                why = "language detection (multilingual model, language=None) needs Whisper's generate"
            if why is None:
                return self._greedy_decode(encoder_states, max_new_tokens, language, task, cross_kv, on_rows)
            if loop == "greedy":
                raise BackboneError(f"{self.name}: the greedy loop cannot reproduce generate here: {why}")
        if not states_given:  # generate projects its own keys and values: it needs the states themselves
            raise BackboneError(f"{self.name}: encoder_states=None (cross_kv only) needs the greedy loop, and it cannot "
                                f"reproduce generate here: {why}; pass the encoder states")  # fmt: skip
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.modeling_outputs import BaseModelOutput

        b = int(encoder_states.shape[0])
        kw = self.generation_kwargs(language, task)
        caps = None
        if max_new_tokens is not None:
            prompt_len = len(self.decoder_prompt_ids(language if language is not None else "en", task))
            limit = int(self.config.max_target_positions) - prompt_len
            caps = [int(max_new_tokens)] * b if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
            if len(caps) != b:
                raise ValueError(f"max_new_tokens: {len(caps)} caps for {b} items")
            caps = [max(1, min(c, limit)) for c in caps]
            cap_t = torch.tensor(caps)

            class _PerItemCap(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):  # noqa: ARG002
                    return (input_ids.shape[1] - prompt_len) >= cap_t.to(input_ids.device)  # (B,)

            kw.update(max_new_tokens=max(caps), stopping_criteria=StoppingCriteriaList([_PerItemCap()]))
        enc = BaseModelOutput(last_hidden_state=encoder_states)
        if multilingual and language is None:  # language detection per item: Whisper's own generate loop
            out = self.model.generate(encoder_outputs=enc, **kw)
        else:
            # The prompt is known: the generic loop Whisper's short-form generate ends in, called directly with the
            # prompt as decoder_input_ids (Whisper's long-form loop fails on encoder_outputs of multilingual models
            # in transformers 5.24: _maybe_reduce_batch slices input_features=None)
            from transformers import GenerationMixin

            for key in ("language", "task", "return_timestamps"):
                kw.pop(key, None)
            prompt = torch.tensor([self.decoder_prompt_ids(language if language is not None else "en", task)] * b)
            out = GenerationMixin.generate(self.model, encoder_outputs=enc, decoder_input_ids=prompt, **kw)
        seqs = out.sequences if hasattr(out, "sequences") else out  # (B, n), with or without the prompt
        toks, _ = self.strip_generated(seqs, caps)
        # Whisper's generate strips the final end-of-text, so "stopped without it" = reached the length limit
        if caps is None:
            caps = [self._default_new_tokens(len(self.decoder_prompt_ids(language if language is not None else "en", task)))] * b
        return toks, [len(t) >= c for t, c in zip(toks, caps)]

    # Generation-config fields that would make transformers' greedy ``generate`` process the logits beyond
    # suppress_tokens / begin_suppress_tokens (the only processors Whisper checkpoints' configs ask for);
    # the greedy loop declines them (loop="auto" falls back to generate).
    _GREEDY_UNSUPPORTED = {
        "forced_decoder_ids": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
        "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
        "sequence_bias": None, "min_length": 0, "min_new_tokens": None, "repetition_penalty": 1.0,
        "encoder_repetition_penalty": 1.0, "exponential_decay_length_penalty": None,
        "remove_invalid_values": False, "renormalize_logits": False, "stop_strings": None, "max_time": None,
    }  # fmt: skip

    def _default_new_tokens(self, prompt_len: int) -> int:
        """How many tokens ``generate`` makes without ``max_new_tokens`` (transformers 5.x
        ``_prepare_generated_length``): ``generation_config.max_length`` counts the prompt; unset, 20 new tokens
        (``max_position_embeddings`` is not a Whisper config field, so no clipping there)."""
        max_length = getattr(self.model.generation_config, "max_length", None)
        if max_length is None:
            return 20
        return max(1, int(max_length) - prompt_len)

    def _greedy_supported(self) -> str | None:
        """None when :meth:`_greedy_decode` reproduces ``generate`` for this generation config, else why not."""
        gc = self.model.generation_config
        for k, neutral in self._GREEDY_UNSUPPORTED.items():
            v = getattr(gc, k, neutral)
            if v not in (None, neutral, False, 0) and v != neutral:
                return f"generation_config.{k}={v!r}"
        if getattr(gc, "return_timestamps", False):
            return "return_timestamps"
        return None

    @torch.no_grad()
    def _greedy_decode(self, encoder_states: Tensor, max_new_tokens, language, task, cross_kv=None, on_rows=None):
        """:meth:`generate_from_encoder_states` with ``loop="greedy"``: same caps and output as the generate path
        (the sequences are rebuilt as generate returns them and go through the same :meth:`strip_generated`)."""
        gc = self.model.generation_config
        b = int(encoder_states.shape[0])
        prompt = self.decoder_prompt_ids(language if language is not None else "en", task)
        if max_new_tokens is None:
            caps = [self._default_new_tokens(len(prompt))] * b
            strip_caps = None
        else:
            limit = int(self.config.max_target_positions) - len(prompt)
            caps = [int(max_new_tokens)] * b if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
            if len(caps) != b:
                raise ValueError(f"max_new_tokens: {len(caps)} caps for {b} items")
            caps = [max(1, min(c, limit)) for c in caps]
            strip_caps = caps
        rows = self._greedy_rows(encoder_states, prompt, caps, cross_kv, on_rows)
        eos = int(gc.eos_token_id) if isinstance(gc.eos_token_id, int) else int(list(gc.eos_token_id)[0])
        pad = eos if getattr(gc, "pad_token_id", None) is None else int(gc.pad_token_id)
        n = max(len(r) for r in rows)
        seqs = torch.tensor([prompt + r + [pad] * (n - len(r)) for r in rows], dtype=torch.long)
        toks, _ = self.strip_generated(seqs, strip_caps)
        return toks, [len(t) >= c for t, c in zip(toks, caps)]

    def _greedy_rows(self, encoder_states: Tensor, prompt: list[int], caps: list[int],
                     cross_kv: list[tuple[Tensor, Tensor]] | None = None,
                     on_rows: Callable[[Tensor], None] | None = None) -> list[list[int]]:  # fmt: skip
        """Greedy decoding of every row from ``prompt``: the decoder with a KV cache (``EncoderDecoderCache``), the
        logits of ``proj_out`` with generate's processors for Whisper configs (``suppress_tokens`` always,
        ``begin_suppress_tokens`` at the first generated token), argmax. A row leaves the batch -- its
        self- and cross-attention cache rows with it (``batch_select_indices``) -- as soon as it emits an
        end-of-text id (kept in its output, as generate does) or has ``caps[i]`` tokens; each step computes only
        the rows still running. ``cross_kv`` (:meth:`cross_attention_kv`): the cross-attention cache starts
        filled (the layers then read it and skip their ``k_proj``/``v_proj``, as from the second step on).
        Returns the generated ids of each row (prompt excluded)."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        dec = self.model.model.decoder
        head = self.model.proj_out
        dev = encoder_states.device
        b = int(encoder_states.shape[0])
        gc = self.model.generation_config
        eos = [int(gc.eos_token_id)] if isinstance(gc.eos_token_id, int) else [int(t) for t in gc.eos_token_id]
        eos_t = torch.tensor(eos, device=dev)
        suppress = None if not gc.suppress_tokens else torch.tensor(list(gc.suppress_tokens), device=dev)
        begin = None if not gc.begin_suppress_tokens else torch.tensor(list(gc.begin_suppress_tokens), device=dev)
        caps_t = torch.tensor(caps, device=dev)
        active = torch.arange(b, device=dev)  # original row of each running row
        out: list[list[int]] = [[] for _ in range(b)]
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if cross_kv is not None:
            self._prefill_cross_cache(cache, cross_kv, b)
        inp = torch.tensor([prompt] * b, dtype=torch.long, device=dev)
        enc = encoder_states
        step = 0
        while active.numel():
            h = dec(input_ids=inp, encoder_hidden_states=enc, cache=cache, use_cache=True).last_hidden_state
            self.decoded_positions += int(inp.numel())
            # generate's last-position logits. A 2-D (R, D) row view: proj_out of the 3-D view h[:, -1:, :] (stride
            # T*D over the batch) takes a per-row path, ~10x slower at 48 rows and not the bits of the full-sequence
            # projection generate computes, which this equals for more than one row
            scores = head(h[:, -1, :]).to(dtype=torch.float32)
            if suppress is not None:
                scores[:, suppress] = -float("inf")
            if step == 0 and begin is not None:  # generate: begin_index = prompt length, i.e. the first new token
                scores[:, begin] = -float("inf")
            nxt = scores.argmax(dim=-1)  # (R,)
            step += 1
            for r, t in zip(active.tolist(), nxt.tolist()):
                out[r].append(int(t))
            done = torch.isin(nxt, eos_t) | (step >= caps_t[active])
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                # self- and cross-attention K/V of the rows still running (cross: rows that share one item's keys
                # and values as a stride-0 view stay a view)
                cache.self_attention_cache.batch_select_indices(keep)
                for layer in cache.cross_attention_cache.layers:
                    layer.keys, layer.values = _rows_of(layer.keys, keep), _rows_of(layer.values, keep)
                if on_rows is not None:
                    on_rows(keep)
                active, nxt = active[keep], nxt[keep]
                # once the cross-attention cache is filled the layers read K/V from it; encoder_hidden_states only
                # has to be given (and of the running batch size): a view, no copy of the (R, F, D) states
                enc = encoder_states[: active.numel()]
            inp = nxt[:, None]
        return out

    @torch.no_grad()
    def cross_attention_kv(self, encoder_states: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The keys and values, per decoder layer ``(B, heads, F, head_dim)``, that the cross-attention layers
        compute from ``encoder_states`` ``(B, F, D)`` and keep in the decoder's cache for every later step: read
        from that cache after one decoder call on the prompt (transformers' own projection, not a copy of it), for
        :meth:`generate_from_encoder_states` ``cross_kv=``."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        b = int(encoder_states.shape[0])
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        start = int(self.model.generation_config.decoder_start_token_id)  # any token: K/V depend on the states only
        ids = torch.full((b, 1), start, dtype=torch.long, device=encoder_states.device)
        self.model.model.decoder(input_ids=ids, encoder_hidden_states=encoder_states, cache=cache, use_cache=True)
        layers = cache.cross_attention_cache.layers
        if len(layers) != len(self.cross_attention_modules()):
            raise BackboneError(f"{self.name}: the decoder filled {len(layers)} cross-attention cache layers, "
                                f"expected {len(self.cross_attention_modules())}")  # fmt: skip
        return [(layer.keys, layer.values) for layer in layers]

    def _prefill_cross_cache(self, cache, cross_kv: list[tuple[Tensor, Tensor]], b: int) -> None:
        """Fill ``cache``'s cross-attention half with ``cross_kv`` and mark every layer as filled (the flag
        transformers' ``WhisperAttention`` reads to skip its projections)."""
        n = len(self.cross_attention_modules())
        if len(cross_kv) != n or any(int(k.shape[0]) != b or int(v.shape[0]) != b for k, v in cross_kv):
            shapes = [tuple(k.shape) for k, _ in cross_kv]
            raise ValueError(f"cross_kv: expected {n} layers of {b} rows (cross_attention_kv of the same "
                             f"encoder_states), got {shapes}")  # fmt: skip
        cc = cache.cross_attention_cache
        for i, (k, v) in enumerate(cross_kv):
            cc.update(k[:0], v[:0], i)  # creates layer i (transformers' own way), empty
            # the tensors themselves, not the copy update() makes (a copy of every row's window per decoding):
            # nothing writes into a filled cross-attention cache, and batch_select_indices builds new tensors
            cc.layers[i].keys, cc.layers[i].values = k, v
            cache.is_updated[i] = True

    @torch.no_grad()
    def transcribe_ids(self, waveforms: list[Tensor], language: str | None = "en", task: str = "transcribe",
                       max_new_tokens: int | None = None) -> list[list[int]]:  # fmt: skip
        """Plain ``model.generate(input_features)`` (greedy, the usual prompt): token ids per item, prompt and
        end-of-text removed."""
        kw = self.generation_kwargs(language, task)
        if max_new_tokens is not None:
            kw["max_new_tokens"] = int(max_new_tokens)
        feats = self.features(waveforms).to(next(self.model.parameters()).dtype)  # a float64 copy works too
        out = self.model.generate(feats, **kw)
        seqs = out.sequences if hasattr(out, "sequences") else out
        return self.strip_generated(seqs, None if max_new_tokens is None else [int(max_new_tokens)] * len(waveforms))[0]

    def tokenizer(self):
        """The model's tokenizer (CTranslate2 / embedded: from its directory's tokenizer.json; transformers
        directories or hub ids: ``WhisperTokenizer.from_pretrained``), or None when there is none (tests' tiny
        random Whisper)."""
        if "_tokenizer" not in self.__dict__:
            tok = None
            mid = str(self.model_id)
            try:
                if mid.startswith("embedded:") or (Path(mid).expanduser() / "model.bin").exists():
                    from src.backbones.ct2_whisper import (
                        _processor,
                        _read_vocab,
                        _whisper_ids,
                        embedded_whisper_dir,
                    )

                    d = embedded_whisper_dir(mid.split(":", 1)[1]) if mid.startswith("embedded:") else Path(mid).expanduser()
                    ids = _whisper_ids(self.config.vocab_size, _read_vocab(d))
                    tok = _processor(d, self.config, ids).tokenizer
                else:
                    from transformers import WhisperTokenizer

                    src = str(Path(mid).expanduser()) if Path(mid).expanduser().exists() else mid
                    tok = WhisperTokenizer.from_pretrained(src)
                    if len(tok) < self.config.vocab_size // 2:  # a directory without vocabulary files
                        tok = None
            except (OSError, ValueError, TypeError):
                tok = None
            self.__dict__["_tokenizer"] = tok
        return self.__dict__["_tokenizer"]

    def decode_ids(self, ids: list[int]) -> str:
        """Text of token ids (special tokens skipped); without a tokenizer each id as one word of letters (id 12 ->
        ``tbc``: digits would be spelled out by the WER normalisation), so error rates become token error rates."""
        tok = self.tokenizer()
        if tok is None:
            return " ".join("t" + "".join(chr(ord("a") + int(c)) for c in str(int(i))) for i in ids)
        return tok.decode(list(ids), skip_special_tokens=True).strip()


def _rows_of(t: Tensor, rows: Tensor) -> Tensor:
    """``t[rows]``; a tensor whose rows are one row broadcast (stride 0: many rows cross-attending to one item's
    keys and values) stays a view of that row instead of becoming a copy of it per row."""
    if t.dim() and t.stride(0) == 0:
        return t[:1].expand(int(rows.numel()), *t.shape[1:])
    return t[rows]
