"""captum methods through the engine: IG completeness, FeatureAblation vs a literal loop, batched == unbatched."""

from __future__ import annotations

import pytest
import torch

from src.attribution import AttributionError, attribute, classifier_target, make_segments, segment_scores
from src.datamodules.corpus import Interval
from tests.attribution.conftest import make_classifier, make_utt


@pytest.fixture(scope="module")
def item(w2v_bb):
    u = make_utt(8000, words=[Interval(0.05, 0.2, "go"), Interval(0.25, 0.4, "left")])
    return u, make_segments(u), make_classifier(w2v_bb)


@pytest.mark.parametrize("input_type", ["cnn", "waveform"])
def test_ig_completeness(w2v_bb, item, input_type):
    u, seg, clf = item
    t = classifier_target(w2v_bb, clf, u, "action", input_type, class_index=1)
    # noise, not silence: with the per-utterance normalisation f(alpha x) is constant in alpha > 0, so on the
    # waveform the zero baseline puts the whole gap in a jump at alpha ~ 0 that no quadrature sees (docs)
    b = t.baseline("noise", snr_db=0.0, seed=2)
    with torch.no_grad():
        gap = float(t(t.x0) - t(b))
    a, delta = attribute(t, "integrated_gradients", b, n_steps=32, internal_batch_size=32)
    # captum's delta is sum(attr) - (f(x) - f(b)) (reported as |.|)
    assert abs(float(a.double().sum()) - gap) == pytest.approx(delta, abs=1e-5)
    assert delta < 0.02 * abs(gap) + 1e-4  # enough steps: the path integral is complete
    _, d8 = attribute(t, "integrated_gradients", b, n_steps=2, ig_method="riemann_trapezoid")
    assert d8 > delta  # and it can fail: 2 trapezoid steps are not


def test_feature_ablation_vs_literal_loop(w2v_bb, item):
    u, seg, clf = item
    t = classifier_target(w2v_bb, clf, u, "object", "waveform", class_index=0)
    b = t.baseline("noise", snr_db=5.0, seed=1)
    a, _ = attribute(t, "feature_ablation", b, seg)
    mask = t.feature_mask(seg)
    got = segment_scores(a, mask, len(seg), "mean")
    with torch.no_grad():
        fx = float(t(t.x0))
        want = []
        for k in range(len(seg)):
            x = torch.where(mask == k, b, t.x0)
            want.append(fx - float(t(x)))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=1e-5)
    assert (a == a.flatten()[0]).sum() >= 1  # constant within a segment
    for k in range(len(seg)):
        vals = a[mask == k]
        assert torch.all(vals == vals[0])


@pytest.mark.parametrize("method,kw", [("feature_ablation", {}), ("occlusion", {"window": 0.04}),
                                       ("shapley_value_sampling", {"n_samples": 3}), ("lime", {"n_samples": 12}),
                                       ("kernel_shap", {"n_samples": 12})])  # fmt: skip
def test_batched_equals_unbatched(w2v_bb, item, method, kw):
    u, seg, clf = item
    t = classifier_target(w2v_bb, clf, u, "action", "cnn", class_index=2)
    b = t.baseline("silence")
    one, _ = attribute(t, method, b, seg, perturbations_per_eval=1, **kw)
    many, _ = attribute(t, method, b, seg, perturbations_per_eval=8, **kw)
    torch.testing.assert_close(many, one, atol=2e-5, rtol=1e-4)
    assert float(one.abs().max()) > 0


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "gradient_shap", "noise_tunnel"])
def test_gradient_methods_shapes_and_values(w2v_bb, item, method):
    u, seg, clf = item
    t = classifier_target(w2v_bb, clf, u, "action", "spectrogram", class_index=0)
    a, d = attribute(t, method, t.baseline("zeros"))
    assert a.shape == t.x0.shape and torch.isfinite(a).all() and float(a.abs().max()) > 0
    assert (d is not None) == (method == "gradient_shap")
    if method == "input_x_gradient":
        sal, _ = attribute(t, "saliency", None)
        torch.testing.assert_close(a, sal * t.x0, atol=1e-6, rtol=1e-5)


def test_bad_method_options(w2v_bb, item):
    u, seg, clf = item
    t = classifier_target(w2v_bb, clf, u, "action", "cnn", class_index=0)
    with pytest.raises(AttributionError, match="takes no option"):
        attribute(t, "saliency", None, n_steps=5)
    with pytest.raises(AttributionError, match="needs segments.*utt1"):
        attribute(t, "feature_ablation", None)
    with pytest.raises(AttributionError, match="method must be"):
        attribute(t, "deeplift", None)
