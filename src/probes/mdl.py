"""MDL (online code) probing for classification tasks, Voita & Titov (2020).

The online codelength itself is ``src.functional.mdl``; this module supplies the probe
trained on every prefix: multinomial logistic regression fitted to convergence with
L-BFGS (full batch, L2 penalty), which is deterministic and fast on CPU.  Classes absent
from a small prefix get a large negative bias so the probe's distribution stays over
all K classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from src.functional.mdl import OnlineCodeResult, online_code_probe


def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3, max_iter: int = 100):
    """Standardised softmax regression; returns ``predict_log_proba(x) -> (m, K)`` natural log."""
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
