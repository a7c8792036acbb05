"""Encoder context mixing against the literal references (tests/reference/context_mixing.py), float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.context_mixing import (
    ENCODER_MEASURES,
    ContextMixingError,
    encoder_scores,
    pool_blocks,
    pool_receivers,
    row_normalize,
)
from src.context_mixing.common import capture_layer_inputs
from src.context_mixing.encoder import value_zeroing_outputs
from tests.builders import hook_snapshot
from tests.context_mixing.conftest import make_backbone
from tests.context_mixing.helpers import _groups
from tests.reference import context_mixing as ref

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_measure_matches_the_literal_reference(family_bb, waveform):
    fam, bb = family_bb
    T, g = _groups(bb, waveform)
    r = encoder_scores(bb, waveform, ENCODER_MEASURES, source_groups=g, per_head=True, utt_id="u1")
    L = len(bb.layer_modules())
    assert r.layers == list(range(L)) and r.num_frames == T
    A = ref.head_mean_attention(bb, waveform)  # (L, T, T), recomputed from the weights
    np.testing.assert_allclose(r.frame["attention"], A, atol=1e-12, rtol=0)
    np.testing.assert_allclose(r.heads["attention"].mean(1), A, atol=1e-12, rtol=0)
    # rollout on frames (bit-exact with Abnar & Zuidema's loop on the same head means), then words
    R = ref.compute_joint_attention(r.frame["attention"])
    assert np.array_equal(r.frame["rollout"], R)
    np.testing.assert_allclose(row_normalize(pool_blocks(r.frame["rollout"], g, g)),
                               np.stack([ref.normalize_rows(ref.word_blocks(R[i], g, g)) for i in range(L)]),
                               atol=1e-12)  # fmt: skip
    rows = list(range(0, T, 4))  # the literal pair loops on every 4th receiving frame (every source frame)
    for m, res in (("attention_norm", False), ("attention_norm_res", True)):
        want_n = ref.attention_norm(bb, waveform, residual=res, rows=rows)
        np.testing.assert_allclose(r.frame[m][:, rows], want_n[:, rows], atol=1e-10, rtol=1e-10)
    # value zeroing: the framework's batched hook way vs one explicit re-implemented layer forward per word
    vz = row_normalize(pool_receivers(r.value_zeroing, g))  # (L, W, W)
    want = ref.value_zeroing_words(bb, waveform, g)
    np.testing.assert_allclose(vz, want, atol=1e-10)
    assert np.isfinite(vz).all() and want.max() > 0.05  # a real signal, not zeros on both sides
    # rows of every word matrix sum to 1 after row_normalize
    for S in [vz] + [row_normalize(pool_blocks(r.frame[m], g, g)) for m in r.frame]:
        np.testing.assert_allclose(S.sum(-1), 1.0, atol=1e-12)
    # frames outside the words were not computed (NaN), those inside were
    inside = np.unique(np.concatenate(g))
    assert np.isfinite(r.value_zeroing[:, inside]).all()
    assert np.isnan(np.delete(r.value_zeroing, inside, axis=1)).all()


def test_frame_level_value_zeroing_and_layer_subset(cm_root, waveform):
    bb = make_backbone(cm_root, "w2v2_stable")
    T, g = _groups(bb, waveform)
    r = encoder_scores(bb, waveform, ["value_zeroing", "rollout"], layers=[2, 1], batch_size=7)
    assert r.value_zeroing.shape == (2, T, T) and r.layers == [2, 1]
    full = encoder_scores(bb, waveform, ["rollout", "value_zeroing"], source_groups=g)
    # rollout of a layer subset still starts at the first layer
    np.testing.assert_array_equal(r.frame["rollout"], full.frame["rollout"][[2, 1]])
    # frame groups: zeroing frame j; summing is not the same as zeroing a word, but each column is one frame
    frames = [np.array([t]) for t in range(T)]
    want = ref.value_zeroing_words(bb, waveform, frames, layers=[2, 1])  # row-normalised, one frame per "word"
    np.testing.assert_allclose(row_normalize(r.value_zeroing), want, atol=1e-10)


@pytest.mark.parametrize("family", ["w2v2_post", "w2v2_stable", "whisper"])
def test_last_layer_norm_handling(cm_root, waveform, family):
    """Unperturbed recomputation of the last layer (the machinery value zeroing uses) == the backbone's own
    last state: final_norm for Whisper / stable-LN, the raw last layer for post-LN (whose encoder.layer_norm
    sits before the first layer and must not be applied)."""
    bb = make_backbone(cm_root, family)
    run, T = __import__("src.context_mixing.encoder", fromlist=["x"]).encoder_inputs(bb, waveform)
    last = bb.layer_modules()[-1]
    attn = bb.attention_modules()[-1]
    with torch.no_grad(), capture_layer_inputs([last]) as lin, capture_layer_inputs([attn]) as ain:
        run()
    (args, kwargs), (a_args, a_kwargs) = lin[0], ain[0]
    a_in = a_args[0] if a_args else a_kwargs["hidden_states"]
    norm = bb.final_norm_module()
    assert (norm is None) == (family == "w2v2_post")
    keep = torch.ones(2, T, dtype=torch.float64)
    rows = torch.arange(3, T - 2)
    (_, out), = list(value_zeroing_outputs(last, attn, args, kwargs, a_in, keep, rows, norm, batch_size=2))
    with torch.no_grad():  # the model's own last_hidden_state (float64 input)
        if family == "whisper":
            state = bb.encoder(bb.features([waveform]).double()).last_hidden_state[0]  # whole window, final norm
        else:
            batch, mask, _ = bb._prepare([waveform])
            state = bb.model(batch.double(), attention_mask=mask).last_hidden_state[0]
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), state[rows].numpy(), atol=1e-10)


def test_value_zeroing_is_the_same_under_sdpa_and_eager(cm_root, waveform):
    for fam in ("w2v2_post", "w2v2_stable", "whisper"):  # w2v2_stable: with an attention mask
        a = make_backbone(cm_root, fam, attn="sdpa")
        b = make_backbone(cm_root, fam, attn="eager")
        assert a.model.config._attn_implementation == "sdpa" and b.model.config._attn_implementation == "eager"
        T, g = _groups(a, waveform)
        ra = encoder_scores(a, waveform, ["value_zeroing"], source_groups=g)
        rb = encoder_scores(b, waveform, ["value_zeroing"], source_groups=g)
        assert ra.attn_implementation["value_zeroing"] == "sdpa" and rb.attn_implementation["value_zeroing"] == "eager"
        np.testing.assert_allclose(ra.value_zeroing, rb.value_zeroing, atol=1e-12)
        # every receiving frame (no query subset) gives the same rows as the default subset of word frames
        full = encoder_scores(a, waveform, ["value_zeroing"], source_groups=g, receivers=None, batch_size=3)
        assert np.isfinite(full.value_zeroing).all()
        np.testing.assert_allclose(full.value_zeroing[:, ra.receivers], ra.value_zeroing[:, ra.receivers], atol=1e-12)


def test_eager_only_for_weight_measures_and_restored(cm_root, waveform):
    bb = make_backbone(cm_root, "whisper")
    seen = []
    h = bb.attention_modules()[0].register_forward_pre_hook(lambda m, a: seen.append(bb.model.config._attn_implementation))
    try:
        T, g = _groups(bb, waveform)
        encoder_scores(bb, waveform, ["value_zeroing"], source_groups=g)
        assert set(seen) == {"sdpa"}
        seen.clear()
        r = encoder_scores(bb, waveform, ["attention", "value_zeroing"], source_groups=g)
        assert seen[0] == "eager" and set(seen[1:]) == {"sdpa"}  # one eager pass for the weights only
        assert r.attn_implementation == {"attention": "eager", "value_zeroing": "sdpa"}
        assert bb.model.config._attn_implementation == "sdpa"
    finally:
        h.remove()


def test_hooks_removed_after_runs_and_errors(cm_root, waveform):
    bb = make_backbone(cm_root, "w2v2_stable")
    T, g = _groups(bb, waveform)
    encoder_scores(bb, waveform, ["attention"])  # let transformers install whatever it installs on first use
    before = hook_snapshot(bb.model)
    encoder_scores(bb, waveform, ENCODER_MEASURES, source_groups=g)
    assert hook_snapshot(bb.model) == before

    def boom(*_):
        raise RuntimeError("boom")

    for measures, mod in ((["value_zeroing"], bb.model.encoder.layers[1].feed_forward),
                          (["attention_norm"], bb.model.encoder.layers[1].feed_forward)):  # fmt: skip
        h = mod.register_forward_hook(boom)
        mine = hook_snapshot(bb.model)
        with pytest.raises(RuntimeError, match="boom"):
            encoder_scores(bb, waveform, measures, source_groups=g)
        assert hook_snapshot(bb.model) == mine
        assert bb.model.config._attn_implementation == "sdpa"  # restored after the error in the eager pass
        h.remove()
    assert hook_snapshot(bb.model) == before


def test_errors_name_what_is_wrong(cm_root, waveform):
    bb = make_backbone(cm_root, "whisper")
    with pytest.raises(ContextMixingError, match="unknown encoder measure 'attn'"):
        encoder_scores(bb, waveform, ["attn"])
    with pytest.raises(ContextMixingError, match="analysis.layers is empty"):
        encoder_scores(bb, waveform, ["attention"], layers=[], utt_id="u7")
    with pytest.raises(ContextMixingError, match=r"analysis.layers: \[5\] out of range"):
        encoder_scores(bb, waveform, ["attention"], layers=[5])
    with pytest.raises(ContextMixingError, match="utterance 'long'.*longer than Whisper's 2 s window"):
        encoder_scores(bb, torch.zeros(int(2.3 * 16000)), ["value_zeroing"], utt_id="long")
    # a model that returns no attention weights (simulated: the attention module drops them)
    h = bb.attention_modules()[1].register_forward_hook(lambda m, a, out: (out[0], None))
    try:
        with pytest.raises(ContextMixingError, match="utterance 'u3': measure 'attention_norm'.*cannot return attention"):
            encoder_scores(bb, waveform, ["attention_norm"], utt_id="u3")
    finally:
        h.remove()
    assert bb.model.config._attn_implementation == "sdpa"
