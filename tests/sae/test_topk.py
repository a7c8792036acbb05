"""The exact top-k selection (`topk_indices`, its block prefilter `_block_topk`) against torch.topk, and the
other hand-written pieces of the sparse TopK step (`_sampled_dots` on an unsorted CSR pattern, `LatentBags`
shared, `remove_parallel_grad`, ``pre_acts``'s addmm, fused Adam) against their literal formulas."""

from __future__ import annotations

import math

import pytest
import torch

from src.sae.model import (
    SAE,
    LatentBags,
    _block_topk,
    _prefilter_block,
    _sampled_dots,
    _spmm_t,
    topk_acts,
    topk_indices,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def check_topk(pre: torch.Tensor, k: int, idx: torch.Tensor) -> None:
    """``idx`` is a top-k of every row of ``pre`` (2-D): in range, distinct within a row, and its values are
    torch.topk's (as multisets: only a tie can tell two top-k selections apart); without ties at the k-th
    place, the same set of indices as torch.topk's."""
    ref = torch.topk(pre, k, dim=1)
    assert idx.shape == ref.indices.shape and idx.dtype == torch.int64
    assert ((idx >= 0) & (idx < pre.shape[1])).all()
    srt = idx.sort(1).values
    assert (srt.diff(dim=1) > 0).all(), "an index repeated within a row"
    got = pre.gather(1, idx).sort(1).values
    want = ref.values.sort(1).values
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num()), "not the k largest values"
    if pre.shape[1] > k:  # rows whose k-th and (k+1)-th values differ: the very same set
        kth = torch.topk(pre, k + 1, dim=1).values
        untied = kth[:, k - 1] != kth[:, k]
        assert torch.equal(srt[untied], ref.indices.sort(1).values[untied])


