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

    def pre_acts(self, x: Tensor, xc: Tensor | None = None) -> Tensor:
        """``(x - b_dec) @ W_enc + b_enc``: (..., F) for ``x`` (..., D); one ``addmm`` (the bias added by the
        product's own pass instead of a second pass over the (N, F) result). ``xc``: ``x - b_dec`` already
        formed (the sparse TopK path forms it once for this and `pre_acts_at`)."""
        xc = (x - self.b_dec if xc is None else xc).reshape(-1, self.d_in)
        return torch.addmm(self.b_enc, xc, self.W_enc).reshape(*x.shape[:-1], self.d_sae)

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
    def decode_sparse(self, idx: Tensor, vals: Tensor, bags: LatentBags | None = None) -> Tensor:
        """``decode(z)`` for the ``z`` that holds ``vals[n, j]`` at latent ``idx[n, j]`` and 0 elsewhere:
        ``idx``, ``vals`` (N, m), the m latents of a row distinct. Costs N*m*D instead of N*F*D, and so
        does its backward (gradients to ``vals``, ``W_dec`` and ``b_dec``). ``bags``: `LatentBags` of ``idx``
        shared with another backward."""
        return sparse_rows(idx, vals, self.W_dec, bags) + self.b_dec

    def pre_acts_at(self, x: Tensor, idx: Tensor, pre: Tensor | None = None,
                    bags: LatentBags | list[LatentBags] | None = None, xc: Tensor | None = None) -> Tensor:  # fmt: skip
        """``pre_acts(x)[n, idx[n, j]]`` (N, m), differentiable in ``W_enc``, ``b_enc`` and ``b_dec``
        through these entries only (N*m*D work in the backward, not N*F*D). ``pre``: ``pre_acts(x)``
        already computed (without grad, to choose ``idx``): its values are returned, bit for bit those
        of the dense path; None computes it. ``bags``: `LatentBags` of ``idx`` shared with another backward
        (or of consecutive column blocks of ``idx``, see `_SelectedPreActs`).
        ``xc``: ``x - b_dec`` already formed (its values only: the gradients go to ``x`` and ``b_dec``
        directly), None forms it."""
        xc = (x - self.b_dec if xc is None else xc).detach()
        if pre is None:
            with torch.no_grad():
                pre = self.pre_acts(x, xc)
        return _SelectedPreActs.apply(pre.detach(), idx, x, xc, self.b_dec, self.W_enc, self.b_enc, bags)

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
        # (g . w) w with w = W / |W|, as (g . W) / |W|^2 * W: the per-row dots by one batched product and the
        # update in place (one pass over g) instead of a normalised copy of W and two (F, D) temporaries
        W, g = self.W_dec, self.W_dec.grad
        n = W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        dots = torch.bmm(g.unsqueeze(1), W.unsqueeze(2)).squeeze(2)  # (F, 1): g[f] . W[f]
        g.addcmul_(W, dots / (n * n), value=-1)

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"d_in={self.d_in}, d_sae={self.d_sae}, architecture={self.architecture}{k}"


def topk_acts(pre: Tensor, k: int) -> Tensor:
    """The k largest pre-activations of each row, through ReLU; the others 0 (SAELens's TopK)."""
    idx = topk_indices(pre, k)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(pre.gather(-1, idx)))


