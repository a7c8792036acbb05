"""One meaning of "layer k" for every family (src/layers.py): state 0 = input to the first
transformer layer, state k = raw output of layer k (residual stream), then ``final_norm``
where the model applies a norm after its last layer.

Each family's states are checked against an independent computation: the model's own
modules run by hand (conv stem, projection, positional conv / embeddings, each layer in
turn), not transformers' ``hidden_states``.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from src.backbones import base
from src.backbones.base import BackboneError, _first, record_outputs
from src.backbones.features import SpectralBaseline
from src.backbones.hf import HFBackbone
from src.backbones.whisper import WhisperBackbone

FAMILIES = [  # (model_type, feature-encoder norm: "layer" also selects do_stable_layer_norm, stable?)
    ("wav2vec2", "group", False),  # post-LN (base layout)
    ("wav2vec2", "layer", True),  # stable-LN (large-lv60 / XLS-R layout)
    ("hubert", "group", False),
    ("hubert", "layer", True),
    ("wavlm", "group", False),  # wavlm-base(-plus)
    ("wavlm", "layer", True),  # wavlm-large
    ("data2vec-audio", "layer", False),  # data2vec-audio has only the post-LN encoder
]


def _by_hand(bb: HFBackbone, batch: torch.Tensor) -> list[torch.Tensor]:
    """Residual states of a wav2vec2-family model from its own modules, one step at a time."""
    m, enc = bb.model, bb.model.encoder
    feats = m.feature_extractor(batch).transpose(1, 2)  # (B, T, C)
    h = _first(m.feature_projection(feats))  # (B, T, D)
    h = h + enc.pos_conv_embed(h)
    if bb.norm_layout == "post_ln":
        h = enc.layer_norm(h)  # post-LN: the encoder's LayerNorm is the input of layer 1
    states, bias = [h], None
    for i, layer in enumerate(enc.layers):
        params = inspect.signature(layer.forward).parameters
        if "position_bias" in params:  # WavLM: relative position bias from the first layer onwards
            kw = {"position_bias": bias, **({"index": i} if "index" in params else {})}
            h, bias = layer(h, **kw)[:2]
        else:
            h = _first(layer(h))
        states.append(h)
    return states


@pytest.mark.parametrize("model_type,norm,stable", FAMILIES)
def test_states_are_the_residual_stream_then_final_norm(model_type, norm, stable, tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = tiny_model(model_type, norm, num_hidden_layers=2)
        bb = HFBackbone(str(d), attn_implementation="eager")
    assert bb.norm_layout == ("stable_ln" if stable else "post_ln")
    assert bb.num_layers == 3  # residual states 0..2
    assert bb.layer_names == (["0", "1", "2", "final_norm"] if stable else ["0", "1", "2"])
    assert (bb.final_norm_module() is bb.model.encoder.layer_norm) == stable
    torch.manual_seed(0)
    x = torch.randn(8000)
    enc = bb.encode([x])
    assert enc.hidden.shape == (len(bb.layer_names), 1, bb.num_frames(8000), 32)
    batch, _, _ = bb._prepare([x])
    ref = _by_hand(bb, batch)
    for k, r in enumerate(ref):
        torch.testing.assert_close(enc.hidden[k], r, atol=1e-5, rtol=1e-5, msg=f"state {k}")
    last = enc.hidden[bb.num_layers - 1]
    normed = torch.nn.functional.layer_norm(last, (32,))
    if not stable:  # post-LN: every layer ends in its own LayerNorm, there is nothing after the last one
        assert (last - normed).abs().max() < 1e-4
    if stable:
        assert (last - normed).abs().max() > 0.1  # the last residual state is not normalised
        final = enc.hidden[-1]
        torch.testing.assert_close(final, bb.model.encoder.layer_norm(ref[-1]), atol=1e-5, rtol=1e-5)
        # and that is what transformers calls the model's output
        torch.testing.assert_close(final, bb.model(batch).last_hidden_state, atol=1e-5, rtol=1e-5)


def _whisper_by_hand(bb: WhisperBackbone, feats: torch.Tensor) -> list[torch.Tensor]:
    e = bb.encoder
    h = torch.nn.functional.gelu(e.conv1(feats))
    h = torch.nn.functional.gelu(e.conv2(h)).permute(0, 2, 1)  # (B, T, D)
    h = h + e.embed_positions.weight[: h.shape[1]]
    states = [h]
    for layer in e.layers:
        h = _first(layer(h, None))
        states.append(h)
    return states


def test_whisper_last_state_is_raw_and_final_norm_is_explicit(tiny_whisper_dir):
    bb = WhisperBackbone(str(tiny_whisper_dir), attn_implementation="eager")
    assert bb.num_layers == 3 and bb.layer_names == ["0", "1", "2", "final_norm"]
    assert bb.final_norm_module() is bb.encoder.layer_norm
    torch.manual_seed(0)
    x = torch.randn(8000)
    enc = bb.encode([x])
    t = bb.num_frames(8000)
    assert enc.hidden.shape == (4, 1, t, 32) and enc.lengths.tolist() == [t]
    feats = bb.features([x])
    ref = _whisper_by_hand(bb, feats)
    for k, r in enumerate(ref):
        torch.testing.assert_close(enc.hidden[k], r[:, :t], atol=1e-5, rtol=1e-5, msg=f"state {k}")
    final = enc.hidden[-1]
    torch.testing.assert_close(final, bb.encoder.layer_norm(ref[-1])[:, :t], atol=1e-5, rtol=1e-5)
    out = bb.encoder(feats, output_hidden_states=True)
    # transformers' last hidden state is the normed one: that is our final_norm, not state 2
    torch.testing.assert_close(final, out.hidden_states[-1][:, :t], atol=1e-5, rtol=1e-5)
    assert (enc.hidden[2] - final).abs().max() > 0.1


def test_baselines_have_one_state_and_no_final_norm():
    for kind in ("mfcc", "logmel"):
        bb = SpectralBaseline(kind)
        assert bb.layer_names == ["0"] and bb.extra_states == [] and bb.final_norm_module() is None
        assert bb.encode([torch.randn(8000)]).hidden.shape[0] == 1
        with pytest.raises(BackboneError, match="no transformer layers"):
            bb.layer_modules()


def test_fingerprint_changes_with_the_layer_convention(monkeypatch, tiny_w2v2_dir):
    bb = HFBackbone(str(tiny_w2v2_dir))
    mf = SpectralBaseline("mfcc")
    before = bb.fingerprint, mf.fingerprint
    monkeypatch.setattr(base, "LAYER_CONVENTION_VERSION", 1)
    assert bb.fingerprint != before[0] and mf.fingerprint != before[1]


def test_encode_removes_its_hooks_on_success_and_on_error(tiny_whisper_dir, tiny_w2v2_dir, monkeypatch):
    for bb in (WhisperBackbone(str(tiny_whisper_dir)), HFBackbone(str(tiny_w2v2_dir))):
        last = bb.layer_modules()[-1]
        x = torch.randn(4000)
        bb.encode([x])  # transformers installs its own (permanent) capture hooks on first use
        n = len(last._forward_hooks)
        bb.encode([x])
        assert len(last._forward_hooks) == n
        inner = bb.encoder if isinstance(bb, WhisperBackbone) else bb.model

        def boom(*a, **k):
            raise RuntimeError("boom")

        monkeypatch.setattr(inner, "forward", boom)
        with pytest.raises(RuntimeError, match="boom"):
            bb.encode([x])
        monkeypatch.undo()
        assert len(last._forward_hooks) == n


def test_record_outputs_and_hooks_context_manager():
    lin = torch.nn.Linear(3, 2)
    with record_outputs([lin]) as got:
        y = lin(torch.ones(1, 3))
    torch.testing.assert_close(got[0], y)
    assert not lin._forward_hooks
    with pytest.raises(KeyError):
        with base.forward_hooks([(lin, lambda m, a, o: o * 0)]):
            assert lin(torch.ones(1, 3)).abs().sum() == 0
            raise KeyError("x")
    assert not lin._forward_hooks
