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
import warnings

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

    # ------------------------------------------------------------------ sparse maths (TopK training)
    def decode_sparse(self, idx: Tensor, vals: Tensor) -> Tensor:
        """``decode(z)`` for the ``z`` that holds ``vals[n, j]`` at latent ``idx[n, j]`` and 0 elsewhere:
        ``idx``, ``vals`` (N, m), the m latents of a row distinct. Costs N*m*D instead of N*F*D, and so
        does its backward (gradients to ``vals``, ``W_dec`` and ``b_dec``)."""
        return sparse_rows(idx, vals, self.W_dec) + self.b_dec

    def pre_acts_at(self, x: Tensor, idx: Tensor, pre: Tensor | None = None) -> Tensor:
        """``pre_acts(x)[n, idx[n, j]]`` (N, m), differentiable in ``W_enc``, ``b_enc`` and ``b_dec``
        through these entries only (N*m*D work in the backward, not N*F*D). ``pre``: ``pre_acts(x)``
        already computed (without grad, to choose ``idx``): its values are returned, bit for bit those
        of the dense path; None computes it."""
        if pre is None:
            with torch.no_grad():
                pre = self.pre_acts(x)
        return _SelectedPreActs.apply(pre.detach(), idx, x - self.b_dec, self.W_enc, self.b_enc)

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


def _spmm_t(idx: Tensor, vals: Tensor, a: Tensor, n: int) -> Tensor:
    """``S^T @ a`` (n, D) for the sparse ``S`` (N, n) holding ``vals[r, j]`` at ``(r, idx[r, j])``, ``a`` (N, D):
    out[f] = sum of ``vals[r, j] * a[r]`` over the pairs with ``idx[r, j] == f``. The pairs sorted by latent
    make one bag per latent of ``embedding_bag`` (rows of ``a`` weighted, summed; an empty bag is 0)."""
    m = idx.shape[1]
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n)
    offsets = torch.cumsum(counts, 0) - counts
    rows = torch.div(order, m, rounding_mode="floor")
    return nn.functional.embedding_bag(
        rows, a, offsets, mode="sum", per_sample_weights=vals.reshape(-1)[order]
    )


def _sampled_dots(idx: Tensor, g: Tensor, W: Tensor) -> Tensor:
    """``(g @ W.T)[r, idx[r, j]]`` (N, m) without the dense product: one dot of ``g[r]`` with ``W[idx[r, j]]``
    per pair (``torch.sparse.sampled_addmm`` on the CSR pattern; its row's columns sorted and distinct,
    as CSR requires, so the pairs are sorted within rows here and the dots put back in ``idx``'s order)."""
    n_rows, m = idx.shape
    cols, perm = torch.sort(idx, dim=1)
    crow = torch.arange(0, n_rows * m + 1, m, device=idx.device)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": the one op used here is tested
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, cols.reshape(-1), torch.zeros(n_rows * m, dtype=g.dtype, device=g.device),
                                          (n_rows, W.shape[0]), check_invariants=False)  # fmt: skip
    dots = torch.sparse.sampled_addmm(pattern, g, W.t(), beta=0.0).values().reshape(n_rows, m)
    return torch.empty_like(dots).scatter_(1, perm, dots)


def sparse_rows(idx: Tensor, vals: Tensor, W: Tensor) -> Tensor:
    """``z @ W`` (N, D) for the sparse ``z`` (N, F) holding ``vals[r, j]`` at ``(r, idx[r, j])`` (``idx``,
    ``vals`` (N, m), distinct latents within a row), ``W`` (F, D): a weighted sum of m rows of W per row,
    differentiable in ``vals`` and ``W`` at N*m*D cost."""
    return _SparseDecode.apply(idx, vals, W)


class _SparseDecode(torch.autograd.Function):
    """``y[r] = sum_j vals[r, j] * W[idx[r, j]]`` (``z @ W`` for the sparse z of ``idx``/``vals``).

    Forward: ``embedding_bag``. Backward: ``d vals = (g @ W.T)`` at the pairs, ``d W = z^T @ g`` (one bag per
    latent); written out because autograd's own embedding_bag backward is slower here than the dense
    product it replaces (about 2x for m = 32 at 1024 x 384 x 1536)."""

    @staticmethod
    def forward(ctx, idx, vals, W):
        ctx.save_for_backward(idx, vals, W)
        return nn.functional.embedding_bag(idx, W, mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, g):
        idx, vals, W = ctx.saved_tensors
        g = g.contiguous()
        d_vals = _sampled_dots(idx, g, W) if ctx.needs_input_grad[1] else None
        d_W = _spmm_t(idx, vals, g, W.shape[0]) if ctx.needs_input_grad[2] else None
        return None, d_vals, d_W


class _SelectedPreActs(torch.autograd.Function):
    """``pre[r, idx[r, j]]`` with ``pre = xc @ W_enc + b_enc`` (``xc = x - b_dec``), from ``pre`` already
    computed. Backward for the incoming ``g`` (N, m), i.e. the dense ``G`` that holds g at the pairs:
    ``d xc = G @ W_enc.T`` (bags of columns of W_enc), ``d W_enc = xc^T @ G`` (one bag per latent),
    ``d b_enc = G.sum(0)``. Pairs may repeat a latent within a row (their gradients add)."""

    @staticmethod
    def forward(ctx, pre, idx, xc, W_enc, b_enc):
        ctx.save_for_backward(idx, xc, W_enc)
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx, g):
        idx, xc, W_enc = ctx.saved_tensors
        g = g.contiguous()
        n = W_enc.shape[1]
        d_xc = d_W = d_b = None
        if ctx.needs_input_grad[2]:
            d_xc = nn.functional.embedding_bag(idx, W_enc.t().contiguous(), mode="sum", per_sample_weights=g)
        if ctx.needs_input_grad[3]:
            d_W = _spmm_t(idx, g, xc.detach(), n).t().contiguous()
        if ctx.needs_input_grad[4]:
            d_b = torch.zeros(n, dtype=g.dtype, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
        return None, None, d_xc, d_W, d_b


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
