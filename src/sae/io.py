"""Saving and loading SAEs: SAELens's folder format plus the framework's metadata, written atomically.

A saved SAE is a folder::

    <path>/cfg.json                  SAELens 6 config (architecture, d_in, d_sae, k, metadata.hook_name, ...)
    <path>/sae_weights.safetensors   W_enc, b_enc, W_dec, b_dec (+ threshold for jumprelu): raw-space weights
    <path>/speechinterp.json         the framework's metadata (format, architecture as trained, layer name,
                                     backbone record, cache key, normalisation statistics, sha256 of the weights)

``sae_lens.SAE.load_from_disk(path)`` loads it as it is (tests/sae/test_saelens.py). When the SAE was
trained on standardised activations the safetensors file holds the weights folded into the raw space
(`fold_normalisation`), so SAELens applied to raw activations computes the same latents; `load_sae`
unfolds them again with the statistics of ``speechinterp.json``. A ``batchtopk`` SAE is saved for
inference as SAELens's ``jumprelu`` with its single threshold in every latent (as SAELens does).

Writing: into ``<path>.tmp-<pid>`` beside the target, renamed into place when every file is complete
(an existing SAE at ``path`` is replaced only then). Reading never runs code from a file: json and
safetensors only; a missing, truncated or altered file is an `SAEFileError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from src.sae.model import ARCHITECTURES, SAE, fold_normalisation, unfold_normalisation

__all__ = ["META_FILE", "SAEFileError", "SAEMismatchError", "check_backbone", "load_sae", "save_sae"]

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
META_FILE = "speechinterp.json"
FORMAT = 1
SAELENS_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}


class SAEFileError(RuntimeError):
    """A saved SAE that cannot be read: missing, truncated, altered or not an SAE folder (names the file)."""


class SAEMismatchError(ValueError):
    """An SAE used with a backbone whose width or layers do not match (names both)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _saelens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # not installed: the format of the version the files were written for
        return "6.54.12"


def _plain(x):
    """Metadata values as json: tensors -> lists."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def saelens_config(sae: SAE) -> dict:
    """The ``cfg.json`` dict, with SAELens 6's own field names."""
    meta = sae.meta
    backbone = meta.get("backbone") or {}
    cfg = {
        "architecture": SAELENS_ARCH[sae.architecture],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # standardisation is folded into the weights
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": _saelens_version(),
            "sae_lens_training_version": None,
            "model_name": backbone.get("name") if isinstance(backbone, dict) else None,
            "hook_name": meta.get("layer_name"),
            "hook_head_index": None,
            "context_size": None,
            "prepend_bos": False,
            "dataset_path": meta.get("cache_key"),
            "model_from_pretrained_kwargs": {},
            "trained_with": "speechinterp (src/sae)",
        },
    }
    if sae.architecture == "topk":
        cfg["k"] = int(sae.k)
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write ``sae`` to the folder ``path`` (SAELens format + ``speechinterp.json``), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = fold_normalisation(sae)
        if sae.architecture in ("jumprelu", "batchtopk"):
            weights["threshold"] = sae.threshold.detach().float().contiguous().clone()
        weights = {k: v.float().cpu().contiguous() for k, v in weights.items()}
        save_file(weights, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(saelens_config(sae), indent=2))
        meta = {k: _plain(v) for k, v in sae.meta.items()}
        record = {
            "format": FORMAT,
            "architecture": sae.architecture,
            "k": sae.k,
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "topk_threshold": float(sae.topk_threshold),
            "weights_sha256": _sha256(tmp / WEIGHTS_FILE),
            "cfg_sha256": _sha256(tmp / CFG_FILE),
            "meta": meta,
        }
        (tmp / META_FILE).write_text(json.dumps(record, indent=2))
        for f in tmp.iterdir():  # on disk before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _read_json(f: Path, what: str) -> dict:
    if not f.is_file():
        raise SAEFileError(f"{f}: missing; {f.parent} is not a complete saved SAE ({what})")
    try:
        out = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise SAEFileError(
            f"{f}: unreadable json ({e}); the SAE folder is damaged or was not written completely"
        ) from e
    if not isinstance(out, dict):
        raise SAEFileError(f"{f}: expected a json object, got {type(out).__name__}")
    return out


