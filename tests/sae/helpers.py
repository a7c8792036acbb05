"""Helpers shared by the test modules of this folder (imported from here, not from another test module)."""

from __future__ import annotations

import numpy as np
import torch

from src.activations import Activations
from src.sae import SAE


def layer_arrays(path) -> np.ndarray:
    """(N, L, D) float32 of a cache through np.load (independent of the stream's preadv reads)."""
    acts = Activations(path)
    return np.stack([np.load(path / f["file"]).astype(np.float32) for f in acts.meta["files"]], axis=1)


def make(arch="topk", d=8, f=24, std=True):
    g = torch.Generator().manual_seed(3)
    meta = {"layer_name": "2", "layer": 2, "backbone": {"kind": "hf", "args": {}, "name": "tiny", "fingerprint": "fp"},
            "cache_key": "tiny__c__abc"}  # fmt: skip
    if std:
        meta["norm_mean"] = torch.randn(d, generator=g).tolist()
        meta["norm_std"] = (torch.rand(d, generator=g) + 0.5).tolist()
    s = SAE(d, f, arch, k=4, meta=meta, seed=1)
    with torch.no_grad():
        s.b_enc.copy_(torch.randn(f, generator=g))
        s.b_dec.copy_(torch.randn(d, generator=g))
        s.W_dec.mul_(torch.rand(f, 1, generator=g) + 0.5)
        if arch == "jumprelu":
            s.log_threshold.copy_(torch.randn(f, generator=g) * 0.3)
        if arch == "batchtopk":
            s.topk_threshold.fill_(0.25)
    return s


def exact_sae(d: int, layer: str) -> SAE:
    """A ReLU SAE that reconstructs exactly: latents relu(x), relu(-x); decoder [I; -I]; plus latent 2d, which
    never fires (bias -1e9) and would add a unit vector if it did."""
    sae = SAE(d, 2 * d + 1, "relu", meta={"layer_name": layer})
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye, torch.ones(d, 1)], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye, torch.ones(1, d) / d**0.5], 0))
        sae.b_enc.zero_()
        sae.b_enc[2 * d] = -1e9
        sae.b_dec.zero_()
    return sae
