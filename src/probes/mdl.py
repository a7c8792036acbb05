"""MDL (online code) probing for classification tasks, Voita & Titov (2020).

The online codelength itself is ``src.functional.mdl``; this module supplies the probe
trained on every prefix: multinomial logistic regression fitted with L-BFGS (full batch, L2
penalty, at most 100 iterations), which is deterministic and fast on CPU.  Classes absent
from a small prefix get a large negative bias so the probe's distribution stays over
all K classes.

The optimiser is `lbfgs_minimize`: ``torch.optim.LBFGS(lr=1, max_iter=100, history_size=100,
line_search_fn="strong_wolfe")``'s step, iteration for iteration (its own strong-Wolfe line search
function, the same tolerances and stopping tests), on one flat float32 vector, with two changes
that only move float32 rounding: the loss gradient is written out (``z^T (softmax - onehot) / n +
2 l2 w``, no autograd) and the two-loop recursion over the 100-pair history runs through BLAS sdot/saxpy (torch
spent ~35 us of dispatch per history pair, 2 x 100 pairs per iteration: half the time of a fit on
a small prefix). `fit_logreg_reference` keeps the ``torch.optim.LBFGS`` version; the two agree to
float32 rounding propagated through 100 iterations: mdl_compression within 2e-4 relative on the
default phones run (bench/phones_stages.py; tests/probes/test_mdl_fast.py), the size of the change that
running the reference with 2 threads instead of 1 makes (8e-5).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from src.functional.mdl import OnlineCodeResult, online_code_probe


def _standardized(x: torch.Tensor):
    x = x.float()
    mu = x.mean(0)
    sd = x.std(0, unbiased=False) if len(x) > 1 else torch.ones(x.shape[1])
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))  # constant dims (tiny prefixes) stay unscaled
    return (x - mu) / sd, mu, sd


def _predictor(w_: torch.Tensor, b_: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor):
    def predict_log_proba(xb):
        zb = (torch.as_tensor(np.asarray(xb)).float() - mu) / sd
        return F.log_softmax(zb @ w_ + b_, dim=1).numpy()

    return predict_log_proba


def lbfgs_minimize(fg, x: torch.Tensor, max_iter: int = 100, lr: float = 1.0, tolerance_grad: float = 1e-7,
                   tolerance_change: float = 1e-9, history_size: int = 100, max_eval: int | None = None) -> dict:  # fmt: skip
    """Minimise ``fg(x) -> (loss float, gradient (P,) float32)`` from the flat float32 ``x`` (updated in place) as
    one ``torch.optim.LBFGS(..., line_search_fn="strong_wolfe").step(closure)`` does (same defaults, same
    line search function, same stopping tests); the two-loop recursion runs through BLAS sdot/saxpy in float32. Returns
    ``{"n_iter", "func_evals", "loss"}``."""
    from scipy.linalg.blas import saxpy, sdot
    from torch.optim.lbfgs import _strong_wolfe

    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    loss, g = fg(x)
    evals = 1
    if g.abs().max() <= tolerance_grad:
        return {"n_iter": 0, "func_evals": evals, "loss": loss}
    S, Y, ro = [], [], []  # history (numpy float32 views of torch tensors), 1 / y.s as np.float32
    al = np.zeros(history_size, dtype=np.float32)
    d = t = prev_g = None
    H_diag = 1.0
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        if n_iter == 1:
            d = g.neg()
        else:
            yv = g.sub(prev_g)
            s = d.mul(t)
            ys = yv.dot(s)
            if ys > 1e-10:
                if len(S) == history_size:
                    S.pop(0), Y.pop(0), ro.pop(0)
                Y.append(yv.numpy())
                S.append(s.numpy())
                ro.append(np.float32((1.0 / ys).item()))
                H_diag = ys / yv.dot(yv)
            q = g.neg().numpy()
            for i in range(len(S) - 1, -1, -1):  # BLAS sdot / saxpy in place: ~2 us a call, no temporaries
                al[i] = np.float32(sdot(S[i], q)) * ro[i]
                saxpy(Y[i], q, a=-al[i])
            r = q * np.float32(float(H_diag))
            for i in range(len(S)):
                be_i = np.float32(sdot(Y[i], r)) * ro[i]
                saxpy(S[i], r, a=al[i] - be_i)
            d = torch.from_numpy(r)
        prev_g = g.clone() if prev_g is None else prev_g.copy_(g)
        prev_loss = loss
        t = min(1.0, 1.0 / g.abs().sum()) * lr if n_iter == 1 else lr
        gtd = g.dot(d)
        if gtd > -tolerance_change:
            break
        x_init = x.clone()

        def obj_func(x0, step, direction):
            xt = x0.clone()
            xt.add_(direction, alpha=step)
            return fg(xt)

        loss, g, t, ls_evals = _strong_wolfe(obj_func, x_init, t, d, loss, g, gtd, max_ls=max_eval - evals)
        x.add_(d, alpha=t)
        opt_cond = g.abs().max() <= tolerance_grad
        evals += ls_evals
        if n_iter == max_iter or evals >= max_eval or opt_cond:
            break
        if d.mul(t).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
            break
    return {"n_iter": n_iter, "func_evals": evals, "loss": loss}


def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3, max_iter: int = 100):
    """Standardised softmax regression; returns ``predict_log_proba(x) -> (m, K)`` natural log.

    `lbfgs_minimize` with a written-out gradient; `fit_logreg_reference` is the same fit through
    ``torch.optim.LBFGS`` and autograd (equal to float32 rounding, see the module docstring)."""
    z, mu, sd = _standardized(x)
    n, D = z.shape
    K = int(num_classes)
    y = y.long()
    rows = torch.arange(n)

    def fg(flat: torch.Tensor):
        w, b = flat[: D * K].view(D, K), flat[D * K :]
        lsm = F.log_softmax(z @ w + b, dim=1)  # (n, K)
        loss = F.nll_loss(lsm, y) + l2 * (w * w).sum()
        p = lsm.exp()
        p[rows, y] -= 1.0
        p /= n  # dloss / dlogits
        grad = torch.cat([(z.T @ p).add_(w, alpha=2 * l2).view(-1), p.sum(0)])
        return float(loss), grad

    flat = torch.zeros(D * K + K)
    lbfgs_minimize(fg, flat, max_iter=max_iter)
    seen = torch.zeros(K, dtype=torch.bool)
    seen[y.unique()] = True
    w_, b_ = flat[: D * K].view(D, K).clone(), flat[D * K :].clone().masked_fill(~seen, -30.0)
    return _predictor(w_, b_, mu, sd)


def fit_logreg_reference(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3, max_iter: int = 100):
    """`fit_logreg` through ``torch.optim.LBFGS`` and autograd (the implementation before `lbfgs_minimize`)."""
    x = x.float()
    mu = x.mean(0)
    sd = x.std(0, unbiased=False) if len(x) > 1 else torch.ones(x.shape[1])
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))  # constant dims (tiny prefixes) stay unscaled
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    seen = torch.zeros(num_classes, dtype=torch.bool)
    seen[y.unique()] = True

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), b.detach().masked_fill(~seen, -30.0)

    def predict_log_proba(xb):
        zb = (torch.as_tensor(np.asarray(xb)).float() - mu) / sd
        return F.log_softmax(zb @ w_ + b_, dim=1).numpy()

    return predict_log_proba


def mdl_online_code(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int | None = 0, l2: float = 1e-3,
                    schedule: list[int] | None = None) -> OnlineCodeResult:  # fmt: skip
    """Online code of (x, y) in the given order (``seed=None``) or shuffled by ``seed``;
    ``schedule`` are the block ends (default: Voita & Titov's fractions)."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    fit = lambda xp, yp: fit_logreg(torch.as_tensor(np.asarray(xp)), torch.as_tensor(yp).long(), num_classes, l2)  # noqa: E731
    return online_code_probe(xt.numpy(), np.asarray(y), num_classes, fit, schedule=schedule, seed=seed)
