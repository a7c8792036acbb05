"""Sparse autoencoders: ReLU + L1, TopK, BatchTopK and JumpReLU (one `SAE` class, four architectures).

Conventions (those of SAELens 6, so the weights mean the same there; tests/sae/test_saelens.py checks the
forward pass against sae-lens on the same weights):

- ``pre = (x - b_dec) @ W_enc + b_enc`` (the pre-encoder bias is ``b_dec``, SAELens's
  ``apply_b_dec_to_input=True``); ``x_hat = z @ W_dec + b_dec``.
- ``relu``: ``z = relu(pre)``. ``topk``: the k largest of ``pre`` per frame, through ReLU, others 0.
  ``batchtopk``: in training, the ``k * B`` largest of ``relu(pre)`` over the whole (global) batch;
  at inference a JumpReLU whose threshold (one value for every latent) is a running mean of the smallest
  kept activation per batch (Bussmann et al. 2024), saved as SAELens's ``jumprelu``.
  ``jumprelu``: ``z = relu(pre) * (pre > threshold)`` with a per-latent threshold.
- Shapes: ``W_enc (D, F)``, ``b_enc (F,)``, ``W_dec (F, D)``, ``b_dec (D,)``, ``threshold (F,)``.

Standardisation: when the SAE was trained on standardised activations, ``meta["norm_mean"]`` /
``meta["norm_std"]`` hold the statistics and ``encode``/``decode``/``forward`` work in the standardised
space; ``normalize(x)`` / ``denormalize(x)`` convert. The SAELens file holds the same SAE folded into the
raw space (exact algebra, see `fold_normalisation`), so SAELens applied to raw activations gives the same
latents.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")


class SAEConfigError(ValueError):
    """An SAE configuration that cannot be built (names the key)."""


class SAE(nn.Module):
    """A sparse autoencoder of ``d_in`` inputs and ``d_sae`` latents.

    Args:
        d_in, d_sae: input width and number of latents.
        architecture: one of ``relu``, ``topk``, ``batchtopk``, ``jumprelu``.
        k: active latents per frame (``topk``, ``batchtopk``: mean per frame).
        meta: the framework's metadata (``layer_name``, ``backbone``, ``norm_mean``/``norm_std``, ...).
        seed: initialisation seed (encoder = decoder transpose, decoder rows of unit norm).
        jumprelu_init_threshold: initial threshold of every JumpReLU latent.
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = None, meta: dict | None = None,
                 seed: int = 0, jumprelu_init_threshold: float = 0.001) -> None:  # fmt: skip
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise SAEConfigError(f"sae.architecture={architecture!r}: choose from {', '.join(ARCHITECTURES)}")
        if d_in < 1 or d_sae < 1:
            raise SAEConfigError(f"SAE widths must be positive, got d_in={d_in} d_sae={d_sae}")
        if architecture in ("topk", "batchtopk"):
            if k is None or not 1 <= int(k) <= d_sae:
                raise SAEConfigError(f"sae.k={k!r}: {architecture} needs 1 <= k <= d_sae ({d_sae})")
            k = int(k)
        self.d_in, self.d_sae, self.architecture, self.k = int(d_in), int(d_sae), architecture, k
        self.meta: dict = dict(meta or {})
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(self.d_sae, self.d_in, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())  # (F, D)
        self.W_enc = nn.Parameter(w.t().clone())  # (D, F)
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))
        if architecture == "jumprelu":  # trained through its log (positive), as SAELens's training SAE
            self.log_threshold = nn.Parameter(torch.full((self.d_sae,), math.log(jumprelu_init_threshold)))
        # batchtopk: the inference threshold (running mean of the smallest kept activation); -1 = not set
        self.register_buffer("topk_threshold", torch.tensor(-1.0, dtype=torch.float64))

    # ------------------------------------------------------------------ maths
    @property
    def threshold(self) -> Tensor:
        """Per-latent threshold ``(F,)`` of ``jumprelu`` (and of ``batchtopk`` at inference)."""
        if self.architecture == "jumprelu":
            return self.log_threshold.exp()
        if self.architecture == "batchtopk":
            return torch.full((self.d_sae,), max(float(self.topk_threshold), 0.0), dtype=self.W_enc.dtype,
                              device=self.W_enc.device)  # fmt: skip
        raise AttributeError(f"a {self.architecture} SAE has no threshold")

    def pre_acts(self, x: Tensor) -> Tensor:
        """``(x - b_dec) @ W_enc + b_enc``: (N, F)."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Latents from pre-activations with the inference rule of the architecture: (N, F)."""
        if self.architecture == "relu":
            return torch.relu(pre)
        if self.architecture == "topk":
            return topk_acts(pre, self.k)
        if self.architecture == "batchtopk" and float(self.topk_threshold) < 0:
            return batch_topk_acts(pre, self.k)  # no threshold estimated yet (untrained): the batch rule
        th = self.threshold
        return torch.relu(pre) * (pre > th)

    def encode(self, x: Tensor) -> Tensor:
        """Latents of ``x`` (N, D) -> (N, F) (in the standardised space when the SAE has statistics)."""
        return self.activate(self.pre_acts(x))

    def decode(self, z: Tensor) -> Tensor:
        """``z @ W_dec + b_dec``: (N, F) -> (N, D)."""
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(x))``: (N, D)."""
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------ standardisation
    @property
    def has_normalisation(self) -> bool:
        return self.meta.get("norm_mean") is not None and self.meta.get("norm_std") is not None

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.as_tensor(self.meta["norm_mean"], dtype=x.dtype, device=x.device)
        std = torch.as_tensor(self.meta["norm_std"], dtype=x.dtype, device=x.device)
        return mean, std

    def normalize(self, x: Tensor) -> Tensor:
        """Raw activations -> the SAE's input space (identity when trained without standardisation)."""
        if not self.has_normalisation:
            return x
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """The SAE's space -> raw activations (identity when trained without standardisation)."""
        if not self.has_normalisation:
            return x
        mean, std = self._stats(x)
        return x * std + mean

    # ------------------------------------------------------------------ decoder norm
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rows of ``W_dec`` (one per latent) to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the component of ``W_dec.grad`` along each (unit) decoder row, so an optimiser step
        followed by `normalize_decoder` moves along the sphere (Bricken et al. 2023)."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.grad -= (self.W_dec.grad * w).sum(dim=1, keepdim=True) * w

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"d_in={self.d_in}, d_sae={self.d_sae}, architecture={self.architecture}{k}"


