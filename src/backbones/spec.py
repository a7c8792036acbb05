"""Which backbone produced a number, recorded as data, and rebuilt only through the project's own classes.

Artefacts the project writes and reads back (classifier checkpoints, CTC heads, tuned lenses, ...)
record the backbone they were trained on as a *backbone record*::

    {"kind": "whisper", "args": {"model_id": "embedded:tiny.en", "pretrained": True, ...},
     "name": "whisper_tiny_en", "fingerprint": "3f2a..."}

A record is plain data. It is never handed to Hydra's ``instantiate`` (a config read from a file
could name any callable: ``numpy.load(allow_pickle=True)``, ``torch.load(weights_only=False)``,
``builtins.open``...). :func:`build_backbone` maps ``kind`` to one of the project's backbone
classes (:data:`KINDS`), keeps only that class's constructor arguments, and accepts only plain
values (str, int, float, bool, None; a flat dict of those for ``config_overrides``).
``trust_remote_code`` never comes from a file: the remote-code kind (``multihead``) is built only
when the caller passes ``trust_remote_code=True`` from the user's own configuration.

Old checkpoints stored the backbone's Hydra config (a dict with ``_target_``); :func:`read_record`
accepts those only when ``_target_`` is exactly one of the project's backbone classes, and
validates their arguments the same way.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from pathlib import Path

from src.backbones.base import BackboneError

# kind -> (Hydra target string, import path of the class or factory). The only callables a record can reach.
KINDS: dict[str, str] = {
    "hf": "src.backbones.hf.HFBackbone",
    "whisper": "src.backbones.whisper.WhisperBackbone",
    "spectral": "src.backbones.features.SpectralBaseline",
    "auto": "src.backbones.spec.auto_backbone",
    "multihead": "src.backbones.remote.multihead_backbone",
}
TARGET_TO_KIND = {v: k for k, v in KINDS.items()}
REMOTE_CODE_KINDS = frozenset({"multihead"})
_SCALARS = (str, int, float, bool, type(None))


class BackboneRecordError(BackboneError):
    """A backbone record that cannot be trusted or used; the message names the file and what is wrong."""


def _factory(kind: str):
    import importlib

    module, _, attr = KINDS[kind].rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _allowed_args(kind: str) -> set[str]:
    params = inspect.signature(_factory(kind)).parameters
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}


def _plain(value, where: str):
    """``value`` if it is a plain scalar (finite floats; no str subclasses), else BackboneRecordError."""
    if type(value) not in _SCALARS:
        raise BackboneRecordError(f"{where}: {type(value).__name__} value {value!r} (only str, int, float, bool, null)")
    if isinstance(value, float) and not math.isfinite(value):
        raise BackboneRecordError(f"{where}: non-finite value {value!r}")
    return value


def validate_args(kind: str, args: Mapping, source: str = "backbone record") -> dict:
    """The constructor arguments of ``kind`` in ``args``, checked: known names, plain values, no remote code."""
    if kind not in KINDS:
        raise BackboneRecordError(f"{source}: unknown backbone kind {kind!r}; the project builds only {sorted(KINDS)}")
    if not isinstance(args, Mapping):
        raise BackboneRecordError(f"{source}: backbone arguments must be a mapping, got {type(args).__name__}")
    allowed = _allowed_args(kind)
    out = {}
    for key, value in args.items():
        key = str(key)
        if key == "trust_remote_code":
            continue  # never from a file: the caller's own configuration decides (build_backbone)
        if key not in allowed:
            raise BackboneRecordError(f"{source}: {KINDS[kind]} takes no argument {key!r} (it takes {sorted(allowed)})")
        if key == "config_overrides" and value is not None:
            if not isinstance(value, Mapping):
                raise BackboneRecordError(f"{source}: config_overrides must be a mapping of plain values")
            out[key] = {str(k): _plain(v, f"{source}: config_overrides.{k}") for k, v in value.items()}
            continue
        out[key] = _plain(value, f"{source}: {key}")
    if "model_id" in allowed and "model_id" not in out and kind != "whisper":
        raise BackboneRecordError(f"{source}: backbone kind {kind!r} needs a model_id")
    return out


def record_from_config(cfg: Mapping, source: str = "backbone config") -> dict:
    """A backbone record from a backbone config (a ``conf/backbone/*.yaml`` dict with ``_target_``)."""
    if hasattr(cfg, "_content"):  # an OmegaConf node
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise BackboneRecordError(f"{source}: a backbone config must be a mapping, got {type(cfg).__name__}")
    target = cfg.get("_target_")
    if target not in TARGET_TO_KIND:
        raise BackboneRecordError(
            f"{source}: backbone _target_ {target!r} is not one of the project's backbone classes "
            f"({sorted(TARGET_TO_KIND)}); it is refused, not run"
        )
    kind = TARGET_TO_KIND[target]
    args = validate_args(kind, {k: v for k, v in cfg.items() if k != "_target_"}, source)
    return {"kind": kind, "args": args}


def record_of(backbone, cfg: Mapping) -> dict:
    """The record saved beside an artefact trained on ``backbone`` (built from ``cfg``): kind, args, name,
    fingerprint (the fingerprint is the check that a rebuilt backbone is the same model)."""
    rec = record_from_config(cfg)
    rec["name"] = str(getattr(backbone, "name", "?"))
    rec["fingerprint"] = str(getattr(backbone, "fingerprint", "") or "")
    return rec


def read_record(meta_backbone, source: str) -> dict:
    """Validate the backbone entry of an artefact's metadata (a record, or an old checkpoint's Hydra config).

    Raises BackboneRecordError naming ``source`` for anything that is not plain data naming one of the
    project's backbone classes."""
    if isinstance(meta_backbone, Mapping) and "kind" in meta_backbone and "_target_" not in meta_backbone:
        kind = meta_backbone.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise BackboneRecordError(f"{source}: unknown backbone kind {kind!r}; the project builds only {sorted(KINDS)}")
        rec = {"kind": kind, "args": validate_args(kind, meta_backbone.get("args") or {}, source)}
        for key in ("name", "fingerprint"):
            if meta_backbone.get(key) is not None:
                rec[key] = str(_plain(meta_backbone[key], f"{source}: {key}"))
        return rec
    if isinstance(meta_backbone, Mapping) and "_target_" in meta_backbone:
        return record_from_config(meta_backbone, source)
    raise BackboneRecordError(f"{source}: metadata names no backbone (expected a backbone record with 'kind' and 'args')")


def build_backbone(record: Mapping, *, trust_remote_code: bool = False, source: str = "backbone record"):
    """The backbone of a validated record, through the project's own classes only.

    ``trust_remote_code`` is the caller's (the user's configuration), never the file's. When the record
    carries a fingerprint, the rebuilt backbone must have the same one (else the model at ``model_id``
    has changed since the artefact was trained)."""
    record = read_record(record, source)
    kind = record["kind"]
    args = dict(record["args"])
    if kind in REMOTE_CODE_KINDS:
        if trust_remote_code is not True:
            raise BackboneRecordError(
                f"{source}: the backbone is the remote-code model {args.get('model_id')!r} (its own Python files run "
                "when it loads). trust_remote_code is never read from a file: run with backbone.trust_remote_code=true "
                "in your own configuration (after reading the model's code) to load it"
            )
        args["trust_remote_code"] = True
    backbone = _factory(kind)(**args)
    want = record.get("fingerprint")
    if want and getattr(backbone, "fingerprint", None) != want:
        raise BackboneRecordError(
            f"{source}: was trained on backbone {record.get('name', '?')} (fingerprint {want}), but "
            f"{args.get('model_id', kind)!r} now gives {backbone.name} (fingerprint {backbone.fingerprint}): "
            "the model changed since; retrain the artefact"
        )
    return backbone


def check_same_backbone(record: Mapping, backbone, source: str) -> None:
    """BackboneRecordError unless ``backbone`` (the run's configured one) is the model the record names.

    Compared by fingerprint (model id, config, layer convention, name); an old record without one is
    rebuilt (lazily: config only, no weights) to get it."""
    want = record.get("fingerprint") or build_backbone(record, trust_remote_code=False, source=source).fingerprint
    if getattr(backbone, "fingerprint", None) != want:
        raise BackboneRecordError(
            f"{source} was trained on backbone {record.get('name') or record['args'].get('model_id')!r} "
            f"(fingerprint {want}), but this run is configured with backbone {getattr(backbone, 'name', '?')!r} "
            f"(fingerprint {getattr(backbone, 'fingerprint', '?')}): the results would be labelled with a model that "
            "did not produce them. Select the checkpoint's backbone (backbone=...) or give a checkpoint trained on this one"
        )



def backbone_for(meta_backbone, backbone=None, *, trust_remote_code: bool = False, source: str = "artefact"):
    """The backbone an artefact (a classifier checkpoint, ...) was trained on, from its metadata's backbone entry.

    With ``backbone`` (the run's configured one) the record must name that model (:func:`check_same_backbone`) and
    ``backbone`` is returned; without it, the backbone is rebuilt from the validated record
    (:func:`build_backbone`; ``trust_remote_code`` is the caller's, never the file's). BackboneRecordError naming
    ``source`` otherwise."""
    record = read_record(meta_backbone, source)
    if backbone is None:
        return build_backbone(record, trust_remote_code=trust_remote_code, source=source)
    check_same_backbone(record, backbone, source)
    return backbone

# ============================================================================ backbone=local: dispatch on the model


def auto_backbone(model_id: str, pretrained: bool = True, revision: str | None = None,
                  attn_implementation: str = "sdpa", name: str | None = None, seed: int = 0,
                  normalize: bool | None = None):  # fmt: skip
    """The project's backbone class for the model at ``model_id``, read from the model itself: a
    CTranslate2 (faster-whisper) directory or a transformers config with ``model_type: whisper`` ->
    :class:`WhisperBackbone`; the wav2vec2 family -> :class:`HFBackbone`. The name, when not given,
    comes from the model's directory (or hub id)."""
    from src.backbones.whisper import WhisperBackbone, _is_ct2

    model_id = str(model_id)
    is_whisper = _is_ct2(model_id)
    if not is_whisper:
        from src.backbones.hf import load_hf_config

        is_whisper = load_hf_config(model_id, revision).model_type == "whisper"
    if is_whisper:
        if normalize is not None:
            raise BackboneError(f"{model_id!r} is a Whisper model: backbone.normalize does not apply (leave it null)")
        if revision is not None:
            raise BackboneError(f"{model_id!r} is a Whisper model: pin a local directory instead of backbone.revision")
        return WhisperBackbone(model_id, pretrained=pretrained, name=name, seed=seed,
                               attn_implementation=attn_implementation)  # fmt: skip
    from src.backbones.hf import HFBackbone

    return HFBackbone(model_id, pretrained=pretrained, revision=revision, attn_implementation=attn_implementation,
                      name=name, seed=seed, normalize=normalize)  # fmt: skip


def model_name(model_id: str) -> str:
    """A name from a model id or directory: its last path component (``/m/whisper-tiny.en`` -> ``whisper-tiny.en``)."""
    return str(model_id).split(":")[-1].rstrip("/").split("/")[-1] or str(Path(model_id).name)
