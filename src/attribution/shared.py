"""Several targets of one item attributed from shared forward passes (e.g. every head of a classifier).

The targets of one utterance and input type (the heads of an ``UtteranceClassifier``, or the tokens of a
transcript) share one :class:`~src.attribution.inputs.Representation`: their model part is the same, only
the final scalar differs.  :func:`attribute_targets` runs that model part ONCE per input it has to evaluate and
reads every target's scalar off the same states:

- ``saliency`` / ``input_x_gradient``: one forward of ``x0``, then one backward per target (the graph kept
  between them); both methods read the same gradient, so with a ``cache`` dict the second one costs nothing;
- ``integrated_gradients``: captum's path (``approximation_parameters(ig_method)``: the same step sizes and
  alphas, ``internal_batch_size`` steps per forward), one forward per batch of steps and one backward per
  target; completeness from one forward of ``[x0, baseline]`` for all targets;
- ``feature_ablation``: captum's FeatureAblation (``f(x) - f(x with group g replaced by the baseline)`` on every
  element of group ``g``, groups ``0..max(mask)``), ``perturbations_per_eval`` copies per forward, every
  target from the same forwards.

The results equal :func:`src.attribution.methods.attribute_with_completeness` target by target (captum) up to
float32 summation order (tests/attribution/test_shared.py; bench/attribution.py times both).  Other methods,
and targets that do not share one representation, fall back to that per-target call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from src.attribution.inputs import AttributionError, eval_mode
from src.attribution.methods import _ALLOWED, METHODS, Completeness, attribute_with_completeness
from src.attribution.segments import Segments

SHARED_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "feature_ablation")


def shares_forward(targets: Sequence) -> bool:
    """True when every target reads the same representation object (one model pass serves them all)."""
    return len(targets) > 0 and all(t.rep is targets[0].rep for t in targets)


def _multi(targets):
    """``f(x) -> (B, K)``: every target's scalar from ONE pass of the shared representation."""
    rep = targets[0].rep

    def f(x: Tensor) -> Tensor:
        states = rep.states(x)
        return torch.stack([t._score(states) for t in targets], dim=1)

    return f


def _gradients(f, x: Tensor, k: int) -> list[Tensor]:
    """Gradient of each of the ``k`` outputs of ``f`` (summed over the batch) w.r.t. ``x``: one forward, k backwards."""
    x = x.detach().clone().requires_grad_()
    out = f(x)  # (B, k)
    return [torch.autograd.grad(out[:, j].sum(), x, retain_graph=j < k - 1)[0] for j in range(k)]


def _integrated_gradients(f, x: Tensor, b: Tensor, k: int, n_steps: int, method: str,
                          internal_batch_size: int | None) -> list[Tensor]:  # fmt: skip
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes_func, alphas_func = approximation_parameters(method)
    step_sizes, alphas = step_sizes_func(n_steps), alphas_func(n_steps)
    per = max(1, int(internal_batch_size)) if internal_batch_size else n_steps  # x0 is one example
    total = [torch.zeros_like(x) for _ in range(k)]
    for s in range(0, n_steps, per):
        al, st = alphas[s : s + per], step_sizes[s : s + per]
        scaled = torch.cat([b + a * (x - b) for a in al], dim=0)  # (n, *shape)
        grads = _gradients(f, scaled, k)
        w = torch.tensor(st).float().view(-1, *([1] * (x.dim() - 1)))  # (n, 1, ...)
        for j in range(k):
            total[j] = total[j] + (grads[j] * w).sum(0, keepdim=True)
    return [t * (x - b) for t in total]


