"""Attribution methods, all through captum (0.9), on an :class:`AttributionTarget`.

``attribute(target, method, baseline, segments, **kw)`` returns the raw attribution shaped like
``target.x0`` (float32) and, for IntegratedGradients / GradientShap, the absolute convergence delta
(``|f(x) - f(baseline) - sum(attr)|``; GradientShap: captum's, the mean over its samples), else None.
:func:`attribute_with_completeness` also returns, for IntegratedGradients, a :class:`Completeness`:
``f(x)``, ``f(b)`` (one extra forward of the pair) and the sum of the attributions, from which
``delta = f(x) - f(b) - sum(attr)`` and ``ratio = sum(attr) / (f(x) - f(b))``.  Completeness is
checked, not assumed: a path on which ``f`` is steep between quadrature nodes (Whisper's log-mel floor on the
waveform from a zero baseline) gives a sum far from ``f(x) - f(b)`` (docs/attribution.md, bench/ig_completeness.py).

Methods and the captum defaults changed here (everything else is captum's default):

| method | captum class | changed |
|---|---|---|
| ``saliency`` | Saliency | ``abs=False`` (signed gradient, as the tutorial; captum: abs=True) |
| ``input_x_gradient`` | InputXGradient | - |
| ``integrated_gradients`` | IntegratedGradients | ``n_steps`` (50), ``ig_method`` (captum's ``method``: gausslegendre), ``internal_batch_size`` from config; delta always returned |
| ``gradient_shap`` | GradientShap | baselines = the named baseline; ``n_samples`` (5), ``stdevs`` (0.0) |
| ``noise_tunnel`` / ``smoothgrad`` | NoiseTunnel(base) | ``base`` (saliency); ``stdevs`` = ``noise_level`` x (max - min of x0) (SmoothGrad's 15 %), absolute ``stdevs`` wins |
| ``occlusion`` | Occlusion | a window along time of ``window`` s (default one step of 20 ms / one frame), all features; ``stride`` = window |
| ``feature_ablation`` | FeatureAblation | ``feature_mask`` from the segments |
| ``shapley_value_sampling`` | ShapleyValueSampling | ``feature_mask`` from the segments; ``n_samples`` (25) |
| ``lime`` | Lime | ``feature_mask``; ``interpretable_model`` = ``SkLearnLinearRegression`` (tutorial; ``lasso`` / ``ridge`` on request); ``n_samples`` (50) |
| ``kernel_shap`` | KernelShap | ``feature_mask``; ``n_samples`` (25) |

Perturbation methods batch ``perturbations_per_eval`` perturbed copies per forward (default 8 here, captum 1):
the copies keep the input's length, so this works for models that cannot be padded; scores are
identical to one copy at a time (tests/attribution/test_methods.py, bench/attribution.py).
Lime / KernelShap / ShapleyValueSampling are seeded with ``seed`` (torch's global RNG, restored afterwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from src.attribution.inputs import AttributionError
from src.attribution.segments import Segments

GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "noise_tunnel",
                    "smoothgrad")  # fmt: skip
PERTURBATION_METHODS = ("occlusion", "feature_ablation", "shapley_value_sampling", "lime", "kernel_shap")
METHODS = GRADIENT_METHODS + PERTURBATION_METHODS
MASK_METHODS = ("feature_ablation", "shapley_value_sampling", "lime", "kernel_shap")

_ALLOWED = {
    "saliency": {"abs"},
    "input_x_gradient": set(),
    "integrated_gradients": {"n_steps", "ig_method", "internal_batch_size"},
    "gradient_shap": {"n_samples", "stdevs"},
    "noise_tunnel": {"base", "nt_type", "nt_samples", "nt_samples_batch_size", "stdevs", "noise_level", "abs",
                     "n_steps", "ig_method", "internal_batch_size"},
    "occlusion": {"window", "stride", "perturbations_per_eval"},
    "feature_ablation": {"perturbations_per_eval"},
    "shapley_value_sampling": {"n_samples", "perturbations_per_eval", "seed"},
    "lime": {"n_samples", "perturbations_per_eval", "interpretable_model", "seed"},
    "kernel_shap": {"n_samples", "perturbations_per_eval", "seed"},
}  # fmt: skip
_ALLOWED["smoothgrad"] = _ALLOWED["noise_tunnel"]


@dataclass(frozen=True)
class Completeness:
    """IG's completeness check for one item: ``f(x)``, ``f(b)`` and the sum of the attributions (float64)."""

    f_x: float
    f_b: float
    attribution_sum: float

    @property
    def gap(self) -> float:
        """``f(x) - f(b)``: what the attributions should sum to."""
        return self.f_x - self.f_b

    @property
    def delta(self) -> float:
        """``f(x) - f(b) - sum(attr)`` (captum's convergence delta with the opposite sign)."""
        return self.gap - self.attribution_sum

    @property
    def ratio(self) -> float:
        """``sum(attr) / (f(x) - f(b))``: 1 when complete; NaN when ``f(x) == f(b)``."""
        return self.attribution_sum / self.gap if self.gap != 0 else math.nan

    def fails(self, tolerance: float) -> bool:
        """``|delta| > tolerance * |f(x) - f(b)|`` (a literal test: with ``f(x) == f(b)`` any nonzero delta fails)."""
        if not tolerance >= 0:
            raise ValueError(f"the completeness tolerance must be >= 0, got {tolerance!r}")
        return abs(self.delta) > float(tolerance) * abs(self.gap)