def distinct_rows(rows: int, n: int, gen: torch.Generator, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Rows of distinct values (a random permutation of 0..n-1 per row, shifted and scaled): no ties."""
    base = torch.argsort(torch.rand(rows, n, generator=gen), dim=1).to(dtype)
    return (base - n / 2) * scale


SHAPES = [(1, 48, 4), (7, 96, 8), (64, 100, 8), (33, 1536, 32), (16, 1537, 32), (5, 997, 13), (8, 384, 48),
          (3, 250, 31), (200, 1536, 192), (4, 1000, 1), (4, 10, 10), (4, 50, 49), (9, 300, 4)]  # fmt: skip


@pytest.mark.parametrize(("rows", "n", "k"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_indices_equals_torch_topk(rows, n, k, dtype):
    """Random rows (Gaussian and tie-free permutations, magnitudes 1e-30 to 1e30), widths that blocks do and
    do not divide, k from 1 to n, the prefilter used or not: the same sets as torch.topk."""
    g = torch.Generator().manual_seed(rows * 10007 + n * 31 + k)
    for scale in (1e-30, 1.0, 1e30):
        for pre in (torch.randn(rows, n, generator=g, dtype=dtype) * scale, distinct_rows(rows, n, g, dtype, scale)):
            check_topk(pre, k, topk_indices(pre, k))


def test_prefilter_used_where_it_pays():
    assert _prefilter_block(1536, 32) in (6, 8)  # the default d_sae, k
    assert _prefilter_block(1537, 32) > 0 and 1537 % _prefilter_block(1537, 32) != 0  # padded
    assert _prefilter_block(48, 4) > 0  # the training tests' shape (tests/sae/test_sparse_train.py)
    assert _prefilter_block(50, 49) == 0 and _prefilter_block(1536, 4) == 0  # torch.topk alone


@pytest.mark.parametrize(("n", "k", "b"), [(1536, 32, 6), (1536, 32, 8), (1537, 32, 6), (100, 8, 3), (48, 4, 5)])
def test_block_topk_every_block_size(n, k, b):
    """The prefilter itself at block sizes the heuristic would not choose, dividing n or not."""
    g = torch.Generator().manual_seed(n + k + b)
    for pre in (torch.randn(50, n, generator=g), distinct_rows(50, n, g)):
        idx = _block_topk(pre, k, b)
        assert idx is not None
        check_topk(pre, k, idx)


def test_ties_and_infinities():
    """Integer-valued rows (ties everywhere, at the k-th place too), rows with -inf entries (fewer than k
    finite in some, so -inf ties at the k-th place; a width the blocks do not divide, so padding could be
    chosen there and the call must fall back), rows with +inf: always a valid top-k (values as torch.topk's)."""
    g = torch.Generator().manual_seed(5)
    for n, k in ((1536, 32), (1537, 32), (200, 16)):
        tied = torch.randint(0, 6, (64, n), generator=g).float()
        check_topk(tied, k, topk_indices(tied, k))
        sparse = torch.full((64, n), -math.inf)
        finite = torch.rand(64, n, generator=g) < torch.linspace(0.001, 0.5, 64)[:, None]
        sparse[finite] = torch.randn(int(finite.sum()), generator=g)
        assert (finite.sum(1) < k).any()  # some rows need -inf entries among their k
        check_topk(sparse, k, topk_indices(sparse, k))
        big = torch.randn(64, n, generator=g)
        big[:, ::97] = math.inf
        check_topk(big, k, topk_indices(big, k))


def test_nan_ranks_first_as_in_torch_topk():
    pre = torch.randn(16, 1536, generator=torch.Generator().manual_seed(6))
    pre[3, [5, 700, 1500]] = math.nan
    idx = topk_indices(pre, 32)
    assert {5, 700, 1500} <= set(idx[3].tolist())
    check_topk(pre, 32, idx)


def test_a_wrong_prefilter_fails_the_check():
    """The check has teeth: keeping one block too few (the k - 1 blocks of largest maxima miss part of the
    row's top k whenever those lie in k different blocks: about a fifth of these rows) gives selections
    `check_topk` rejects."""
    g = torch.Generator().manual_seed(7)
    pre = torch.randn(256, 1536, generator=g)
    wrong = _block_topk(pre, 32, 6, keep=31)
    with pytest.raises(AssertionError, match="not the k largest"):
        check_topk(pre, 32, wrong)
    right = torch.topk(pre, 32, dim=1).indices.sort(1).values
    assert (wrong.sort(1).values != right).any(1).float().mean() > 0.1
    check_topk(pre, 32, _block_topk(pre, 32, 6, keep=32))


def test_topk_indices_any_leading_shape_and_topk_acts():
    g = torch.Generator().manual_seed(8)
    pre = torch.randn(3, 5, 1536, generator=g)
    idx = topk_indices(pre, 32)
    assert idx.shape == (3, 5, 32)
    check_topk(pre.reshape(15, 1536), 32, idx.reshape(15, 32))
    one = pre[0, 0]
    assert torch.equal(topk_indices(one, 32).sort().values, torch.topk(one, 32).indices.sort().values)
    top = torch.topk(pre, 32, dim=-1)
    dense = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    assert torch.equal(topk_acts(pre, 32), dense)


def test_sampled_dots_unsorted_pattern():
    """The dots of an index matrix whose rows are not sorted (as the prefilter returns them) are
    ``(g @ W.T)`` at the pairs, in the pairs' order (float64, to rounding)."""
    g = torch.Generator().manual_seed(9)
    idx = torch.stack([torch.randperm(300, generator=g)[:17] for _ in range(40)])
    assert (idx.diff(dim=1) < 0).any()  # really unsorted
    gr = torch.randn(40, 24, generator=g, dtype=torch.float64)
    W = torch.randn(300, 24, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_sampled_dots(idx, gr, W), (gr @ W.T).gather(1, idx), rtol=0, atol=1e-12)


def test_latent_bags_shared():
    """`_spmm_t` with one `LatentBags` used twice (as the encoder's and decoder's backward share it) equals the
    dense ``S^T @ a`` both times."""
    g = torch.Generator().manual_seed(10)
    idx = torch.stack([torch.randperm(50, generator=g)[:6] for _ in range(30)])
    bags = LatentBags(idx, 50)
    for _ in range(2):
        vals = torch.randn(30, 6, generator=g, dtype=torch.float64)
        a = torch.randn(30, 7, generator=g, dtype=torch.float64)
        S = torch.zeros(30, 50, dtype=torch.float64).scatter(1, idx, vals)
        torch.testing.assert_close(_spmm_t(idx, vals, a, 50, bags), S.T @ a, rtol=0, atol=1e-12)


def test_remove_parallel_grad_literal():
    """The parallel component removed as the literal ``g - (g . w) w`` with ``w = W / |W|``, rows not unit."""
    s = SAE(8, 40, "topk", k=4).double()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        s.W_dec.mul_(torch.rand(40, 1, generator=g, dtype=torch.float64) + 0.5)
    grad = torch.randn(40, 8, generator=g, dtype=torch.float64)
    s.W_dec.grad = grad.clone()
    s.remove_parallel_grad()
    w = s.W_dec.detach() / s.W_dec.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(s.W_dec.grad, grad - (grad * w).sum(1, keepdim=True) * w, rtol=0, atol=1e-13)
    assert (s.W_dec.grad * w).sum(1).abs().max() < 1e-13


def test_pre_acts_literal():
    """``pre_acts`` (addmm) is the literal formula for 1-, 2- and 3-D inputs."""
    s = SAE(6, 20, "topk", k=3).double()
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        s.b_enc.copy_(torch.randn(20, generator=g, dtype=torch.float64))
        s.b_dec.copy_(torch.randn(6, generator=g, dtype=torch.float64))
    for shape in ((6,), (4, 6), (2, 3, 6)):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        want = (x - s.b_dec) @ s.W_enc + s.b_enc
        torch.testing.assert_close(s.pre_acts(x), want, rtol=0, atol=1e-12)


def test_fused_adam_matches_default():
    """`SAEModule.configure_optimizers`'s fused Adam takes the steps torch's default Adam takes (float64)."""
    from src.sae.train import SAEModule, SAETrainConfig

    cfg = SAETrainConfig(architecture="topk", d_sae=48, k=4, standardize=False, warmup_steps=0)
    mods = [SAEModule(cfg, 16, ["0"], total_steps=10).double() for _ in range(2)]
    opt_f = mods[0].configure_optimizers()["optimizer"]
    opt_d = torch.optim.Adam(mods[1].parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    assert opt_f.param_groups[0]["fused"]
    g = torch.Generator().manual_seed(13)
    x = torch.randn(32, 1, 16, generator=g, dtype=torch.float64)
    w = torch.full((32,), 1 / 32, dtype=torch.float64)
    for _ in range(3):
        for m, opt in zip(mods, (opt_f, opt_d)):
            opt.zero_grad()
            ((loss, _),) = m.layer_losses(x, w, 32)
            loss.backward()
            opt.step()
    for p, q in zip(mods[0].parameters(), mods[1].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
