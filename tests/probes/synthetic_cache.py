"""A synthetic activation cache on disk that `Activations` opens (for streaming tests; no backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from src.activations import CACHE_FORMAT, full_sha256, sampled_sha256


def write_cache(path: Path, layers: list[np.ndarray], lengths: np.ndarray, speakers: list[str] | None = None) -> Path:
    """Write ``layers`` (each ``(total_frames, D)``, one dtype) as a complete cache at ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    total, D = layers[0].shape
    assert int(lengths.sum()) == total
    U = len(lengths)
    ids = [f"u{i:05d}" for i in range(U)]
    np.savez(path / "index.npz", ids=np.array(ids), speakers=np.array(speakers or ["s0"] * U), offsets=offsets,
             lengths=lengths, num_samples=lengths * 320)  # fmt: skip
    files = []
    for k, a in enumerate(layers):
        f = path / f"layer_{k:02d}.npy"
        np.save(f, np.ascontiguousarray(a))
        files.append({"file": f.name, "name": str(k), "shape": list(a.shape), "dtype": a.dtype.str,
                      "bytes": f.stat().st_size, "sha256_sampled": sampled_sha256(f), "sha256": full_sha256(f)})  # fmt: skip
    meta = {"format": CACHE_FORMAT, "backbone": "synthetic", "backbone_fingerprint": "synthetic", "corpus": "synthetic",
            "corpus_fingerprint": "synthetic", "num_layers": len(layers), "layer_names": [str(k) for k in range(len(layers))],
            "hidden_size": int(D), "frame_rate": 50.0, "frame_offset": 0.0, "sample_rate": 16000,
            "dtype": np.dtype(layers[0].dtype).name, "num_utterances": U, "total_frames": int(total), "files": files,
            "index_sha256": full_sha256(path / "index.npz"), "complete": True}  # fmt: skip
    (path / "meta.json").write_text(json.dumps(meta))
    return path