def completeness(target, attribution: Tensor, baseline: Tensor) -> Completeness:
    """:class:`Completeness` of ``attribution`` (shaped like ``target.x0``) from ``baseline``: one forward of
    ``[x0, baseline]`` without gradients."""
    x = target.x0.detach()
    b = baseline.detach().to(x.dtype)
    with torch.no_grad():
        f = target(torch.cat([x, b], 0)).double()  # (2,)
    return Completeness(float(f[0]), float(f[1]), float(attribution.detach().double().sum()))


def method_kwargs(method: str, kwargs: dict) -> dict:
    """The keys of ``kwargs`` that ``method`` takes (config blocks may hold options of every method)."""
    return {k: v for k, v in (kwargs or {}).items() if k in _ALLOWED.get(method, set()) and v is not None}


def _interpretable(name):
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression, SkLearnRidge

    if name in (None, "linear"):
        return SkLearnLinearRegression()
    if name == "lasso":
        return SkLearnLasso(alpha=0.01)
    if name == "ridge":
        return SkLearnRidge(alpha=1.0)
    raise AttributionError(f"lime interpretable_model must be linear, lasso or ridge, got {name!r}")


class _seeded:
    def __init__(self, seed):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        if self.seed is not None:
            torch.manual_seed(int(self.seed))

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)


def _gradient(target, method: str, x: Tensor, b: Tensor, kw: dict):
    from captum import attr as ca

    if method == "saliency":
        return ca.Saliency(target).attribute(x, abs=bool(kw.get("abs", False))), None
    if method == "input_x_gradient":
        return ca.InputXGradient(target).attribute(x), None
    if method == "integrated_gradients":  # the delta from Completeness (attribute), not captum's
        a = ca.IntegratedGradients(target).attribute(
            x, baselines=b, n_steps=int(kw.get("n_steps", 50)), method=str(kw.get("ig_method", "gausslegendre")),
            internal_batch_size=kw.get("internal_batch_size"))  # fmt: skip
        return a, None
    if method == "gradient_shap":
        a, d = ca.GradientShap(target).attribute(x, baselines=b, n_samples=int(kw.get("n_samples", 5)),
                                                 stdevs=float(kw.get("stdevs", 0.0)), return_convergence_delta=True)  # fmt: skip
        return a, float(d.abs().mean())
    # noise tunnel (SmoothGrad) over a base method
    base = str(kw.get("base", "saliency"))
    classes = {"saliency": ca.Saliency, "input_x_gradient": ca.InputXGradient,
               "integrated_gradients": ca.IntegratedGradients}  # fmt: skip
    if base not in classes:
        raise AttributionError(f"noise_tunnel base must be one of {sorted(classes)}, got {base!r}")
    stdevs = kw.get("stdevs")
    if stdevs is None:
        stdevs = float(kw.get("noise_level", 0.15)) * float(x.max() - x.min())
    extra: dict = {}
    if base == "saliency":
        extra["abs"] = bool(kw.get("abs", False))
    if base == "integrated_gradients":
        extra.update(baselines=b, n_steps=int(kw.get("n_steps", 50)), method=str(kw.get("ig_method", "gausslegendre")),
                     internal_batch_size=kw.get("internal_batch_size"))  # fmt: skip
    a = ca.NoiseTunnel(classes[base](target)).attribute(
        x, nt_type=str(kw.get("nt_type", "smoothgrad")), nt_samples=int(kw.get("nt_samples", 5)),
        nt_samples_batch_size=kw.get("nt_samples_batch_size"), stdevs=float(stdevs), **extra)  # fmt: skip
    return a, None


