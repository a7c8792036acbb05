"""Integrated gradients completeness is checked, not assumed: the literal delta, the per-item warning.

The steep case is the one of the real model: Whisper's log-mel floor (``log10(max(., 1e-10))``) makes
``f(alpha x)`` on the waveform flat above a small alpha and steep below it, so a few quadrature nodes miss the
rise (on the tiny random Whisper: 4 Gauss-Legendre nodes give ratio ~0.6). Whisper's CNN features (state 0)
have no floor: 8 nodes are complete there to ~1e-3.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from src.attribution import classifier_target
from src.attribution.methods import Completeness, attribute_with_completeness
from src.datamodules.corpus import Interval
from tests.attribution.conftest import make_classifier, make_utt

WORDS = [Interval(0.05, 0.2, "go"), Interval(0.25, 0.4, "left")]


@pytest.fixture(scope="module")
def item(whisper_bb):
    return make_utt(8000, words=WORDS), make_classifier(whisper_bb)


def _literal(t, attr, b):
    with torch.no_grad():
        fx, fb = float(t(t.x0)), float(t(b))
    return fx, fb, fx - fb - float(attr.double().sum())


@pytest.mark.parametrize("input_type,steps,method,fails", [
    ("waveform", 4, "gausslegendre", True),       # the floor's cliff between the nodes
    ("waveform", 2, "riemann_trapezoid", True),
    ("cnn", 8, "gausslegendre", False),            # no floor: smooth along the path
])  # fmt: skip
def test_delta_is_literal_and_flags_too_few_steps(whisper_bb, item, input_type, steps, method, fails):
    u, clf = item
    t = classifier_target(whisper_bb, clf, u, "action", input_type, class_index=1)
    b = t.baseline("silence")
    a, delta, c = attribute_with_completeness(t, "integrated_gradients", b, n_steps=steps, ig_method=method,
                                              internal_batch_size=8)  # fmt: skip
    fx, fb, want = _literal(t, a, b)
    assert c.f_x == pytest.approx(fx, abs=1e-5) and c.f_b == pytest.approx(fb, abs=1e-5)
    assert c.delta == pytest.approx(want, abs=1e-5)  # f(x) - f(b) - sum(attr), computed literally
    assert delta == pytest.approx(abs(want), abs=1e-5)
    assert c.ratio == pytest.approx((fx - fb - want) / (fx - fb), rel=1e-4)
    assert abs(fx - fb) > 0.05  # a real gap to explain
    assert c.fails(0.05) is fails
    assert (abs(want) > 0.05 * abs(fx - fb)) is fails  # the same test, literally


def test_completeness_arithmetic_and_bad_tolerance():
    c = Completeness(f_x=2.0, f_b=-1.0, attribution_sum=2.7)
    assert c.gap == 3.0 and c.delta == pytest.approx(0.3) and c.ratio == pytest.approx(0.9)
    assert c.fails(0.05) and not c.fails(0.1)
    assert np.isnan(Completeness(1.0, 1.0, 0.0).ratio) and not Completeness(1.0, 1.0, 0.0).fails(0.05)
    assert Completeness(1.0, 1.0, 1e-3).fails(0.05)  # no gap: any sum is incomplete
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        c.fails(-0.1)


def test_other_methods_have_no_completeness(whisper_bb, item):
    u, clf = item
    t = classifier_target(whisper_bb, clf, u, "action", "cnn", class_index=1)
    _, delta, c = attribute_with_completeness(t, "saliency", None)
    assert delta is None and c is None


class _Corpus(list):
    name = "tiny_corpus"

    @property
    def ids(self):
        return [u.id for u in self]


def _run(whisper_bb, item, tmp_path, monkeypatch, inputs, steps, tolerance=0.05, per_method=None):
    from src.analyses.attribution import Attribution
    from src.analyses.base import AnalysisContext

    u, clf = item
    ckpt = tmp_path / "clf.pt"
    ckpt.write_bytes(b"")  # only has to exist: the classifier comes from the patched loader

    def fake_load(path, *args, **kwargs):
        return whisper_bb, clf, {"splits": {"test": [u.id]}}

    monkeypatch.setattr("src.analyses.base.load_classifier", fake_load)
    an = Attribution(checkpoint=str(ckpt), heads=["action"], class_index=1, methods=["integrated_gradients"],
                     inputs=inputs, baseline="silence", options={"n_steps": steps, "internal_batch_size": 8},
                     save_raw=True, plot_utterances=0, n_boot=10, ig_tolerance=tolerance, per_method=per_method)  # fmt: skip
    return an.run(AnalysisContext(None, _Corpus([u]), seed=0))


def test_analysis_warns_per_item_when_completeness_fails(whisper_bb, item, tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="src.analyses.attribution"):
        res = _run(whisper_bb, item, tmp_path, monkeypatch, ["waveform", "cnn"], steps=4)
    msgs = [r.getMessage() for r in caplog.records if "IG completeness fails" in r.getMessage()]
    assert len(msgs) == 1  # waveform only: the cnn input is complete with 4 nodes
    assert "utterance utt1" in msgs[0] and "method integrated_gradients" in msgs[0]
    assert "input waveform" in msgs[0] and "target action=" in msgs[0]
    assert res.meta["ig_incomplete"] == 1 and res.meta["ig_tolerance"] == 0.05
    # the rows' delta is f(x) - f(b) - sum(raw attribution), recomputed from the saved raw attribution
    u, clf = item
    raw = np.load(res.raw_dir + f"/{u.id}.npz")
    for inp in ("waveform", "cnn"):
        row = next(r for r in res.rows if r["input"] == inp and r["segment_index"] == 0)
        t = classifier_target(whisper_bb, clf, u, "action", inp, class_index=1)
        key = next(k for k in raw.files if k.startswith(f"integrated_gradients__{inp}__"))
        fx, fb, want = _literal(t, torch.from_numpy(raw[key]), t.baseline("silence"))
        assert row["completeness_gap"] == pytest.approx(fx - fb, abs=1e-5)
        assert row["completeness_delta"] == pytest.approx(want, abs=1e-5)
        assert row["completeness_ratio"] == pytest.approx((fx - fb - want) / (fx - fb), rel=1e-4)
        assert (abs(want) > 0.05 * abs(fx - fb)) == (inp == "waveform")


def test_analysis_silent_when_complete(whisper_bb, item, tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="src.analyses.attribution"):
        res = _run(whisper_bb, item, tmp_path, monkeypatch, ["cnn"], steps=8)
    assert not [r for r in caplog.records if "completeness" in r.getMessage()]
    assert res.meta["ig_incomplete"] == 0
    assert all(abs(r["completeness_ratio"] - 1) < 0.05 for r in res.rows)
    # a generous tolerance silences the waveform case too (the threshold is the one configured)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.analyses.attribution"):
        _run(whisper_bb, item, tmp_path, monkeypatch, ["waveform"], steps=4, tolerance=10.0)
    assert not [r for r in caplog.records if "completeness" in r.getMessage()]


def test_integrated_gradients_own_baseline(whisper_bb, item, tmp_path, monkeypatch):
    from src.analyses.attribution import Attribution
    from src.analyses.base import AnalysisError

    res = _run(whisper_bb, item, tmp_path, monkeypatch, ["cnn"], steps=4,
               per_method={"integrated_gradients": {"baseline": "noise", "snr_db": 5.0}})  # fmt: skip
    assert {r["baseline"] for r in res.rows} == {"noise"}
    u, clf = item
    t = classifier_target(whisper_bb, clf, u, "action", "cnn", class_index=1)
    with torch.no_grad():
        gap = float(t(t.x0)) - float(t(t.baseline("noise", snr_db=5.0, seed=0)))
    assert res.rows[0]["completeness_gap"] == pytest.approx(gap, abs=1e-5)
    with pytest.raises(AnalysisError, match="per_method.integrated_gradients.baseline"):
        Attribution(per_method={"integrated_gradients": {"baseline": "pink"}})
