"""The MDL probe's L-BFGS (`lbfgs_minimize`, written-out gradient) against ``torch.optim.LBFGS`` with autograd.

Reference: `fit_logreg_reference` (``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` on ``w, b`` with
``F.cross_entropy`` and autograd, the implementation before) and, for the optimiser alone, torch's LBFGS
on a smooth convex function. The fast path reorders float32 sums (BLAS sdot/saxpy in the two-loop, a
hand-written gradient), so the results agree to rounding carried through the iterations, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.functional.mdl import online_code_probe
from src.probes.mdl import fit_logreg, fit_logreg_reference, lbfgs_minimize

pytestmark = pytest.mark.usefixtures("one_thread")


def data(n=600, D=12, K=5, seed=0):
    g = np.random.default_rng(seed)
    means = g.normal(size=(K, D)) * 1.5
    y = g.integers(0, K, n)
    x = means[y] + g.normal(size=(n, D)) * 1.2 + 3.0
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y).long()


def test_lbfgs_minimize_takes_torch_lbfgs_steps_on_a_convex_function():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(30, 30, generator=g)
    H, c = A @ A.T / 30 + 0.1 * torch.eye(30), torch.randn(30, generator=g)

    def f(x):  # smooth, strongly convex, not quadratic
        return 0.5 * x @ H @ x - c @ x + 0.1 * torch.log1p(x * x).sum()

    def fg(x):
        xx = x.detach().requires_grad_(True)
        v = f(xx)
        (gr,) = torch.autograd.grad(v, xx)
        return float(v), gr

    for max_iter in (1, 4, 10, 100):
        x_ref = torch.zeros(30, requires_grad=True)
        opt = torch.optim.LBFGS([x_ref], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure(opt=opt, x_ref=x_ref):
            opt.zero_grad()
            v = f(x_ref)
            v.backward()
            return v

        opt.step(closure)
        x = torch.zeros(30)
        info = lbfgs_minimize(fg, x, max_iter=max_iter)
        if max_iter < 100:  # the same iterates (line search steps included) while rounding has not grown
            assert info["n_iter"] == opt.state[x_ref]["n_iter"] and info["func_evals"] == opt.state[x_ref]["func_evals"]
            assert torch.allclose(x, x_ref.detach(), atol=1e-5, rtol=0), max_iter
        else:  # both stop near the minimum (the last steps stop on |f change| < 1e-9: float32 noise)
            ref = float(f(x_ref.detach()))
            assert abs(info["loss"] - ref) < 1e-5 * abs(ref)


def test_fit_logreg_equals_the_torch_lbfgs_fit_to_rounding():
    x, y = data()
    lp = fit_logreg(x[:400], y[:400], 5)(x[400:].numpy())
    lp_ref = fit_logreg_reference(x[:400], y[:400], 5)(x[400:].numpy())
    assert np.abs(lp - lp_ref).max() < 1e-2  # log-probabilities of -0.01 to -20 nats
    assert (lp.argmax(1) == lp_ref.argmax(1)).mean() > 0.99
    # a class absent from the prefix keeps the large negative bias in both
    keep = y[:200] != 4
    lp = fit_logreg(x[:200][keep], y[:200][keep], 5)(x[400:].numpy())
    lp_ref = fit_logreg_reference(x[:200][keep], y[:200][keep], 5)(x[400:].numpy())
    assert np.abs(lp - lp_ref).max() < 1e-2 and lp[:, 4].max() < -20


def test_online_code_with_the_fast_fit_within_1e_3_of_the_reference():
    x, y = data(n=800)
    out = {}
    for name, fit in (("fast", fit_logreg), ("reference", fit_logreg_reference)):
        out[name] = online_code_probe(x.numpy(), y.numpy(), 5, lambda xp, yp, f=fit: f(torch.as_tensor(xp), torch.as_tensor(yp), 5))
    a, b = out["fast"], out["reference"]
    assert abs(a.compression / b.compression - 1) < 1e-3
    # blocks coded by probes of a few items (unconverged at 100 iterations) move most; the large ones hardly
    np.testing.assert_allclose(a.block_bits, b.block_bits, rtol=3e-2)
    np.testing.assert_allclose(a.block_bits[-3:], b.block_bits[-3:], rtol=1e-3)

