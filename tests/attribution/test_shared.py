"""Shared-forward attribution of several targets (src/attribution/shared.py) vs captum target by target."""

from __future__ import annotations

import pytest
import torch

from src.attribution import classifier_target, make_segments, whisper_token_targets
from src.attribution.methods import attribute_with_completeness
from src.attribution.shared import attribute_targets, shares_forward
from src.datamodules.corpus import Interval
from tests.attribution.conftest import make_classifier, make_utt

KW = {"saliency": {}, "input_x_gradient": {},
      "integrated_gradients": {"n_steps": 6, "internal_batch_size": 4},  # 2 batches of steps, the last one short
      "feature_ablation": {"perturbations_per_eval": 3}}  # fmt: skip


def heads_of(bb, clf, utt, input_type):
    first = classifier_target(bb, clf, utt, "action", input_type, class_index=1)
    return [first, classifier_target(bb, clf, utt, "action", input_type, class_index=2, rep=first.rep),
            classifier_target(bb, clf, utt, "object", input_type, class_index=0, rep=first.rep)]  # fmt: skip


def check_equal(targets, method, b, seg, kw):
    got = attribute_targets(targets, method, b, seg, **kw)
    for t, (a, delta, check) in zip(targets, got):
        want, wdelta, wcheck = attribute_with_completeness(t, method, b, seg, **kw)  # captum, this target alone
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(a, want, atol=1e-5 * float(want.abs().max()), rtol=1e-4)
        assert (delta is None) == (wdelta is None) and (check is None) == (wcheck is None)
        if check is not None:
            assert check.f_x == pytest.approx(wcheck.f_x, abs=1e-5)
            assert check.f_b == pytest.approx(wcheck.f_b, abs=1e-5)
            assert check.attribution_sum == pytest.approx(wcheck.attribution_sum, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("input_type", ["waveform", "cnn"])
@pytest.mark.parametrize("method", list(KW))
def test_classifier_heads_equal_captum_per_head(w2v_bb, method, input_type):
    u = make_utt(8000, words=[Interval(0.05, 0.2, "go"), Interval(0.25, 0.4, "left")])
    seg = make_segments(u)
    targets = heads_of(w2v_bb, make_classifier(w2v_bb), u, input_type)
    assert shares_forward(targets)
    check_equal(targets, method, targets[0].baseline("noise", snr_db=5.0, seed=1), seg, KW[method])


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "feature_ablation"])
def test_whisper_heads_and_tokens_equal_captum(whisper_bb, method):
    u = make_utt(12000, words=[Interval(0.1, 0.3, "go"), Interval(0.35, 0.6, "left")])
    seg = make_segments(u)
    targets = heads_of(whisper_bb, make_classifier(whisper_bb), u, "cnn")  # padded representation: padding group
    check_equal(targets, method, targets[0].baseline("silence"), seg, KW[method])
    toks = whisper_token_targets(whisper_bb, u, "cnn", tokens=[11, 12, 13], language=None)
    assert shares_forward(toks)
    check_equal(toks, method, toks[0].baseline("silence"), seg, KW[method])


def test_saliency_and_input_x_gradient_share_one_gradient(w2v_bb):
    u = make_utt(8000)
    targets = heads_of(w2v_bb, make_classifier(w2v_bb), u, "spectrogram")
    cache: dict = {}
    sal = attribute_targets(targets, "saliency", cache=cache)
    assert len(cache) == 1
    ixg = attribute_targets(targets, "input_x_gradient", cache=cache)
    assert len(cache) == 1  # reused
    for (s, _, _), (g, _, _) in zip(sal, ixg):
        torch.testing.assert_close(g, s * targets[0].x0)


def test_fallback_and_errors(w2v_bb):
    from src.attribution import AttributionError

    u = make_utt(8000)
    clf = make_classifier(w2v_bb)
    a = classifier_target(w2v_bb, clf, u, "action", "cnn", class_index=0)
    b = classifier_target(w2v_bb, clf, u, "object", "cnn", class_index=1)  # its own representation
    assert not shares_forward([a, b])
    got = attribute_targets([a, b], "saliency")
    want = attribute_with_completeness(b, "saliency")[0]
    torch.testing.assert_close(got[1][0], want)
    with pytest.raises(AttributionError, match="takes no option"):
        attribute_targets([a], "saliency", n_steps=3)
    with pytest.raises(AttributionError, match="needs segments"):
        attribute_targets(heads_of(w2v_bb, clf, u, "cnn"), "feature_ablation")
