"""Synthetic activation caches built from a known sparse dictionary (tests and bench/sae.py).

Each frame is a sparse non-negative combination of ``k`` of ``n_atoms`` known unit vectors plus
Gaussian noise; the cache is written in the real format (``meta.json`` with checksums and value
ranges, ``index.npz``, one ``.npy`` per layer), chunk by chunk, so `Activations` opens it as any other.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np


def random_dictionary(n_atoms: int, dim: int, seed: int = 0) -> np.ndarray:
    """``(n_atoms, dim)`` float32 unit rows."""
    d = np.random.default_rng([seed, 1]).standard_normal((n_atoms, dim)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def sparse_frames(dictionary: np.ndarray, n: int, k: int, noise: float, rng: np.random.Generator,
                  distinct: bool = True) -> np.ndarray:  # fmt: skip
    """``(n, D)`` float32 frames: each the sum of ``k`` atoms (distinct unless ``distinct=False``, which is
    cheaper for large dictionaries) with coefficients in [1, 3), plus noise."""
    m, d = dictionary.shape
    if distinct:
        idx = np.argsort(rng.random((n, m)), axis=1)[:, :k]  # (n, k) distinct atoms
    else:
        idx = rng.integers(0, m, size=(n, k))
    coef = rng.uniform(1.0, 3.0, size=(n, k)).astype(np.float32)
    x = np.einsum("nk,nkd->nd", coef, dictionary[idx])
    if noise:
        x += noise * rng.standard_normal((n, d)).astype(np.float32)
    return x.astype(np.float32)


def _npy_header(shape, dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": tuple(shape),
        },
    )
    return buf.getvalue()


def write_cache(path: str | Path, lengths, layer_chunks, dim: int, num_layers: int, dtype: str = "float32",
                backbone: str = "synthetic", corpus: str = "synthetic", ids=None, layer_names=None,
                chunk: int = 65536) -> Path:  # fmt: skip
    """Write a complete activation cache at ``path``.

    ``layer_chunks(layer, start, stop) -> (stop - start, dim)`` gives the rows of each layer (called
    chunk by chunk, in order). ``lengths``: frames per utterance."""
    from src.activations import CACHE_FORMAT, CHECKSUM_BLOCK, CHECKSUM_BLOCKS, full_sha256, sampled_sha256
    from src.layers import LAYER_CONVENTION

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    frames = int(lengths.sum())
    dt = np.dtype(dtype)
    header = _npy_header((frames, dim), dt)
    names = [str(n) for n in (layer_names or range(num_layers))]
    files, stats = [], []
    for k in range(num_layers):
        f = tmp / f"layer_{k:02d}.npy"
        h = hashlib.sha256(header)
        lo, hi = np.inf, -np.inf
        with open(f, "wb") as fh:
            fh.write(header)
            for s in range(0, frames, chunk):
                e = min(frames, s + chunk)
                x = np.ascontiguousarray(np.asarray(layer_chunks(k, s, e), dtype=np.float32).astype(dt))
                if not np.isfinite(x).all():
                    raise ValueError(f"layer {k} rows {s}..{e}: non-finite values")
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
                b = memoryview(x.reshape(-1).view(np.uint8))
                h.update(b)
                fh.write(b)
        files.append({"file": f.name, "name": names[k], "shape": [frames, dim], "dtype": dt.str, "bytes": f.stat().st_size,
                      "sha256_sampled": sampled_sha256(f), "sha256": h.hexdigest()})  # fmt: skip
        stats.append({"name": names[k], "min": lo, "max": hi, "absmax": max(abs(lo), abs(hi))})
    n_utt = len(lengths)
    ids = np.array(list(ids) if ids is not None else [f"u{i:06d}" for i in range(n_utt)])
    np.savez(tmp / "index.npz", ids=ids, speakers=np.array([f"s{i % 4}" for i in range(n_utt)]), offsets=offsets,
             lengths=lengths, num_samples=lengths * 320)  # fmt: skip
    meta = {"format": CACHE_FORMAT, "backbone": backbone, "backbone_fingerprint": f"{backbone}-{num_layers}x{dim}",
            "corpus": corpus, "corpus_fingerprint": f"{corpus}-{frames}", "num_layers": num_layers,
            "layer_names": names, "layer_convention": LAYER_CONVENTION, "hidden_size": dim, "frame_rate": 50.0,
            "frame_offset": 0.0, "sample_rate": 16000, "dtype": dt.name, "num_utterances": n_utt,
            "total_frames": frames, "layer_stats": stats, "files": files, "index_sha256": full_sha256(tmp / "index.npz"),
            "checksum": {"algorithm": "sha256", "block_bytes": CHECKSUM_BLOCK, "blocks": CHECKSUM_BLOCKS},
            "build_seconds": 0.0, "complete": True}  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def write_dictionary_cache(path: str | Path, frames: int, dim: int, n_atoms: int, k: int, noise: float = 0.05,
                           num_layers: int = 1, seed: int = 0, dtype: str = "float32", utt_len: int = 50,
                           distinct: bool = True) -> tuple[Path, np.ndarray]:  # fmt: skip
    """A cache whose every layer holds frames from one known dictionary (layer l: its own dictionary,
    seed + l). Returns the path and the dictionaries ``(num_layers, n_atoms, dim)``."""
    dicts = np.stack([random_dictionary(n_atoms, dim, seed + layer) for layer in range(num_layers)])
    lengths = [utt_len] * (frames // utt_len) + ([frames % utt_len] if frames % utt_len else [])

    def rows(layer, s, e):
        rng = np.random.default_rng([seed, 2, layer, s])
        return sparse_frames(dicts[layer], e - s, k, noise, rng, distinct)

    return write_cache(path, lengths, rows, dim, num_layers, dtype=dtype), dicts


def mean_max_cosine(learned: np.ndarray, truth: np.ndarray) -> float:
    """For each true atom, the largest cosine similarity with a learned decoder row; their mean."""
    a = learned / np.linalg.norm(learned, axis=1, keepdims=True).clip(1e-12)
    b = truth / np.linalg.norm(truth, axis=1, keepdims=True).clip(1e-12)
    return float((b @ a.T).max(axis=1).mean())