def attribute(target, method: str, baseline: Tensor | None = None, segments: Segments | None = None,
              feature_mask: Tensor | None = None, **kw) -> tuple[Tensor, float | None]:  # fmt: skip
    """Raw attribution of ``target`` (shaped like ``target.x0``) and the absolute convergence delta (IG,
    GradientShap; else None).

    ``baseline``: ``(1, *shape)`` (default zeros); ``segments``: the groups of the mask methods (FeatureAblation,
    ShapleyValueSampling, Lime, KernelShap; required there, see :meth:`AttributionTarget.feature_mask`), or pass
    ``feature_mask`` directly.  Options not taken by ``method`` are an error naming them."""
    a, delta, _ = attribute_with_completeness(target, method, baseline, segments, feature_mask, **kw)
    return a, delta


def attribute_with_completeness(target, method: str, baseline: Tensor | None = None, segments: Segments | None = None,
                                feature_mask: Tensor | None = None, **kw) -> tuple[Tensor, float | None, Completeness | None]:  # fmt: skip
    """:func:`attribute` plus, for ``integrated_gradients``, its :class:`Completeness` (else None)."""
    from captum import attr as ca

    if method not in METHODS:
        raise AttributionError(f"method must be one of {METHODS}, got {method!r}")
    unknown = sorted(set(kw) - _ALLOWED[method])
    if unknown:
        raise AttributionError(f"method {method!r} takes no option(s) {unknown}; it takes {sorted(_ALLOWED[method])}")
    x = target.x0.detach().clone()
    b = torch.zeros_like(x) if baseline is None else baseline.detach().to(x.dtype)
    if tuple(b.shape) != tuple(x.shape):
        raise AttributionError(f"utterance {target.utterance!r}: baseline shape {tuple(b.shape)} != input {tuple(x.shape)}")
    ppe = int(kw.get("perturbations_per_eval", 8))
    delta = None
    with target.prepared():
        target._depth += 1  # already prepared: calls inside skip the context
        try:
            if method in GRADIENT_METHODS:
                x.requires_grad_()
                a, delta = _gradient(target, method, x, b, kw)
            elif method == "occlusion":
                sps = target.seconds_per_step()
                win = max(1, int(round(float(kw.get("window") or max(0.02, sps)) / sps)))
                stride = max(1, int(round(float(kw.get("stride") or win * sps) / sps)))
                shape = list(x.shape[1:])
                strides = [1] * len(shape)
                shape[target.time_axis - 1] = win
                strides[target.time_axis - 1] = stride
                for i in range(len(shape)):
                    if i != target.time_axis - 1:
                        strides[i] = shape[i]
                a = ca.Occlusion(target).attribute(x, sliding_window_shapes=tuple(shape), strides=tuple(strides),
                                                   baselines=b, perturbations_per_eval=ppe)  # fmt: skip
            else:
                if feature_mask is None:
                    if segments is None:
                        raise AttributionError(f"method {method!r} needs segments (a feature mask); utterance "
                                               f"{target.utterance!r}")  # fmt: skip
                    feature_mask = target.feature_mask(segments)
                fm = feature_mask.to(x.device).long()
                with _seeded(kw.get("seed", 0)):
                    if method == "feature_ablation":
                        a = ca.FeatureAblation(target).attribute(x, baselines=b, feature_mask=fm,
                                                                 perturbations_per_eval=ppe)  # fmt: skip
                    elif method == "shapley_value_sampling":
                        a = ca.ShapleyValueSampling(target).attribute(x, baselines=b, feature_mask=fm,
                                                                      n_samples=int(kw.get("n_samples", 25)),
                                                                      perturbations_per_eval=ppe)  # fmt: skip
                    elif method == "lime":
                        lime = ca.Lime(target, interpretable_model=_interpretable(kw.get("interpretable_model")))
                        a = lime.attribute(x, baselines=b, feature_mask=fm, n_samples=int(kw.get("n_samples", 50)),
                                           perturbations_per_eval=ppe)  # fmt: skip
                    else:
                        a = ca.KernelShap(target).attribute(x, baselines=b, feature_mask=fm,
                                                            n_samples=int(kw.get("n_samples", 25)),
                                                            perturbations_per_eval=ppe)  # fmt: skip
            check = completeness(target, a, b) if method == "integrated_gradients" else None
        finally:
            target._depth -= 1
    if check is not None:
        delta = abs(check.delta)
    return a.detach().float(), delta, check