def topk_acts(pre: Tensor, k: int) -> Tensor:
    """The k largest pre-activations of each row, through ReLU; the others 0 (SAELens's TopK)."""
    top = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def batch_topk_acts(pre: Tensor, k: int, kth_value: float | None = None) -> Tensor:
    """BatchTopK: the ``k * N`` largest of ``relu(pre)`` over the batch (N rows); ``kth_value`` (the
    global batch's ``k * B``-th largest, for a DDP share of a batch) replaces the local selection."""
    acts = torch.relu(pre)
    if kth_value is None:
        flat = acts.reshape(-1)
        n = min(flat.numel(), k * pre.shape[0])
        if n == 0:
            return torch.zeros_like(acts)
        top = torch.topk(flat, n)
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(acts.shape)
    return acts * ((acts >= kth_value) & (acts > 0))


def fold_normalisation(sae: SAE) -> dict[str, Tensor]:
    """The SAE's weights acting on raw activations: with ``x_n = (x - m) / s``,
    ``(x_n - b_dec) @ W_enc = (x - (m + s*b_dec)) @ (W_enc / s[:, None])`` and
    ``s * (z @ W_dec + b_dec) + m = z @ (W_dec * s) + (m + s*b_dec)``: the same latents and the raw
    reconstruction. Without statistics the weights are returned as they are."""
    w = {
        "W_enc": sae.W_enc.detach(),
        "b_enc": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    if sae.has_normalisation:
        m, s = sae._stats(w["W_enc"])
        w = {"W_enc": w["W_enc"] / s[:, None], "b_enc": w["b_enc"], "W_dec": w["W_dec"] * s[None, :],
             "b_dec": m + s * w["b_dec"]}  # fmt: skip
    return {k: v.contiguous().clone() for k, v in w.items()}


def unfold_normalisation(w: dict[str, Tensor], mean: Tensor | None, std: Tensor | None) -> dict[str, Tensor]:
    """Inverse of `fold_normalisation`: raw-space weights -> the standardised-space ones."""
    if mean is None or std is None:
        return w
    return {"W_enc": w["W_enc"] * std[:, None], "b_enc": w["b_enc"], "W_dec": w["W_dec"] / std[None, :],
            "b_dec": (w["b_dec"] - mean) / std}  # fmt: skip