def _feature_ablation(f, x: Tensor, b: Tensor, mask: Tensor, k: int, ppe: int) -> list[Tensor]:
    with torch.no_grad():
        fx = f(x)[0]  # (k,)
        groups = list(range(int(mask.min()), int(mask.max()) + 1))
        out = [torch.zeros_like(x) for _ in range(k)]
        for s in range(0, len(groups), max(1, ppe)):
            gs = groups[s : s + max(1, ppe)]
            batch = torch.cat([torch.where(mask == g, b, x) for g in gs], dim=0)  # (n, *shape)
            diff = fx.unsqueeze(0) - f(batch)  # (n, k)
            for i, g in enumerate(gs):
                sel = mask == g
                for j in range(k):
                    out[j] = torch.where(sel, diff[i, j].to(x.dtype), out[j])
    return out


def attribute_targets(targets: Sequence, method: str, baseline: Tensor | None = None, segments: Segments | None = None,
                      feature_mask: Tensor | None = None, cache: dict | None = None,
                      **kw) -> list[tuple[Tensor, float | None, Completeness | None]]:  # fmt: skip
    """``[attribute_with_completeness(t, method, baseline, segments, **kw) for t in targets]``, computed from shared
    forward passes where the targets share one representation and ``method`` is one of :data:`SHARED_METHODS`.

    ``cache``: a dict kept by the caller for one set of targets and one input (e.g. per utterance and input type);
    saliency and input x gradient then share their gradient.  Returns ``(raw attribution (1, *shape) float32,
    |convergence delta| or None, Completeness or None)`` per target, in order."""
    targets = list(targets)
    if method not in METHODS:
        raise AttributionError(f"method must be one of {METHODS}, got {method!r}")
    unknown = sorted(set(kw) - _ALLOWED[method])
    if unknown:
        raise AttributionError(f"method {method!r} takes no option(s) {unknown}; it takes {sorted(_ALLOWED[method])}")
    if method not in SHARED_METHODS or not shares_forward(targets) or len(targets) == 1:
        return [attribute_with_completeness(t, method, baseline, segments, feature_mask, **kw) for t in targets]
    t0 = targets[0]
    x = t0.x0.detach().clone()
    b = torch.zeros_like(x) if baseline is None else baseline.detach().to(x.dtype)
    if tuple(b.shape) != tuple(x.shape):
        raise AttributionError(f"utterance {t0.utterance!r}: baseline shape {tuple(b.shape)} != input {tuple(x.shape)}")
    k = len(targets)
    f = _multi(targets)
    modules = {id(m): m for t in targets for m in t._modules}
    checks: list[Completeness | None] = [None] * k
    with eval_mode(*modules.values()):
        if method in ("saliency", "input_x_gradient"):
            key = ("gradient", id(t0.rep), tuple(id(t) for t in targets))
            grads = cache.get(key) if cache is not None else None
            if grads is None:
                grads = [g.detach() for g in _gradients(f, x, k)]
                if cache is not None:
                    cache[key] = grads
            raws = [g if method == "saliency" else x * g for g in grads]
            if method == "saliency" and bool(kw.get("abs", False)):
                raws = [r.abs() for r in raws]
        elif method == "integrated_gradients":
            raws = _integrated_gradients(f, x, b, k, int(kw.get("n_steps", 50)),
                                         str(kw.get("ig_method", "gausslegendre")), kw.get("internal_batch_size"))  # fmt: skip
            with torch.no_grad():
                fxb = f(torch.cat([x, b], 0)).double()  # (2, k)
            checks = [Completeness(float(fxb[0, j]), float(fxb[1, j]), float(raws[j].detach().double().sum()))
                      for j in range(k)]  # fmt: skip
        else:  # feature_ablation
            if feature_mask is None:
                if segments is None:
                    raise AttributionError(f"method {method!r} needs segments (a feature mask); utterance "
                                           f"{t0.utterance!r}")  # fmt: skip
                feature_mask = t0.feature_mask(segments)
            raws = _feature_ablation(f, x, b, feature_mask.to(x.device).long(), k,
                                     int(kw.get("perturbations_per_eval", 8)))  # fmt: skip
    return [(r.detach().float(), None if c is None else abs(c.delta), c) for r, c in zip(raws, checks)]