def load_sae(path: str | Path, backbone=None, device: str | torch.device = "cpu") -> SAE:
    """The SAE saved at ``path`` (json + safetensors only; nothing in the files is executed).

    Raises `SAEFileError` (naming the file) for a missing, truncated or altered file, and
    `SAEMismatchError` when ``backbone`` is given and its width or layers do not match the SAE.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise SAEFileError(
            f"{path}: no saved SAE here (expected a folder with {CFG_FILE}, {WEIGHTS_FILE}, {META_FILE})"
        )
    rec = _read_json(path / META_FILE, "the framework's metadata")
    cfg = _read_json(path / CFG_FILE, "the SAELens config")
    wf = path / WEIGHTS_FILE
    if not wf.is_file():
        raise SAEFileError(f"{wf}: missing; {path} is not a complete saved SAE")
    if rec.get("format") != FORMAT or rec.get("architecture") not in ARCHITECTURES:
        raise SAEFileError(f"{path / META_FILE}: format {rec.get('format')!r} / architecture {rec.get('architecture')!r} "
                           f"is not an SAE this code writes (format {FORMAT})")  # fmt: skip
    if _sha256(wf) != rec.get("weights_sha256"):
        raise SAEFileError(f"{wf}: checksum mismatch ({wf.stat().st_size} bytes): truncated or altered since it was "
                           "saved; save the SAE again")  # fmt: skip
    if _sha256(path / CFG_FILE) != rec.get("cfg_sha256"):
        raise SAEFileError(f"{path / CFG_FILE}: checksum mismatch: altered since it was saved")
    try:
        w = load_file(str(wf))
    except (SafetensorError, OSError, ValueError) as e:
        raise SAEFileError(f"{wf}: not a readable safetensors file ({e})") from e
    d_in, d_sae = int(rec["d_in"]), int(rec["d_sae"])
    if int(cfg.get("d_in", -1)) != d_in or int(cfg.get("d_sae", -1)) != d_sae:
        raise SAEFileError(f"{path / CFG_FILE}: d_in/d_sae {cfg.get('d_in')}/{cfg.get('d_sae')} differ from "
                           f"{META_FILE}'s {d_in}/{d_sae}")  # fmt: skip
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if rec["architecture"] in ("jumprelu", "batchtopk"):
        want["threshold"] = (d_sae,)
    for k, shape in want.items():
        if k not in w or tuple(w[k].shape) != shape:
            got = tuple(w[k].shape) if k in w else "missing"
            raise SAEFileError(f"{wf}: tensor {k} is {got}, expected {shape}")
    meta = dict(rec.get("meta") or {})
    sae = SAE(d_in, d_sae, architecture=rec["architecture"], k=rec.get("k"), meta=meta)
    mean = torch.tensor(meta["norm_mean"], dtype=torch.float32) if meta.get("norm_mean") is not None else None
    std = torch.tensor(meta["norm_std"], dtype=torch.float32) if meta.get("norm_std") is not None else None
    if mean is not None and (tuple(mean.shape) != (d_in,) or tuple(std.shape) != (d_in,)):
        raise SAEFileError(f"{path / META_FILE}: normalisation statistics are not of width {d_in}")
    inner = unfold_normalisation({k: w[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, mean, std)
    with torch.no_grad():
        for k, v in inner.items():
            getattr(sae, k).copy_(v)
        if rec["architecture"] == "jumprelu":
            sae.log_threshold.copy_(w["threshold"].clamp_min(1e-30).log())
        sae.topk_threshold.fill_(float(rec.get("topk_threshold", -1.0)))
    sae.eval()
    if backbone is not None:
        check_backbone(sae, backbone, source=str(path))
    return sae.to(device)


def check_backbone(sae: SAE, backbone, source: str = "SAE") -> None:
    """Refuse an SAE whose input width or layer is not the backbone's (the message names both)."""
    width = int(backbone.hidden_size)
    name = getattr(backbone, "name", type(backbone).__name__)
    if width != sae.d_in:
        raise SAEMismatchError(f"{source}: the SAE reads {sae.d_in}-dim activations (layer "
                               f"{sae.meta.get('layer_name')!r}) but backbone {name!r} has hidden size {width}")  # fmt: skip
    layer = sae.meta.get("layer_name")
    if layer is not None:
        from src.activations import backbone_layer_names

        names = [str(n) for n in backbone_layer_names(backbone)]
        if str(layer) not in names:
            raise SAEMismatchError(f"{source}: the SAE was trained on layer {layer!r}, which backbone {name!r} does "
                                   f"not have (its layers: {', '.join(names)})")  # fmt: skip
    rec = sae.meta.get("backbone") or {}
    fp, bfp = (
        rec.get("fingerprint") if isinstance(rec, dict) else None,
        getattr(backbone, "fingerprint", None),
    )
    if fp and bfp and str(fp) != str(bfp):
        import logging

        logging.getLogger(__name__).warning("%s: trained on backbone fingerprint %s, this backbone (%s) is %s", source,
                                            fp, name, bfp)  # fmt: skip
