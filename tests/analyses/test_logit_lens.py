"""Logit lens on Whisper's decoder (src/analyses/logit_lens.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.logit_lens import LogitLens
from src.backbones.whisper import WhisperBackbone
from src.datamodules.corpus import TextGridCorpus
from src.lenses.logit import decoder_states, lens_log_probs, position_measures
from tests.builders import tiny_whisper
from tests.conftest import make_tone_corpus


@pytest.fixture(scope="module")
def bb(tmp_path_factory) -> WhisperBackbone:
    """A tiny random Whisper with 2 decoder layers whose greedy tokens vary (init_std=1)."""
    d = tmp_path_factory.mktemp("lively_whisper_ll")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_whisper(d, init_std=1.0, decoder_layers=2)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return WhisperBackbone(str(d))


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> TextGridCorpus:
    return TextGridCorpus(make_tone_corpus(tmp_path_factory.mktemp("tones_ll"), num_utterances=3))


def _ctx(corpus, backbone) -> AnalysisContext:
    return AnalysisContext(None, corpus, seed=0, backbone_factory=lambda: backbone)


def _hooks(bb) -> set:
    return {(n, kind, k) for n, m in bb.model.named_modules()
            for kind, d in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks)) for k in d}  # fmt: skip


def _inputs(bb, n_tokens=6):
    w = [0.1 * torch.randn(12000, generator=torch.Generator().manual_seed(1))]
    feats = bb.features(w)
    ids = torch.tensor([bb.decoder_prompt_ids() + list(range(10, 10 + n_tokens))])  # (1, T)
    return w, feats, ids


def test_states_follow_the_convention_and_last_lens_is_the_models_logits(bb):
    w, feats, ids = _inputs(bb)
    enc = bb.window_states(w)[-1]  # encoder output
    hs = decoder_states(bb, enc, ids)
    assert len(hs) == len(bb.decoder_layer_modules()) + 1 == 3
    with torch.no_grad():
        out = bb.model(input_features=feats, decoder_input_ids=ids, output_hidden_states=True)
    ref = out.decoder_hidden_states
    for k in range(len(hs) - 1):
        assert torch.equal(hs[k], ref[k])  # raw residual states as transformers returns them
    # transformers' last decoder state is already normed; ours is raw, normed once by the lens
    assert torch.allclose(bb.decoder_final_norm_module()(hs[-1]), ref[-1], atol=1e-6)
    assert not torch.allclose(hs[-1], ref[-1], atol=1e-3)
    lp = lens_log_probs(bb, hs, len(hs) - 1)
    assert torch.allclose(lp, torch.log_softmax(out.logits, -1), atol=1e-5)
    with torch.no_grad():
        logits = bb.output_head()(bb.decoder_final_norm_module()(hs[-1]))
    assert (logits - out.logits).abs().max() < 1e-5


def test_position_measures_against_a_literal_loop():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(7, 11, generator=g, dtype=torch.float64), -1)
    final = torch.log_softmax(torch.randn(7, 11, generator=g, dtype=torch.float64), -1)
    target = torch.tensor([0, 3, 5, 10, 2, 2, 7])
    m = position_measures(logp, final, target, top_k=3)
    for i in range(7):
        lp, fp = logp[i].numpy(), final[i].numpy()
        order = sorted(range(11), key=lambda v: -lp[v])
        assert m["agreement"][i] == float(int(np.argmax(lp)) == int(np.argmax(fp)))
        assert m["rank"][i] == order.index(int(target[i]))
        assert m["in_topk"][i] == float(order.index(int(target[i])) < 3)
        assert m["logprob"][i] == pytest.approx(lp[int(target[i])], abs=1e-12)
        assert m["kl"][i] == pytest.approx(sum(np.exp(fp[v]) * (fp[v] - lp[v]) for v in range(11)), abs=1e-12)
    same = position_measures(final, final, final.argmax(-1), top_k=1)
    assert same["agreement"].tolist() == [1.0] * 7 and same["rank"].tolist() == [0.0] * 7
    assert np.abs(same["kl"]).max() == 0.0


def test_run_against_a_literal_teacher_forced_reference(bb, tones):
    before = (bb.window_states([torch.zeros(8000)]), _hooks(bb))[1]
    res = LogitLens(utterances="all", top_k=3, n_boot=100).run(_ctx(tones, bb))
    assert _hooks(bb) == before
    rows = {(r["layer"], r["metric"]): r["value"] for r in res.rows}
    last = 2
    assert rows[last, "top1_agreement"] == 1.0 and rows[last, "final_token_rank"] == 0.0
    assert rows[last, "final_token_in_topk"] == 1.0 and abs(rows[last, "kl_final_layer"]) < 1e-6
    # literal reference: every utterance through the full model (teacher forcing), layer 0 from
    # transformers' own decoder_hidden_states[0], measures averaged over all positions by hand
    agree0, kl0, lp_last, n, n_ended = [], [], [], 0, 0
    for i in range(len(tones)):
        w = [torch.from_numpy(tones[i].audio)]
        feats = bb.features(w)
        with torch.no_grad():
            toks = bb.model.generate(feats)[0].tolist()  # one item: no padding; Whisper drops the end-of-text
            ended = len(toks) < 20  # shorter than max_length: it said end-of-text (id 3)
            ids = torch.tensor([bb.decoder_prompt_ids() + toks])
            out = bb.model(input_features=feats, decoder_input_ids=ids, output_hidden_states=True)
            keep = slice(None) if ended else slice(None, -1)  # positions predicting toks (+ end-of-text)
            lf = torch.log_softmax(out.logits[0, keep], -1)
            l0 = torch.log_softmax(bb.model.proj_out(bb.model.model.decoder.layer_norm(out.decoder_hidden_states[0][0, keep])), -1)
        tgt = torch.tensor(toks + [3] if ended else toks)
        n_ended += ended
        toks = tgt.tolist()
        assert torch.equal(lf.argmax(-1), tgt)  # greedy tokens = the final argmax (no suppressed tokens here)
        agree0 += (l0.argmax(-1) == lf.argmax(-1)).tolist()
        kl0 += (lf.exp() * (lf - l0)).sum(-1).tolist()
        lp_last += lf.gather(-1, tgt[:, None])[:, 0].tolist()
        n += len(toks)
    assert res.meta["positions"] == n and 0 < n_ended < len(tones)  # both kinds of transcript occur
    assert rows[0, "top1_agreement"] == pytest.approx(np.mean(agree0), abs=1e-12)
    assert rows[0, "kl_final_layer"] == pytest.approx(np.mean(kl0), rel=1e-5)  # float32 logits, KL about 20 nats
    assert rows[last, "final_token_logprob"] == pytest.approx(np.mean(lp_last), abs=1e-5)
    assert rows[0, "kl_final_layer"] > 0.1
    # top-k table: k rows per position and layer, sorted by log-prob; top-1 at the last layer = the final token
    topk = res.tables["logit_lens_topk"]
    assert len(topk) == n * 3 * 3
    lastk = [r for r in topk if r["layer"] == last]
    for p in range(0, len(lastk), 3):
        a, b_, c = lastk[p : p + 3]
        assert a["logprob"] >= b_["logprob"] >= c["logprob"] and a["token"] == a["final_token"]
    for r in res.rows:
        assert r["ci_low"] - 1e-9 <= r["value"] <= r["ci_high"] + 1e-9


def test_saved_figures(bb, tones, tmp_path: Path):
    res = LogitLens(utterances="all", max_utterances=1, top_k=0, n_boot=20).run(_ctx(tones, bb))
    assert "logit_lens_topk" not in res.tables
    pngs = {p.name for p in res.save(tmp_path, {"backbone": "tiny"})}
    assert pngs == {"logit_lens_agreement_over_layers.png", "logit_lens_kl_over_layers.png",
                    "logit_lens_logprob_over_layers.png"}  # fmt: skip


def test_model_without_decoder_is_refused(tiny_w2v2_dir, tones):
    from src.backbones.hf import HFBackbone

    with pytest.raises(AnalysisError, match=r"(?s)Wav2Vec2Model.*WhisperForConditionalGeneration"):
        LogitLens(utterances="all").run(_ctx(tones, HFBackbone(str(tiny_w2v2_dir))))


def test_hooks_removed_on_error(bb, tones):
    def boom(*_):
        raise RuntimeError("boom")

    bb.window_states([torch.zeros(8000)])
    before = _hooks(bb)
    h = bb.decoder_layer_modules()[0].register_forward_pre_hook(boom)  # fails inside decoder_states' hook block
    try:
        with pytest.raises(RuntimeError, match="boom"):
            decoder_states(bb, bb.window_states([torch.zeros(8000)])[-1], torch.tensor([[2, 5, 6]]))
    finally:
        h.remove()
    assert _hooks(bb) == before


def test_decoder_layer_out_of_range(bb, tones):
    with pytest.raises(AnalysisError, match="decoder states"):
        LogitLens(layers=[5], utterances="all").run(_ctx(tones, bb))
