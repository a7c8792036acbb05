"""WavLM: the faithful attention (src/context_mixing/wavlm.py) reproduces transformers' layers, and every measure
computed through it matches the literal reference (which recomputes WavLM's gated relative bias by loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.context_mixing import (
    ENCODER_MEASURES,
    ContextMixingError,
    encoder_scores,
    pool_receivers,
    row_normalize,
)
from src.context_mixing.wavlm import faithful_wavlm
from tests.builders import hook_snapshot
from tests.context_mixing.conftest import make_backbone
from tests.context_mixing.helpers import _groups
from tests.reference import context_mixing as ref

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["wavlm_post", "wavlm_stable"])
def test_faithful_attention_reproduces_transformers(cm_root, waveform, family):
    bb = make_backbone(cm_root, family, double=False)
    batch, mask, _ = bb._prepare([waveform])
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        bb.model.to(dtype)
        with torch.no_grad():
            want = bb.model(batch.to(dtype), attention_mask=mask, output_hidden_states=True, output_attentions=True)
            with faithful_wavlm(bb.model) as mods:
                alphas = []
                hs = [m.register_forward_hook(lambda m, a, o, got=alphas: got.append(o[1])) for m in mods]
                got = bb.model(batch.to(dtype), attention_mask=mask, output_hidden_states=True)
                for h in hs:
                    h.remove()
        assert "forward" not in bb.attention_modules()[0].__dict__  # restored
        assert len(got.hidden_states) == len(want.hidden_states)
        for a, b in zip(got.hidden_states, want.hidden_states):
            np.testing.assert_allclose(a.double().numpy(), b.double().numpy(), atol=tol, rtol=0)
        for alpha, avg in zip(alphas, want.attentions):  # per head (B, H, T, T): its head mean = transformers' copy
            assert alpha.shape == avg.shape
            assert not torch.allclose(alpha[:, 0], alpha[:, 1])  # really per head, not a broadcast
            np.testing.assert_allclose(alpha.mean(1).double().numpy(), avg[:, 0].double().numpy(), atol=tol)


@pytest.mark.parametrize("family", ["wavlm_post", "wavlm_stable"])
def test_wavlm_measures_match_the_literal_reference(cm_root, waveform, family):
    bb = make_backbone(cm_root, family)
    T, g = _groups(bb, waveform)
    before = hook_snapshot(bb.model)
    r = encoder_scores(bb, waveform, ENCODER_MEASURES, source_groups=g, per_head=True)
    assert hook_snapshot(bb.model) == before and "forward" not in bb.attention_modules()[0].__dict__
    np.testing.assert_allclose(r.frame["attention"], ref.head_mean_attention(bb, waveform), atol=1e-12)
    np.testing.assert_array_equal(r.frame["rollout"], ref.compute_joint_attention(r.frame["attention"]))
    if family == "wavlm_post":  # the norm loops are slow; one layout is enough for them
        rows = list(range(0, T, 4))
        want = ref.attention_norm(bb, waveform, residual=True, rows=rows)
        np.testing.assert_allclose(r.frame["attention_norm_res"][:, rows], want[:, rows], atol=1e-10, rtol=1e-10)
    vz = row_normalize(pool_receivers(r.value_zeroing, g))
    np.testing.assert_allclose(vz, ref.value_zeroing_words(bb, waveform, g), atol=1e-10)


def test_wavlm_with_transformers_attention_is_a_clear_error_per_measure(cm_root, waveform):
    bb = make_backbone(cm_root, "wavlm_post")
    for m in ENCODER_MEASURES:
        with pytest.raises(ContextMixingError, match=f"measure '{m}' is not available for WavLM.*wavlm='faithful'"):
            encoder_scores(bb, waveform, [m], wavlm="transformers")
