"""analysis=context_mixing (src/analyses/context_mixing.py): word matrices, results.csv format, figures, the cue
study and bad input, on a tiny random Whisper and a tiny wav2vec2."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.context_mixing import COLUMNS, ContextMixing, align_words
from src.backbones.whisper import WhisperBackbone
from src.context_mixing.common import ContextMixingError
from src.datamodules.corpus import Interval, Utterance
from src.datamodules.homophones import CueItem
from tests.builders import hook_snapshot, tiny_whisper
from tests.helpers import ListCorpus


class CueCorpus(ListCorpus):
    def cue_item(self, i):
        return self.cues[i]


def _utt(uid, words, seconds=1.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = (0.1 * torch.randn(int(seconds * 16000), generator=g)).numpy()
    return Utterance(uid, audio, 16000, text=" ".join(w for w, _, _ in words),
                     tiers={"words": [Interval(s, e, w) for w, s, e in words]})  # fmt: skip


WORDS = [("she", 0.05, 0.2), ("knew", 0.2, 0.45), ("the", 0.45, 0.55), ("new", 0.6, 0.8), ("rules", 0.8, 1.1)]


@dataclass
class FakeTokenizer:
    """Words split into 2-letter pieces (the first with its leading space): words of several tokens."""

    vocab: dict

    def _pieces(self, text):
        out = []
        for w in text.split():
            w = " " + w
            out += [w[:3]] + [w[k : k + 2] for k in range(3, len(w), 2)]
        return out

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(p, 10 + len(self.vocab)) for p in self._pieces(text)]

    def decode(self, ids, skip_special_tokens=True):
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv.get(int(i), "") for i in ids)

    def convert_ids_to_tokens(self, i):
        return {v: k for k, v in self.vocab.items()}.get(int(i), f"<|{i}|>")

    def convert_tokens_to_string(self, toks):
        return "".join(toks)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    d = tmp_path_factory.mktemp("h2_lively")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = tiny_whisper(d, init_std=0.2, decoder_layers=2)  # varied greedy tokens, value-zeroing distances >> eps
        model.generation_config.max_length = 8  # greedy transcripts of at most 7 tokens (test time), also on disk
        model.generation_config.save_pretrained(d)
        bb = WhisperBackbone(str(d)).eval()
    bb.model.double()  # float64: the engines' numbers agree to 1e-9 whatever the batch
    assert bb.model.generation_config.max_length == 8
    return d, bb


def _ctx(corpus, bb, seed=0):
    return AnalysisContext(None, corpus, seed=seed, backbone_factory=lambda: bb)


def _check_rows(df):
    sums = df.groupby(["utterance", "component", "metric", "layer", "receiver_index"]).value.sum()
    assert np.all((np.abs(sums - 1) < 1e-9) | (np.abs(sums) < 1e-12))  # every row normalised (zero rows stay 0)
    assert (df.value >= 0).all()


def test_whisper_all_components_rows_tables_figures(whisper, tmp_path):
    _, bb = whisper
    corpus = ListCorpus([_utt("u1", WORDS)])
    from src.context_mixing.decoder import decoder_scores
    from src.context_mixing.encoder import encoder_scores

    # transformers installs its own output-recording hooks on the first call asking for weights: warm up first
    encoder_scores(bb, torch.zeros(4000), ["attention"], [0])
    decoder_scores(bb, torch.zeros(4000), ["attention"], ["attention"], text_ids=[5])
    before = hook_snapshot(bb.model)
    res = ContextMixing(measures=["attention", "rollout", "attention_norm", "attention_norm_res", "value_zeroing"],
                        components=["encoder", "decoder", "cross"], batch_size=3, plot_utterances=0).run(_ctx(corpus, bb))  # fmt: skip
    assert hook_snapshot(bb.model) == before
    pngs = res.save(tmp_path, {"backbone": "tiny", "corpus": "list"})
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    _check_rows(df)
    assert set(df.component) == {"encoder", "decoder", "cross"}
    assert set(df[df.component == "cross"].metric) == {"attention", "attention_norm", "value_zeroing"}
    vz = df[(df.component == "decoder") & (df.metric == "value_zeroing")]
    assert (vz[vz.source_index > vz.receiver_index].value == 0).all()  # causal: lower triangular
    assert (vz[vz.source_index == vz.receiver_index].value > 0).all()
    # numbers: the encoder word matrix is the literal block mean of the engine's frame scores, row-normalised
    from src.context_mixing.words import word_frames

    u = corpus[0]
    groups = word_frames([(w, s, e) for w, s, e in WORDS], 100, 50.0, 0.0, "interval", "u1", u.duration)
    es = encoder_scores(bb, torch.as_tensor(u.audio), ["attention"], [1], source_groups=groups)
    blk = np.array([[es.frame["attention"][0][np.ix_(gi, gj)].mean() for gj in groups] for gi in groups])
    got = df[(df.utterance == "u1") & (df.component == "encoder") & (df.metric == "attention") & (df.layer == 2)]  # engine layer 1 = state 2
    mat = got.pivot(index="receiver_index", columns="source_index", values="value").to_numpy()
    np.testing.assert_allclose(mat, blk / blk.sum(1, keepdims=True), atol=1e-9)
    assert list(got[got.receiver_index == 0].source) == [w for w, _, _ in WORDS]
    ds = decoder_scores(bb, torch.as_tensor(u.audio), ["value_zeroing"], ["value_zeroing"], source_groups=groups)
    assert len(ds.text_ids) > 0  # the lively model says something
    for comp, ref in (("decoder", ds.self_frame["value_zeroing"]), ("cross", ds.cross_value_zeroing)):
        got = df[(df.utterance == "u1") & (df.component == comp) & (df.metric == "value_zeroing") & (df.layer == 1)]
        mat = got.pivot(index="receiver_index", columns="source_index", values="value").to_numpy()
        r = ref[0]
        np.testing.assert_allclose(mat, r / r.sum(1, keepdims=True), atol=1e-9)
    dec = df[(df.utterance == "u1") & (df.component == "decoder") & (df.receiver_index == 0) & (df.source_index == 0)]
    assert set(dec.receiver) == {f"<{ds.output_ids[0]}>"} and set(dec.source) == {"<2>"}  # tokens: output row, input col
    # diagnostics, transcripts (heatmaps: test_cue_study_...)
    om = pd.read_csv(tmp_path / "outside_mass.csv")
    assert set(om.component) == {"encoder", "cross"} and om.outside_mass.between(0, 1).all()
    assert (om[(om.component == "cross") & (om.metric == "attention")].outside_mass > 0.3).all()  # window padding
    assert len(pd.read_csv(tmp_path / "transcripts.csv")) == 1
    assert pngs == []  # plot_utterances=0


def test_cue_study_values_control_and_spelling_and_figures(whisper, monkeypatch, tmp_path):
    _, bb = whisper
    tok = FakeTokenizer({})
    monkeypatch.setattr(bb, "tokenizer", lambda: tok)
    item = CueItem("u1", "she knew the new rules", "rules", 4, "new", 3, ("knew", "gnu"))
    item2 = CueItem("u2", "she knew the new", "the", 2, "new", 3, ("knew",))
    corpus = CueCorpus([_utt("u1", WORDS), _utt("u2", WORDS[:4], seconds=0.9, seed=2)], [item, item2])
    an = ContextMixing(measures=["attention", "value_zeroing"], components=["encoder", "decoder", "cross"],
                       teacher_forcing="reference", n_boot=200, layers=[1])  # fmt: skip
    res = an.run(_ctx(corpus, bb))
    items = pd.DataFrame(res.tables["cue_items"])
    assert set(items.utterance) == {"u1", "u2"}
    # control: the word at the distance closest to the cue's (u1: |4-3| = 1 -> word 2 "the"; u2: |2-3| = 1 -> none
    # left at distance 1, word 1 "knew" at distance 2)
    assert set(items[items.utterance == "u1"].control_index) == {2} and set(items[items.utterance == "u2"].control_index) == {1}
    u2 = items[items.utterance == "u2"]
    assert not u2.cue_after_target.any() and not u2.control_after_target.any()
    assert items.spelled_right.all() and items.target_found.all() and set(items.spelling) == {"correct"}  # reference forcing: the transcript is the reference
    df = pd.DataFrame(res.rows)
    u1 = items[items.utterance == "u1"]
    ids = tok.encode(" she knew the new rules")  # pieces: ' sh' 'e' | ' kn' 'ew' | ' th' 'e' | ' ne' 'w' | ' ru' 'le' 's'
    pieces = [tok.convert_ids_to_tokens(i) for i in ids]
    assert pieces[6:8] == [" ne", "w"]
    target_rows = [1 + 6 - 1, 1 + 7 - 1]  # prompt_len 1: token k is output row k, input column k + 1
    cue_cols = [1 + 8, 1 + 9, 1 + 10]
    ctrl_cols = [1 + 4, 1 + 5]
    for comp in ("encoder", "decoder", "cross"):
        for m in ("attention", "value_zeroing"):
            r = u1[(u1.component == comp) & (u1.metric == m) & (u1.layer == 1)].iloc[0]
            S = df[(df.utterance == "u1") & (df.component == comp) & (df.metric == m) & (df.layer == 1)].pivot(
                index="receiver_index", columns="source_index", values="value").to_numpy()  # fmt: skip
            if comp == "encoder":
                want = S[3, 4], S[3, 2]
            elif comp == "cross":
                want = S[target_rows, 4].mean(), S[target_rows, 2].mean()
            else:
                want = S[np.ix_(target_rows, cue_cols)].sum(1).mean(), S[np.ix_(target_rows, ctrl_cols)].sum(1).mean()
            assert r.target_from_cue == pytest.approx(want[0], abs=1e-12)
            assert r.target_from_control == pytest.approx(want[1], abs=1e-12)
    # the cue of u1 comes after its target: structurally 0 in the decoder, left out of the decoder aggregate
    assert u1.cue_after_target.all() and (u1[u1.component == "decoder"].target_from_cue == 0).all()
    agg = pd.DataFrame(res.tables["cue_contribution"])
    enc = agg[(agg.component == "encoder") & (agg.metric == "attention") & (agg.layer == 1)].set_index("kind")
    e_items = items[(items.component == "encoder") & (items.metric == "attention") & (items.layer == 1)]
    assert enc.loc["cue", "value"] == pytest.approx(e_items.target_from_cue.mean(), abs=1e-12)
    assert enc.loc["cue_minus_control", "value"] == pytest.approx(
        (e_items.target_from_cue - e_items.target_from_control).mean(), abs=1e-12)  # fmt: skip
    assert (agg.ci_low <= agg.value + 1e-12).all() and (agg.value <= agg.ci_high + 1e-12).all()
    assert set(agg[agg.component == "decoder"].n_items) == {1} and set(agg[agg.component == "encoder"].n_items) == {2}
    # figures: heatmaps per component and layer of the first utterance (measures side by side), cue curves
    pngs = res.save(tmp_path, {"backbone": "tiny"})
    names = sorted(p.name for p in pngs)
    assert names == sorted([f"heatmap_{c}_layer1_u1.png" for c in ("encoder", "decoder", "cross")]
                           + [f"cue_contribution_{c}.png" for c in ("encoder", "decoder", "cross")])  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert {"cue_items.csv", "cue_contribution.csv"} <= {p.name for p in tmp_path.iterdir()}


def test_word_alignment():
    assert align_words(["she", "knew", "the", "new"], ["she", "new", "the", "new"]) == [0, 1, 2, 3]
    assert align_words(["a", "b", "c"], ["a", "c"]) == [0, None, 1]
    assert align_words(["a", "b", "c"], ["a", "x", "y", "c"]) == [0, 1, 3]
    ref, hyp = ["poets", "often", "write", "sad"], ["port's", "off", "and", "right", "sad"]
    assert align_words(ref, hyp) == [0, 1, 2, 4]
    assert align_words(ref, hyp, {2: {"write", "right"}}) == [0, 1, 3, 4]  # the target's spelling in the span


def test_wav2vec2_encoder_and_decoder_refused(tiny_w2v2_dir, tmp_path):
    from src.backbones.hf import HFBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w2v = HFBackbone(str(tiny_w2v2_dir), name="w2v").eval()
    corpus = ListCorpus([_utt("u1", WORDS)])
    res = ContextMixing(measures=["attention", "value_zeroing"], layers=[-1, 1], save_frames=True).run(_ctx(corpus, w2v))
    res.save(tmp_path, {"backbone": "w2v"})
    z = np.load(tmp_path / "frames" / "u1.npz")
    T = w2v.num_frames(len(corpus[0].audio))
    assert z["encoder_attention"].shape == (2, T, T) and z["encoder_value_zeroing"].shape == (2, T, len(WORDS))
    assert list(z["words"]) == [w for w, _, _ in WORDS] and z["word_frame_start"][-1] == len(z["word_frame_index"])
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS and set(df.component) == {"encoder"}
    assert sorted(df.layer.unique()) == [1, len(w2v.layer_modules())]  # state convention
    _check_rows(df)
    assert len(list(tmp_path.glob("heatmap_encoder_layer*_u1.png"))) == 2
    with pytest.raises(ContextMixingError, match=r"(?s)'w2v'.*Wav2Vec2Model.*whisper"):
        ContextMixing(components=["encoder", "cross"]).run(_ctx(corpus, w2v))


def test_bad_input(whisper):
    _, bb = whisper
    with pytest.raises(AnalysisError, match="analysis.components"):
        ContextMixing(components=["encoder", "lm"])
    with pytest.raises(AnalysisError, match="none is defined for component 'cross'"):
        ContextMixing(measures=["rollout"], components=["cross"])
    with pytest.raises(AnalysisError, match=r"analysis.layers \(decoder: layers 1..2, 1 = the first transformer layer\).*5"):
        ContextMixing(components=["decoder"], layers=[5]).run(_ctx(ListCorpus([_utt("u1", WORDS)]), bb))
    no_tier = Utterance("bare", np.zeros(8000, np.float32), 16000)
    with pytest.raises(ContextMixingError, match=r"utterance 'bare'.*'words' tier"):
        ContextMixing().run(_ctx(ListCorpus([no_tier]), bb))
    beyond = _utt("late", [("one", 0.1, 0.3), ("two", 1.3, 1.5)], seconds=1.2)
    with pytest.raises(ContextMixingError, match=r"utterance 'late', word 1 'two'.*beyond the audio"):
        ContextMixing(components=["decoder", "cross"]).run(_ctx(ListCorpus([beyond]), bb))
    long = _utt("long", [("one", 0.1, 0.3)], seconds=2.5)
    with pytest.raises(ValueError, match=r"utterance 'long'.*window"):
        ContextMixing(components=["encoder"]).run(_ctx(ListCorpus([long]), bb))
    with pytest.raises(AnalysisError, match="cue_study=true"):
        ContextMixing(cue_study=True).run(_ctx(ListCorpus([_utt("u1", WORDS)]), bb))


def test_analyze_cli_tutorial_experiment_offline(whisper, tmp_path):
    """python analyze.py analysis=context_mixing experiment=tutorial_context_mixing, offline: a tiny dataset in the
    schema of hosein-m/french_homophone_asr (save_to_disk) and the tiny random Whisper."""
    pytest.importorskip("datasets")
    from tests.builders import write_tiny_french_homophones
    from tests.helpers import run_cli

    d, _ = whisper
    ds = write_tiny_french_homophones(tmp_path / "fr")
    run = tmp_path / "run"
    run_cli("analyze.py", ["analysis=context_mixing", "experiment=tutorial_context_mixing", f"backbone.model_id={d}",
                           "backbone.name=tiny", f"data.source={ds}", "data.items=[0]", "logger=none", "analysis.batch_size=32",
                           f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                           "analysis.n_boot=50"], run)  # fmt: skip
    df = pd.read_csv(run / "results.csv", dtype={"utterance": str})
    assert list(df.columns[: len(COLUMNS) + 3]) == [*COLUMNS, "backbone", "corpus", "analysis"]
    assert set(df.component) == {"encoder", "decoder", "cross"} and set(df.metric) == {"attention", "value_zeroing"}
    _check_rows(df)
    assert set(df[(df.utterance == "0") & (df.component == "encoder")].receiver) == {"on", "y", "trouve", "un", "aéroport"}
    items = pd.read_csv(run / "cue_items.csv", dtype={"utterance": str})
    assert set(items.utterance) == {"0"} and set(items.cue_word) == {"on"} and set(items.target_word) == {"trouve"}
    agg = pd.read_csv(run / "cue_contribution.csv")
    assert set(agg.kind) == {"cue", "control", "cue_minus_control"}
    pngs = {p.name for p in run.glob("*.png")}
    assert {"heatmap_encoder_layer1_0.png", "heatmap_cross_layer2_0.png", "cue_contribution_encoder.png"} <= pngs