def _prefilter_block(n: int, k: int) -> int:
    """Block size of `topk_indices`'s prefilter for rows of ``n`` entries and ``k`` kept, 0 for none.
    torch.topk's CPU kernel runs nth_element over (value, index) pairs when n < 64k (about the same cost per
    entry whatever k) and a partial sort (heap) from 64k on; the prefilter's two selections, over n/b block
    maxima and k*b candidates, cost about n/b + k*b, least at b = sqrt(n/k). Measured at 1024 rows, one
    thread (bench/sae.py prints the default shape's ratio): 1.1-1.4x faster at n = 8-12k, 1.5-1.8x
    at 24k, 2.2-2.5x at 48k (n = 1536, k = 32: 2.3x), mixed (0.8-1.5x) from 64k on, where torch.topk's heap
    is cheap, and at 6k; so the prefilter is used for 8k <= n < 64k."""
    if k < 1 or not 8 * k <= n < 64 * k:
        return 0
    b0 = max(2, round(math.sqrt(n / k)))
    fits = [b for b in range(max(2, b0 - 2), b0 + 3) if n % b == 0]  # a divisor near b0 spares the padding copy
    return min(fits, key=lambda b: n // b + k * b) if fits else b0


def topk_indices(pre: Tensor, k: int) -> Tensor:
    """The set of ``torch.topk(pre, k, dim=-1).indices``: the k largest entries of each row, in no particular
    order; the same set as torch.topk's unless values tie at the k-th place (either tied entry may be
    chosen: torch.topk's tie order is unspecified too).

    Why not torch.topk alone: its CPU kernel copies every row into (value, index) pairs and runs
    nth_element over all n of them, about 9 ns an entry whatever k; no library op selects through a
    cheaper bound. Here a prefilter narrows each row first. The row is split into nb blocks of b entries
    (block c = columns c, c + nb, c + 2 nb, ...: strided, so the block maxima are an elementwise max of b
    contiguous slices, vectorised), and the k blocks of largest maxima are kept. Claim: every one of the
    row's k largest entries lies in a kept block (when the k-th and (k+1)-th largest values differ).
    Proof: let e be one of the k largest, in block B not kept. Every kept block's maximum is >= max(B) >= e
    (B lost to each of them), and these k maxima are k distinct entries (one per block, none is e). With e
    they make k + 1 entries >= e, so the (k+1)-th largest value is >= e >= the k-th largest: a tie, excluded.
    So torch.topk over the k*b gathered candidates (a subset of the row holding its top k) is exact. Ties in
    the block maxima do not matter (any k of the tied blocks satisfy the argument). NaN ranks above every
    number in both torch.topk and ``amax``, so rows with NaN agree too. Rows whose width is not a multiple of b
    are padded with -inf; if a padded entry were ever selected (fewer than k entries above -inf), the
    whole call falls back to torch.topk."""
    pre = pre.detach()  # indices only: no autograd record of the prefilter's steps
    n = pre.shape[-1]
    # CPU only: the cost model is torch.topk's CPU kernel (CUDA's topk is a radix select)
    b = _prefilter_block(n, k) if pre.is_floating_point() and pre.numel() and pre.device.type == "cpu" else 0
    idx = _block_topk(pre.reshape(-1, n), k, b) if b else None
    if idx is None:  # unsorted: the sort of the k kept pairs is half of torch.topk's time at k = n/2 (aux-k)
        return torch.topk(pre, k, dim=-1, sorted=False).indices
    return idx.reshape(*pre.shape[:-1], k)


def _block_topk(p: Tensor, k: int, b: int, keep: int | None = None) -> Tensor | None:
    """`topk_indices`'s prefilter and selection on ``p`` (rows, n) with blocks of ``b`` entries, keeping the
    ``keep`` (default k; fewer is wrong, tests/sae/test_topk.py shows its check catches it) blocks of
    largest maxima; None when a padding entry was selected (the caller falls back to torch.topk)."""
    keep = k if keep is None else keep
    rows, n = p.shape
    nb = -(-n // b)
    if nb * b != n:
        p = torch.cat([p, p.new_full((rows, nb * b - n), -math.inf)], 1)
    p3 = p.contiguous().view(rows, b, nb)  # p3[r, i, c] = entry c + i*nb of row r: block c is p3[r, :, c]
    blocks = torch.topk(p3.amax(1), keep, dim=1, sorted=False).indices  # (rows, keep): the kept blocks
    cand = p3.gather(2, blocks[:, None, :].expand(rows, b, keep)).reshape(rows, b * keep)  # i*keep + j: block j's i-th
    top = torch.topk(cand, k, dim=1, sorted=False).indices
    idx = blocks.gather(1, top % keep) + (top // keep) * nb
    if nb * b != n and bool((idx >= n).any()):
        return None
    return idx


class LatentBags:
    """The pairs of an index matrix ``idx`` (N, m) grouped by latent, for `_spmm_t` (``d W`` of a sparse
    product): the pairs' flat positions in latent order, each latent's first position, and each pair's row.
    Computed on first use and kept, so the backward passes over one selection (the encoder's and the
    decoder's ``d W``) sort it once."""

    def __init__(self, idx: Tensor, n: int) -> None:
        self.idx, self.n = idx, int(n)
        self._bags: tuple[Tensor, Tensor, Tensor] | None = None

    def get(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._bags is None:
            m = self.idx.shape[1]
            flat = self.idx.reshape(-1)
            # int32 keys: torch's stable sort of them takes about half the time of int64 keys (same order)
            order = torch.argsort(flat.to(torch.int32) if self.n < 2**31 else flat, stable=True)
            counts = torch.bincount(flat, minlength=self.n)
            offsets = torch.cumsum(counts, 0) - counts
            self._bags = (order, offsets, torch.div(order, m, rounding_mode="floor"))
        return self._bags


def _spmm_t(idx: Tensor, vals: Tensor, a: Tensor, n: int, bags: LatentBags | None = None) -> Tensor:
    """``S^T @ a`` (n, D) for the sparse ``S`` (N, n) holding ``vals[r, j]`` at ``(r, idx[r, j])``, ``a`` (N, D):
    out[f] = sum of ``vals[r, j] * a[r]`` over the pairs with ``idx[r, j] == f``. The pairs sorted by latent
    make one bag per latent of ``embedding_bag`` (rows of ``a`` weighted, summed; an empty bag is 0).
    ``bags``: the grouping of ``idx`` already made (`LatentBags`), None makes it."""
    order, offsets, rows = (bags or LatentBags(idx, n)).get()
    return nn.functional.embedding_bag(
        rows, a, offsets, mode="sum", per_sample_weights=vals.reshape(-1)[order]
    )


def _sampled_dots(idx: Tensor, g: Tensor, W: Tensor) -> Tensor:
    """``(g @ W.T)[r, idx[r, j]]`` (N, m) without the dense product: one dot of ``g[r]`` with ``W[idx[r, j]]``
    per pair, by ``torch.sparse.sampled_addmm`` on the CSR pattern of ``idx``. The pattern is given in
    ``idx``'s own order on CPU, columns not sorted within rows as the CSR format asks: the CPU kernel
    (aten/src/ATen/native/cpu/SampledAddmmKernel.cpp) computes each stored entry's dot on its own, reading
    its column index and nothing else of the row, so the dots come out in ``idx``'s order, the same numbers
    as for a sorted pattern, without the per-row sort and the scatter back (tests/sae/test_topk.py checks
    against the dense product). Other devices (their kernels unread here) get the sorted pattern."""
    n_rows, m = idx.shape
    cols, perm = (idx, None) if idx.device.type == "cpu" else torch.sort(idx, dim=1)  # other backends: sorted
    crow = torch.arange(0, n_rows * m + 1, m, device=idx.device)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": the one op used here is tested
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, cols.reshape(-1), torch.zeros(n_rows * m, dtype=g.dtype, device=g.device),
                                          (n_rows, W.shape[0]), check_invariants=False)  # fmt: skip
    dots = torch.sparse.sampled_addmm(pattern, g, W.t(), beta=0.0).values().reshape(n_rows, m)
    return dots if perm is None else torch.empty_like(dots).scatter_(1, perm, dots)


def sparse_rows(idx: Tensor, vals: Tensor, W: Tensor, bags: LatentBags | None = None) -> Tensor:
    """``z @ W`` (N, D) for the sparse ``z`` (N, F) holding ``vals[r, j]`` at ``(r, idx[r, j])`` (``idx``,
    ``vals`` (N, m), distinct latents within a row), ``W`` (F, D): a weighted sum of m rows of W per row,
    differentiable in ``vals`` and ``W`` at N*m*D cost. ``bags``: `LatentBags` of ``idx`` shared with
    another backward over the same ``idx`` (None: made here)."""
    return _SparseDecode.apply(idx, vals, W, bags)


class _SparseDecode(torch.autograd.Function):
    """``y[r] = sum_j vals[r, j] * W[idx[r, j]]`` (``z @ W`` for the sparse z of ``idx``/``vals``).

    Forward: ``embedding_bag``. Backward: ``d vals = (g @ W.T)`` at the pairs, ``d W = z^T @ g`` (one bag per
    latent); written out because autograd's own embedding_bag backward is slower here than the dense
    product it replaces (about 2x for m = 32 at 1024 x 384 x 1536)."""

    @staticmethod
    def forward(ctx, idx, vals, W, bags=None):
        ctx.save_for_backward(idx, vals, W)
        ctx.bags = bags
        return nn.functional.embedding_bag(idx, W, mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, g):
        idx, vals, W = ctx.saved_tensors
        g = g.contiguous()
        d_vals = _sampled_dots(idx, g, W) if ctx.needs_input_grad[1] else None
        d_W = _spmm_t(idx, vals, g, W.shape[0], ctx.bags) if ctx.needs_input_grad[2] else None
        return None, d_vals, d_W, None


class _SelectedPreActs(torch.autograd.Function):
    """``pre[r, idx[r, j]]`` with ``pre = (x - b_dec) @ W_enc + b_enc``, from ``pre`` already computed (``xc = x -
    b_dec``: its values). Backward for the incoming ``g`` (N, m), i.e. the dense ``G`` that holds g at the pairs:
    ``d W_enc = xc^T @ G`` (one bag per latent), ``d b_enc = G.sum(0)``, ``d b_dec = -W_enc @ d b_enc`` (the
    sum over rows of ``d xc = G @ W_enc.T``: one (D, F) @ (F,) product instead of N*m*D work) and, only when
    ``x`` itself needs it, ``d x = G @ W_enc.T`` (bags of columns of W_enc). Pairs may repeat a latent within a
    row (their gradients add). ``bags``: `LatentBags` of ``idx`` shared with another backward, or a list of
    them for consecutive column blocks of ``idx`` (``d W_enc`` is then the sum of the blocks' products: each
    block's grouping is shared with its own decoder backward, and ``idx``'s is never sorted as a whole);
    None: made here."""

    @staticmethod
    def forward(ctx, pre, idx, x, xc, b_dec, W_enc, b_enc, bags=None):
        ctx.save_for_backward(idx, xc, W_enc)
        ctx.bags = bags
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx, g):
        idx, xc, W_enc = ctx.saved_tensors
        g = g.contiguous()
        n = W_enc.shape[1]
        d_x = d_bdec = d_W = d_b = None
        if ctx.needs_input_grad[2]:
            d_x = nn.functional.embedding_bag(idx, W_enc.t().contiguous(), mode="sum", per_sample_weights=g)
        if ctx.needs_input_grad[5]:
            if isinstance(ctx.bags, list | tuple):
                d_W, j0 = None, 0
                for bg in ctx.bags:
                    j1 = j0 + bg.idx.shape[1]
                    part = _spmm_t(bg.idx, g[:, j0:j1], xc, n, bg)
                    d_W, j0 = part if d_W is None else d_W.add_(part), j1
                assert j0 == idx.shape[1], "the column blocks of `bags` must cover idx"
            else:
                d_W = _spmm_t(idx, g, xc, n, ctx.bags)
            d_W = d_W.t()  # (D, F) view; autograd lays the gradient out as W_enc is stored
        if ctx.needs_input_grad[4] or ctx.needs_input_grad[6]:
            per_latent = torch.zeros(n, dtype=g.dtype, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
            d_b = per_latent if ctx.needs_input_grad[6] else None
            d_bdec = -(W_enc @ per_latent) if ctx.needs_input_grad[4] else None
        return None, None, d_x, None, d_bdec, d_W, d_b, None


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
