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
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.backbones.base import BackboneError, Encoded, SpeechBackbone, record_model_load
from src.backbones.hooks import first_output, record_outputs
from src.backbones.hub import HubError, check_hub_access

W2V_FAMILY = {"wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer", "unispeech", "unispeech-sat"}


def _looks_like_path(model_id: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else (or an existing path) is a directory."""
    return Path(model_id).expanduser().exists() or model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1


def _local_dir(model_id: str) -> Path | None:
    p = Path(model_id).expanduser()
    return p if p.exists() else None


def _dir_fingerprint(path: Path) -> str:
    """Size + mtime of weight files in a local model directory (cheap)."""
    h = hashlib.sha256()
    for p in sorted(path.glob("*")):
        if p.suffix in {".bin", ".safetensors", ".json"}:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _why(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {lines[0][:200] if lines else ''}"


def hub_error(model_id: str, e: BaseException) -> BackboneError:
    return BackboneError(
        f"could not load model {model_id!r} from the model hub ({_why(e)}). If this machine has no network access, "
        f"download it on a machine with network (e.g. `huggingface-cli download {model_id}`, or "
        "from_pretrained(...).save_pretrained(dir)) and give the directory as backbone.model_id=/path/to/dir "
        "(a local directory), or use the embedded pretrained model: backbone=whisper_tiny_en (or whisper_base)."
    )


_hub_error = hub_error  # the old name (src/backbones/whisper.py)

def load_hf_config(model_id: str, revision: str | None = None):
    """``AutoConfig`` with errors that say what to do (missing path, bad config.json, unreachable hub)."""
    from transformers import AutoConfig

    local = _local_dir(model_id)
    if _looks_like_path(model_id) and local is None:
        raise BackboneError(f"model path {model_id!r} does not exist")
    if local is None:
        try:
            check_hub_access(model_id, revision)
        except HubError as e:
            raise BackboneError(str(e)) from None
    if local is not None and local.is_dir() and not (local / "config.json").exists():
        raise BackboneError(
            f"model directory {str(local)!r} has no config.json (save the model there with save_pretrained)"
        )
    try:
        return AutoConfig.from_pretrained(str(local) if local is not None else model_id, revision=revision)
    except (OSError, ValueError, KeyError, TypeError) as e:
        if local is not None:
            raise BackboneError(
                f"model directory {str(local)!r}: config.json could not be read as a transformers config "
                f"({_why(e)}). The file is empty, corrupt or not a model config: copy it again or re-save the "
                "model with save_pretrained."
            ) from e
        raise hub_error(model_id, e) from e


def _weight_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".h5", ".msgpack"}
                  or p.name.endswith(".safetensors.index.json"))  # fmt: skip


# parameters a checkpoint may lack without changing what encode() computes
_UNUSED_WHEN_FROZEN = ("masked_spec_embed",)


def _weights_error(local: Path, e: BaseException | None) -> BackboneError:
    files = _weight_files(local)
    what = ", ".join(files) if files else "no weight file (expected model.safetensors or pytorch_model.bin)"
    why = f" ({_why(e)})" if e is not None else ""
    return BackboneError(
        f"model directory {str(local)!r}: could not load the weights in {what}{why}. The file is "
        "corrupt, truncated or does not match config.json: copy it again, or re-save the model with "
        "save_pretrained."
    )


def check_local_weights(model_id: str) -> None:
    """Cheap checks of a local checkpoint's weight files at construction, before any weight is read: there is
    one, safetensors headers parse (``safe_open`` reads only the header), no file is empty. Hub ids: nothing
    (their files are fetched on load). Raises the BackboneError loading would raise, naming directory and file."""
    local = _local_dir(model_id)
    if local is None or not local.is_dir():
        return
    files = [local / f for f in _weight_files(local)]
    if not files:
        raise _weights_error(local, None)
    for f in files:
        try:
            if f.stat().st_size == 0:
                raise ValueError(f"{f.name} is empty")
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="pt"):
                    pass
        except Exception as e:  # safetensors' SafetensorError is a bare Exception
            raise _weights_error(local, e) from e


def load_hf_weights(cls, model_id: str, required_prefix: str = "", **kwargs):
    """``cls.from_pretrained(model_id, **kwargs)``; failures become a BackboneError naming the directory and file.

    Weights the checkpoint lacks would be left at their random init: missing weights whose name starts
    with ``required_prefix`` (the part ``encode()`` runs) are an error, others a warning.
    """
    local = _local_dir(model_id)
    try:
        model, info = cls.from_pretrained(str(local) if local is not None else model_id, output_loading_info=True, **kwargs)
    except Exception as e:  # safetensors' SafetensorError is a bare Exception; torch gives RuntimeError/UnpicklingError
        msg = str(e)
        attn_words = ("attn_implementation", "scaled_dot_product_attention", "Flash Attention", "flash_attn", "flex_attention")
        if isinstance(e, (ValueError, ImportError)) and any(w in msg for w in attn_words):
            raise BackboneError(
                f"backbone.attn_implementation={kwargs.get('attn_implementation')!r} cannot be used with "
                f"{model_id!r} ({_why(e)}); set backbone.attn_implementation=eager"
            ) from e
        if local is None:
            raise hub_error(model_id, e) from e
        raise _weights_error(local, e) from e
    missing = sorted(k for k in (info or {}).get("missing_keys", []) if not k.endswith(_UNUSED_WHEN_FROZEN))
    where = f"model directory {str(local)!r}" if local is not None else f"model {model_id!r}"
    bad = [k for k in missing if k.startswith(required_prefix)]
    if bad:
        raise BackboneError(
            f"{where}: the checkpoint ({', '.join(_weight_files(local)) if local is not None else 'hub files'}) lacks "
            f"{len(bad)} weights the encoder needs (e.g. {', '.join(bad[:3])}); they would be random. Is it a "
            "checkpoint of this architecture? Re-save it with save_pretrained."
        )
    if missing:
        warnings.warn(f"{where}: {len(missing)} weights not in the checkpoint were left random: {missing[:5]}", stacklevel=3)
    return model


ATTN_CHOICES = ("eager", "sdpa", "flash_attention_2", "flex_attention")


def check_attn_choice(requested: str | None, key: str = "backbone.attn_implementation") -> str:
    """``requested`` (None = eager) if it names an attention implementation, else a BackboneError naming ``key``."""
    requested = "eager" if requested is None else str(requested)
    if requested not in ATTN_CHOICES:
        raise BackboneError(f"{key}={requested!r} is not one of {list(ATTN_CHOICES)}")
    return requested


def resolve_attn_implementation(config, requested: str | None, key: str = "backbone.attn_implementation") -> str:
    """The attention implementation to build with: ``requested`` if the model class supports it, else eager
    (with a warning: eager computes the same attention).  An unknown name is a BackboneError naming ``key``."""
    requested = check_attn_choice(requested, key)
    if requested == "eager":
        return requested
    try:
        from transformers import WhisperForConditionalGeneration
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        cls = WhisperForConditionalGeneration if config.model_type == "whisper" else MODEL_MAPPING[type(config)]
    except Exception:  # unknown class: let transformers decide
        return requested
    flag = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn", "flex_attention": "_supports_flex_attn"}
    if not getattr(cls, flag[requested], False):
        warnings.warn(
            f"{cls.__name__} does not support {key}={requested!r}; using 'eager' (the same attention, computed "
            f"explicitly). Set {key}: eager in the backbone config to silence this.",
            stacklevel=3,
        )
        return "eager"
    return requested


@dataclass
class CTCReadout:
    """A CTC read-out of encoder states (``HFBackbone.ctc_head()``).

    ``head``: maps ``(B, T, D)`` to logits ``(B, T, V)``; ``vocab[i]`` is token ``i``; ``blank`` the
    CTC blank id; ``word_delimiter`` the token that stands for a space (``"|"``) or None;
    ``special_tokens`` are left out of decoded text; ``unit`` is ``"char"`` or ``"phone"``;
    ``norm``: ``"final_norm"`` when the head reads final-normed states (the model's own head).
    """

    head: torch.nn.Module
    vocab: list[str]
    blank: int
    word_delimiter: str | None = "|"
    special_tokens: list[str] = field(default_factory=list)
    unit: str = "char"
    model_class: str = ""
    norm: str = "final_norm"


class HFBackbone(SpeechBackbone):
    """A wav2vec2-family encoder: the residual stream (input to layer 1 + each layer's output), then
    ``final_norm`` for stable-layer-norm encoders.

    Where the encoder's LayerNorm sits (``norm_layout``):

    - ``"post_ln"`` (wav2vec2/HuBERT/WavLM base, data2vec-audio): ``encoder.layer_norm`` is applied to
      the input of the first layer, so state 0 is already normed; every layer ends in its own
      ``final_layer_norm``; there is no norm after the last layer and no ``final_norm`` state.
    - ``"stable_ln"`` (``do_stable_layer_norm``: wav2vec2-large-lv60, XLS-R, HuBERT/WavLM large):
      the layers are pre-LN (a layer's ``final_layer_norm`` is its pre-FFN norm) and
      ``encoder.layer_norm`` is applied once after the last layer: state N is the raw last layer,
      ``final_norm`` = ``encoder.layer_norm(state N)`` (what transformers returns as
      ``last_hidden_state``).
    - ``"final_ln"`` (wav2vec2-conformer): post-layer LayerNorm after the last layer, as stable_ln.

    Args:
        model_id: hub id (``facebook/wav2vec2-base``) or local directory.
        pretrained: false builds the architecture with random weights (seeded by ``seed``).
        revision: hub revision (part of the fingerprint).
        attn_implementation: ``sdpa`` (fast) or ``eager`` (needed for attention weights); a model that
            does not support sdpa (WavLM) falls back to eager with a warning.
        normalize: per-utterance zero-mean/unit-variance input normalisation. ``null``: read
            ``do_normalize`` from the model's feature-extractor config (``preprocessor_config.json``),
            and raise if it cannot be read. ``true`` / ``false``: explicit (fairseq base checkpoints
            were trained without normalisation; large-lv60 / XLS-R with it).
        name: short name used in cache paths and results (default: last part of model_id).
    """

    _lazy_attrs = ("model",)
    family = "wav2vec2"
    has_frontend = True  # differentiable_features (normalised waveform) -> frontend (conv + projection) -> states

    def __init__(
        self,
        model_id: str,
        pretrained: bool = True,
        revision: str | None = None,
        attn_implementation: str = "eager",
        name: str | None = None,
        seed: int = 0,
        config_overrides: dict | None = None,
        normalize: bool | None = None,
    ) -> None:
        """Reads ``config.json`` (hub: fetches it, a clear error without network) and the feature-extractor
        config; the weights load on first use of ``model`` (``encode``, the live-model surface)."""
        super().__init__()
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
        attn_implementation = resolve_attn_implementation(config, attn_implementation)
        self.attn_implementation = attn_implementation
        config._attn_implementation = attn_implementation
        src = str(Path(model_id).expanduser()) if Path(model_id).expanduser().exists() else model_id
        if self.pretrained:
            check_local_weights(model_id)
        self._init_from_config(config, name, src, normalize)

    def _materialise(self, attr: str) -> None:
        """Load (``pretrained``) or build with seeded random weights (``pretrained: false``) the base model."""
        from transformers import AutoModel

        if self.pretrained:
            model = load_hf_weights(AutoModel, self.model_id, config=self.config, revision=self.revision,
                                    attn_implementation=self.attn_implementation)  # fmt: skip
            record_model_load(self.name, "model")
        else:
            with torch.random.fork_rng(devices=[]):  # the same weights as torch.manual_seed(seed) + from_config,
                torch.manual_seed(self.seed)  # without reseeding the caller's generator at first use
                model = AutoModel.from_config(self.config, attn_implementation=self.attn_implementation)
            record_model_load(self.name, "random")
        self._check_layout(model)
        self.model = self._placed(model)

    def _check_layout(self, model) -> None:
        """The norm layout read from the config must be the one the built encoder has (no silent mismatch)."""
        enc = type(model.encoder).__name__
        built = "stable_ln" if enc.endswith("StableLayerNorm") else ("final_ln" if self.config.model_type ==
                                                                     "wav2vec2-conformer" else "post_ln")  # fmt: skip
        if built != self.norm_layout:
            raise BackboneError(f"{self.name}: config.json says norm layout {self.norm_layout!r} "
                                f"(do_stable_layer_norm={getattr(self.config, 'do_stable_layer_norm', None)}), "
                                f"but transformers built {enc} ({built!r})")  # fmt: skip

    @classmethod
    def from_model(cls, model, model_id: str, name: str | None = None, normalize: bool | None = None) -> HFBackbone:
        """Wrap an already-loaded wav2vec2-family base model (``Wav2Vec2Model`` etc., e.g. the ``wav2vec2``
        of a task model loaded with remote code), treated as pretrained. ``model_id`` names it in the
        fingerprint; ``normalize`` as in the constructor (``None``: read ``preprocessor_config.json``
        of ``model_id`` when it is a local directory). Nothing is loaded (the model is given)."""
        if not (hasattr(model, "feature_extractor") and hasattr(model, "encoder") and hasattr(model, "config")):
            raise BackboneError(f"{type(model).__name__} is not a wav2vec2-family base model (no feature_extractor/encoder)")
        self = cls.__new__(cls)
        SpeechBackbone.__init__(self)
        self.model_id, self.pretrained, self.revision, self.seed = str(model_id), True, None, 0
        self.attn_implementation = getattr(model.config, "_attn_implementation", None) or "eager"
        src = str(Path(model_id).expanduser()) if Path(model_id).expanduser().exists() else str(model_id)
        self._init_from_config(model.config, name, src, normalize)
        self._check_layout(model)
        self.model = self._placed(model)
        return self

    def _init_from_config(self, config, name: str | None, src: str, normalize: bool | None) -> None:
        """Every attribute the cache needs, from the config alone (no weights)."""
        model_id = self.model_id
        self.config = config
        self.model_type = str(config.model_type)
        # the fingerprint's config part, frozen now: loading may add keys (dtype, versions) to the live config
        self._config_json = json.loads(config.to_json_string(use_diff=False))
        self.name = (name or model_id.rstrip("/").split("/")[-1]) + ("" if self.pretrained else "-random")
        self.num_layers = self.config.num_hidden_layers + 1
        self.hidden_size = self.config.hidden_size
        self.sample_rate = 16000
        # transformers builds the *EncoderStableLayerNorm class exactly when config.do_stable_layer_norm
        # (checked against the built model by _check_layout)
        if self.config.model_type == "wav2vec2-conformer":
            self.norm_layout = "final_ln"
        elif self.config.model_type != "data2vec-audio" and bool(getattr(self.config, "do_stable_layer_norm", False)):
            self.norm_layout = "stable_ln"
        else:
            self.norm_layout = "post_ln"
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
        self.do_normalize = self._read_do_normalize(src, normalize)
        self._local_fp = _dir_fingerprint(Path(src)) if Path(src).is_dir() else ""

    def _read_do_normalize(self, src: str, normalize: bool | None) -> bool:
        """``normalize`` if given, else ``do_normalize`` of the model's feature-extractor config (never a guess)."""
        found, why = None, ""
        p = Path(src) / "preprocessor_config.json"
        if p.exists():
            try:
                fe = json.loads(p.read_text())
                found = bool(fe["do_normalize"]) if "do_normalize" in fe else None
                why = f"{p} has no do_normalize key" if found is None else ""
            except (OSError, ValueError, TypeError) as e:
                why = f"{p} could not be read ({_why(e)})"
        elif Path(src).is_dir():
            why = f"model directory {src!r} has no preprocessor_config.json"
        else:
            try:
                from transformers import AutoFeatureExtractor

                fe = AutoFeatureExtractor.from_pretrained(src, revision=self.revision)
                found = bool(fe.do_normalize) if hasattr(fe, "do_normalize") else None
                why = f"the feature extractor of {src!r} has no do_normalize" if found is None else ""
            except Exception as e:
                why = f"the feature-extractor config of {src!r} could not be read ({_why(e)})"
        if normalize is not None:
            if found is not None and bool(normalize) != found:
                warnings.warn(
                    f"backbone.normalize={bool(normalize)} overrides do_normalize={found} of {self.model_id!r}'s "
                    "feature-extractor config",
                    stacklevel=3,
                )
            return bool(normalize)
        if found is None:
            raise BackboneError(
                f"cannot tell whether {self.model_id!r} expects normalised input: {why}. Set backbone.normalize=true "
                "(per-utterance zero mean, unit variance: wav2vec2-large-lv60, XLS-R, HuBERT/WavLM large) or "
                "backbone.normalize=false (fairseq base checkpoints were trained without normalisation)."
            )
        return found

    @property
    def layer_names(self) -> list[str]:
        return [str(i) for i in range(self.num_layers)] + (["final_norm"] if self.norm_layout in ("stable_ln", "final_ln") else [])

    def final_norm_module(self) -> torch.nn.Module | None:
        """``encoder.layer_norm`` when it follows the last layer (stable-LN, conformer); None for post-LN
        (there it is applied before the first layer and is part of state 0)."""
        return self.model.encoder.layer_norm if self.norm_layout in ("stable_ln", "final_ln") else None

    @property
    def config_dict(self) -> dict:
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "pretrained": self.pretrained,
            "seed": None if self.pretrained else self.seed,
            "config": self._config_json,
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

    def mlp_modules(self) -> list[torch.nn.Module]:
        """Each layer's ``feed_forward`` (intermediate + output dense): its output is the MLP output, added to the
        residual stream (post-LN layers normalise the sum afterwards)."""
        return [layer.feed_forward for layer in self.model.encoder.layers]

    def prepare(self, waveforms: list[Tensor]) -> tuple[Tensor, Tensor | None, Tensor]:
        """The model's input batch, as :meth:`encode` builds it: ``(batch (B, S), attention mask (B, S) or None,
        frames per item (B,))``; per-utterance normalisation where ``do_normalize``, zero padding."""
        lengths = torch.tensor([w.shape[-1] for w in waveforms])
        batch = torch.zeros(len(waveforms), int(lengths.max()))  # (B, S)
        for i, w in enumerate(waveforms):
            w = w.float().cpu()
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

    _prepare = prepare  # the former private name (tests, bench)

    @torch.no_grad()
    def encode(self, waveforms: list[Tensor], output_attentions: bool = False) -> Encoded:
        batch, mask, frames = self.prepare(waveforms)
        dev = self._device_anchor.device  # the device the backbone was moved to (inputs are built on the CPU)
        dtype = next(self.model.parameters()).dtype  # the model's (a float64 copy reads float64, as encoder_run)
        batch, mask = batch.to(device=dev, dtype=dtype), (mask.to(dev) if mask is not None else None)
        with record_outputs([self.layer_modules()[-1]]) as last:
            out = self.model(batch, attention_mask=mask, output_hidden_states=True, output_attentions=output_attentions)
        states = list(out.hidden_states)  # input to layer 1, then each layer's output
        if len(states) != self.num_layers or last[0] is None:
            raise BackboneError(f"{self.name}: transformers returned {len(states)} hidden states, expected {self.num_layers}")
        states[-1] = last[0]  # the raw last layer, whatever transformers puts last
        norm = self.final_norm_module()
        if norm is not None:
            states.append(norm(last[0]))
        hidden = torch.stack(states)  # (S, B, T, D)
        attn = torch.stack(out.attentions) if output_attentions and out.attentions else None  # (N, B, H, T, T)
        return Encoded(hidden=hidden, lengths=frames, attentions=attn)

    # ------------------------------------------------------------------ live encoder and front end

    def encoder_run(self, waveform: Tensor, utt_id: str = "?"):
        """``(run, T)``: one forward of the base model on ``waveform`` as :meth:`prepare` builds it (model dtype
        and device); ``T`` = its frames. Too short: BackboneError naming ``utt_id``."""
        w = torch.as_tensor(waveform).reshape(-1)
        p = next(self.model.parameters())
        self.check_input(int(w.shape[-1]), utt_id)
        batch, mask, frames = self.prepare([w])
        batch = batch.to(device=p.device, dtype=p.dtype)  # (1, S)
        mask = None if mask is None else mask.to(p.device)
        model = self.model
        return (lambda: model(batch, attention_mask=mask)), int(frames[0])

    def differentiable_features(self, waveforms: Tensor) -> Tensor:
        """The waveforms ``(B, N)`` the conv feature encoder reads: per row zero mean, unit variance where
        ``do_normalize`` (as :meth:`prepare`), else as given."""
        if not self.do_normalize:
            return waveforms
        mu = waveforms.mean(dim=-1, keepdim=True)
        var = waveforms.var(dim=-1, unbiased=False, keepdim=True)
        return (waveforms - mu) / torch.sqrt(var + 1e-7)

    def frontend(self, features: Tensor) -> Tensor:
        """``feature_projection(feature_extractor(features))``: the conv features, LayerNorm + Linear, ``(B, T, D)``
        (the input to the encoder: its positional conv, then the layers)."""
        m = self.model
        feats = m.feature_extractor(features).transpose(1, 2)  # (B, T, C)
        return first_output(m.feature_projection(feats))  # (B, T, D)

    def states_from_frontend(self, h: Tensor) -> list[Tensor]:
        """The encoder run on :meth:`frontend` output ``h`` (an all-True attention mask where the model takes
        one): the raw residual states 0..N recorded by hooks on the layers, then ``final_norm`` where it exists."""
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if self.use_attention_mask else None
        if mask is not None:
            h = h.clone()  # the encoder zeroes masked frames in place
        layers = self.layer_modules()
        first: list = [None]

        def grab_input(_module, args, kwargs):  # state 0 = the input of the first layer
            first[0] = args[0] if args else kwargs["hidden_states"]

        # transformers 5 collects hidden_states only at the top-level model: record each layer instead
        with self.hooks([(layers[0], grab_input)], pre=True, with_kwargs=True), record_outputs(layers) as outs:
            self.model.encoder(h, attention_mask=mask)
        if first[0] is None or any(o is None for o in outs):
            raise BackboneError(f"{self.name}: the encoder did not run every layer (LayerDrop in training mode?)")
        states = [first[0], *outs]  # raw residual states 0..N (as encode)
        norm = self.final_norm_module()
        if norm is not None:
            states.append(norm(outs[-1]))
        return states

    # ------------------------------------------------------------------ CTC head (lenses)

    def ctc_head(self) -> CTCReadout:
        """The model's own CTC read-out: ``lm_head``, vocabulary (id -> token) and blank id, loaded once.

        The backbone itself is the base model (``AutoModel``); the head comes from the checkpoint's
        ``*ForCTC`` class (``config.architectures``). A checkpoint without a CTC head is a
        BackboneError naming its class and the classes that have one. With ``pretrained: false`` the
        *trained* head of the checkpoint reads the random-weight encoder (as de Heer Kloots & Zuidema
        read untrained models through the fine-tuned model's head), with a warning.
        """
        cached = self.__dict__.get("_ctc_readout")
        if cached is None:
            cached = self._load_ctc_head()
            self.__dict__["_ctc_readout"] = cached  # not a submodule: the backbone's state_dict is unchanged
        return cached

    def _load_ctc_head(self) -> CTCReadout:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

        archs = list(getattr(self.config, "architectures", None) or [])
        ctc_names = [a for a in archs if a.endswith("ForCTC")]
        family = MODEL_FOR_CTC_MAPPING_NAMES.get(self.config.model_type)
        if not ctc_names:
            have = ", ".join(sorted({MODEL_FOR_CTC_MAPPING_NAMES[t] for t in W2V_FAMILY if t in MODEL_FOR_CTC_MAPPING_NAMES}))
            raise BackboneError(
                f"model {self.model_id!r} is a {archs[0] if archs else type(self.model).__name__} checkpoint "
                f"(config.json architectures: {archs or 'none'}) without a CTC head; the CTC lens needs a "
                f"fine-tuned CTC checkpoint of one of {have} (e.g. facebook/wav2vec2-base-960h), or a trained "
                "head: analysis.head=<path> (src/lenses/ctc.py)"
            )
        cls = getattr(transformers, ctc_names[0], None) or (getattr(transformers, family, None) if family else None)
        if cls is None:
            raise BackboneError(f"transformers has no class {ctc_names[0]!r} (model {self.model_id!r})")
        if not self.pretrained:
            warnings.warn(
                f"{self.name}: pretrained=false: the random-weight encoder is read through the trained CTC head "
                f"of {self.model_id!r}",
                stacklevel=3,
            )
        model = load_hf_weights(cls, self.model_id, required_prefix="lm_head", config=self.config,
                                revision=self.revision, attn_implementation=self.attn_implementation)  # fmt: skip
        record_model_load(self.name, "ctc_head")
        head = getattr(model, "lm_head", None)
        if not isinstance(head, torch.nn.Linear):
            raise BackboneError(f"{type(model).__name__} of {self.model_id!r} has no linear lm_head")
        if self.pretrained:  # the head must read the encoder this backbone runs (same checkpoint)
            mine = self.model.state_dict()
            for k, v in model.base_model.state_dict().items():
                if k in mine and not k.endswith(_UNUSED_WHEN_FROZEN) and not torch.equal(mine[k], v):
                    raise BackboneError(f"{self.model_id!r}: the {type(model).__name__} encoder weight {k} differs "
                                        "from the backbone's; load both from one checkpoint")  # fmt: skip
        head.eval().requires_grad_(False)
        model_class = type(model).__name__
        del model
        vocab_size = head.out_features
        try:
            from transformers import AutoTokenizer

            src = str(Path(self.model_id).expanduser()) if _local_dir(self.model_id) else self.model_id
            tok = AutoTokenizer.from_pretrained(src, revision=self.revision)
        except Exception as e:
            raise BackboneError(
                f"model {self.model_id!r} ({model_class}): its tokenizer (vocab.json, tokenizer_config.json) could "
                f"not be loaded ({_why(e)}); the CTC lens needs it to decode. Save it beside the model "
                "(tokenizer.save_pretrained(dir))."
            ) from e
        inv = {int(i): str(t) for t, i in tok.get_vocab().items()}
        if max(inv, default=-1) >= vocab_size:
            raise BackboneError(
                f"model {self.model_id!r}: the tokenizer has ids up to {max(inv)} but {model_class}.lm_head has "
                f"{vocab_size} outputs (config.vocab_size={self.config.vocab_size}): they do not belong together"
            )
        vocab = [inv.get(i, f"<{i}>") for i in range(vocab_size)]
        blank = self.config.pad_token_id if self.config.pad_token_id is not None else tok.pad_token_id
        if blank is None or not 0 <= int(blank) < vocab_size:
            raise BackboneError(f"model {self.model_id!r}: no CTC blank id (config.pad_token_id={blank})")
        delim = getattr(tok, "word_delimiter_token", None)
        specials = [t for t in tok.all_special_tokens if t != delim]
        unit = "phone" if "Phoneme" in type(tok).__name__ else "char"
        return CTCReadout(head=head, vocab=vocab, blank=int(blank), word_delimiter=delim, special_tokens=specials,
                          unit=unit, model_class=model_class, norm="final_norm")  # fmt: skip
