"""Targets: classifier logits, Whisper teacher-forced token/word log-probs, CTC; bad input; eval mode; cleanup."""

from __future__ import annotations

import warnings

import pytest
import torch

from src.attribution import AttributionError, attribute, classifier_target, ctc_targets, whisper_token_targets
from tests.attribution.conftest import make_classifier, make_utt


def test_classifier_logit_equals_the_classifier_on_encode(w2v_bb):
    u = make_utt(8000, words=[])
    clf = make_classifier(w2v_bb, weighted=True)
    enc = w2v_bb.encode([torch.as_tensor(u.audio)])
    states = [enc.hidden[s] for s in range(enc.hidden.shape[0])]
    with torch.no_grad():
        want = clf(states, torch.ones(1, states[0].shape[1], dtype=torch.bool))["object"][0]
    for it in ("waveform", "cnn"):
        pred = classifier_target(w2v_bb, clf, u, "object", it, which="predicted")
        assert pred.info["class_index"] == int(want.argmax())
        t = classifier_target(w2v_bb, clf, u, "object", it, which="true", label="door")
        assert t.info["class_index"] == 1 and t.info["class"] == "door"
        with torch.no_grad():
            assert float(t(t.x0)[0]) == pytest.approx(float(want[1]), abs=1e-5)


def test_classifier_bad_input_names_the_item(w2v_bb):
    u = make_utt(8000, uid="item7", words=[])
    clf = make_classifier(w2v_bb)
    with pytest.raises(AttributionError, match="'item7'.*class index 3 is outside head 'action' with 3"):
        classifier_target(w2v_bb, clf, u, "action", "cnn", class_index=3)
    with pytest.raises(AttributionError, match="'item7'.*no head 'colour'"):
        classifier_target(w2v_bb, clf, u, "colour", "cnn")
    with pytest.raises(AttributionError, match="'item7'.*needs the true 'action' label"):
        classifier_target(w2v_bb, clf, u, "action", "cnn")
    with pytest.raises(AttributionError, match="'item7'.*'fly' is not a class"):
        classifier_target(w2v_bb, clf, u, "action", "cnn", label="fly")
    with pytest.raises(AttributionError, match="'item7'.*CTC target.*without a CTC head"):
        ctc_targets(w2v_bb, u, "cnn")  # a base model: its checkpoint has no *ForCTC head
    with pytest.raises(AttributionError, match="'item7'.*need Whisper"):
        whisper_token_targets(w2v_bb, u, "cnn", tokens=[5])


def test_eval_mode_and_state_restored(w2v_bb):
    """Dropout is on in training mode; the target runs the model in eval mode (same output twice) and restores
    the training flags and requires_grad afterwards."""
    u = make_utt(8000, words=[])
    clf = make_classifier(w2v_bb)
    t = classifier_target(w2v_bb, clf, u, "action", "waveform", class_index=0)
    w2v_bb.train()
    clf.train()
    p = next(clf.parameters())
    p.requires_grad_(True)
    try:
        x = t.x0.repeat(2, 1)
        with torch.no_grad():
            a, b = t(x), t(x)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(a[0], a[1], atol=1e-6, rtol=0)
        assert w2v_bb.training and w2v_bb.model.training and clf.training and p.requires_grad
    finally:
        w2v_bb.eval()
        clf.eval()
        p.requires_grad_(True)


def _hook_snapshot(module):
    return {name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in module.named_modules()}  # fmt: skip


def test_hooks_and_grad_state_cleaned_up_after_errors(w2v_bb):
    u = make_utt(8000, words=[])
    clf = make_classifier(w2v_bb)
    before = _hook_snapshot(w2v_bb)
    grads = [p.requires_grad for p in clf.parameters()]
    t = classifier_target(w2v_bb, clf, u, "action", "waveform", class_index=0)

    def boom(*_a, **_k):
        raise RuntimeError("classifier failed")

    orig = clf.forward_pooled
    clf.forward_pooled = boom
    try:
        with pytest.raises(RuntimeError, match="classifier failed"):
            attribute(t, "integrated_gradients", None, n_steps=2)
    finally:
        clf.forward_pooled = orig
    assert _hook_snapshot(w2v_bb) == before
    assert [p.requires_grad for p in clf.parameters()] == grads
    assert all(not p.requires_grad for p in w2v_bb.parameters())
    assert not w2v_bb.training


def test_whisper_token_and_word_targets(whisper_bb):
    u = make_utt(16000, words=[])
    tokens = [10, 11, 12]
    targets = whisper_token_targets(whisper_bb, u, "cnn", tokens=tokens)
    assert [t.info["token_id"] for t in targets] == tokens
    prompt = whisper_bb.decoder_prompt_ids("en")
    feats = whisper_bb.features([torch.as_tensor(u.audio)])
    with torch.no_grad():
        logits = whisper_bb.model(input_features=feats, decoder_input_ids=torch.tensor([prompt + tokens])).logits
        lp = torch.log_softmax(logits[0].float(), -1)  # (P + n, V)
        want = [float(lp[len(prompt) - 1 + i, tok]) for i, tok in enumerate(tokens)]
        got = [float(t(t.x0)[0]) for t in targets]
    assert got == pytest.approx(want, abs=1e-4)
    words = whisper_token_targets(whisper_bb, u, "spectrogram", level="word", tokens=tokens)
    assert len(words) == 3  # no tokenizer in the tiny model: one word per token
    with torch.no_grad():
        assert float(words[1](words[1].x0)[0]) == pytest.approx(want[1], abs=1e-4)
    with pytest.raises(AttributionError, match="empty"):
        whisper_token_targets(whisper_bb, u, "cnn", tokens=[])


@pytest.fixture(scope="module")
def ctc_bb(tmp_path_factory):
    from src.backbones.hf import HFBackbone
    from tests.builders import save_tiny_ctc_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HFBackbone(str(save_tiny_ctc_model(tmp_path_factory.mktemp("ctc")))).eval()


def test_ctc_targets_sum_log_probs_over_frames(ctc_bb):
    u = make_utt(8000, words=[])
    targets = ctc_targets(ctc_bb, u, "cnn")
    head = ctc_bb.ctc_head()
    enc = ctc_bb.encode([torch.as_tensor(u.audio)])
    with torch.no_grad():
        lp = torch.log_softmax(head.head(enc.hidden[-1]).float(), -1)[0]  # (T, V)
    path = lp.argmax(-1).tolist()
    assert targets, "the tiny CTC model emits tokens"
    for t in targets:
        frames, v = t.info["frames"], t.info["token_id"]
        assert all(path[f] == v for f in frames) and v != head.blank
        with torch.no_grad():
            assert float(t(t.x0)[0]) == pytest.approx(float(lp[frames, v].sum()), abs=1e-4)


def test_layerdrop_and_specaugment_off(tiny_w2v2_dir):
    """A model configured with LayerDrop 0.9 and SpecAugment, left in training mode: the target is deterministic
    and equals the eval-mode model's states."""
    from src.backbones.hf import HFBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = HFBackbone(str(tiny_w2v2_dir), config_overrides={"layerdrop": 0.9, "mask_time_prob": 0.5,
                                                               "mask_time_length": 2})  # fmt: skip
    u = make_utt(8000, words=[])
    clf = make_classifier(bb)
    t = classifier_target(bb, clf, u, "action", "waveform", class_index=0)
    with torch.no_grad():
        want = float(t(t.x0)[0])
        bb.train()
        got = [float(t(t.x0)[0]) for _ in range(3)]
    assert got == [want] * 3 and bb.training
