"""analysis=patching and analysis=head_ablation on tiny random models: results.csv has exactly the issue's columns,
mean rows equal a literal mean of the per-item rows (pandas groupby, written here), bad input fails before any
model work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.head_ablation import HeadAblation
from src.analyses.patching import COLUMNS, Patching
from tests.conftest import make_tone_corpus
from tests.context_mixing.conftest import make_backbone

KEYS = ["intervention", "component", "layer", "layer_name", "position", "position_label", "head", "metric"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from src.datamodules.corpus import TextGridCorpus

    root = make_tone_corpus(tmp_path_factory.mktemp("pa_tones"), num_utterances=3, vocabulary=5)
    return TextGridCorpus(root)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return make_backbone(tmp_path_factory.mktemp("pa_models"), "whisper")


def _ctx(corpus, bb):
    return AnalysisContext(None, corpus, seed=0, backbone_factory=lambda: bb)


def _check_means(df: pd.DataFrame) -> None:
    """Mean rows = the literal mean of the finite per-item values of the same key; intervals bracket it."""
    items = df[df["item"] != "mean"].copy()
    means = df[df["item"] == "mean"].copy()
    for frame in (items, means):
        for c in KEYS:
            frame[c] = frame[c].astype(object).where(frame[c].notna(), "-").astype(str)
    expect = items[np.isfinite(items["value"])].groupby(KEYS)["value"].apply(lambda v: sum(v) / len(v))
    got = means.set_index(KEYS)["value"].dropna()
    assert len(got) > 0
    assert set(got.index) == set(expect.index)
    for k, v in got.items():
        assert v == pytest.approx(expect[k], abs=1e-12), k
    ok = means.dropna(subset=["ci_low", "ci_high"])
    assert len(ok) > 0
    assert (ok["ci_low"] <= ok["value"] + 1e-12).all() and (ok["value"] <= ok["ci_high"] + 1e-12).all()
    assert items["ci_low"].isna().all() and items["ci_high"].isna().all()


def test_patching_noise_pairs_results(tmp_path, corpus, whisper):
    an = Patching(pairs="noise", num_items=1, seeds=(0, 1), noise_words=[0], snr_db=0.0, max_new_tokens=3,
                  components=["encoder", "decoder", "cross_attention"], attribution=True, n_boot=50)  # fmt: skip
    res = an.run(_ctx(corpus, whisper))
    res.save(tmp_path, {"backbone": "tiny"})
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns) == COLUMNS
    assert set(df["intervention"]) == {"none", "patch_denoising", "attribution_patching"}
    assert {"encoder", "decoder", "cross_attention"} <= set(df["component"].dropna())
    # 1 utterance x 2 seeds = 2 pairs; the role rows average over both
    assert df[df["item"] != "mean"]["item"].nunique() == 2
    role = df[(df["item"] == "mean") & (df["position_label"] == "role:changed") & (df["metric"] == "recovery")]
    assert len(role) == len(whisper.layer_modules()) + 1  # every encoder state
    _check_means(df)
    for png in ("heatmap_encoder_recovery.png", "heatmap_cross_attention_recovery.png", "top_heads.png"):
        assert (tmp_path / png).stat().st_size > 0
    top = pd.read_csv(tmp_path / "top_heads.csv")
    assert list(top["rank"]) == list(range(1, len(top) + 1)) and top["value"].is_monotonic_decreasing


def test_rendition_control_with_an_exact_copy_recovers_exactly_one(tmp_path, corpus, whisper):
    """analysis.control with dither_snr_db=None (A' = an exact copy of A): the patch replaces the differing word's
    states with identical ones, so ratio_to_clean_patch is exactly 1 and the control's recovery equals the real
    patch's recovery (the patch_denoising rows) at every state; with a 40 dB dither the measured SNR is 40 dB."""
    an = Patching(pairs="noise", num_items=1, seeds=(0, 1), noise_words=[1], snr_db=0.0, max_new_tokens=3,
                  components=["encoder"], control=True, dither_snr_db=None, n_boot=20)  # fmt: skip
    res = an.run(_ctx(corpus, whisper))
    res.save(tmp_path, {"backbone": "tiny"})
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns) == COLUMNS
    items = df[df["item"] != "mean"]
    ctl = items[(items["intervention"] == "control_rendition") & items["position"].notna()]
    n_states = len(whisper.layer_modules()) + 1
    assert len(ctl[ctl["metric"] == "ratio_to_clean_patch"]) == 2 * n_states  # 2 pairs x states x 1 noised word
    assert set(ctl["position"]) == {1.0}
    ratio = ctl[ctl["metric"] == "ratio_to_clean_patch"]["value"]
    assert np.isfinite(ratio).all() and (ratio == 1.0).all()
    real = items[(items["intervention"] == "patch_denoising") & (items["metric"] == "recovery") & (items["position"] == 1)]
    got = ctl[ctl["metric"] == "recovery"].set_index(["item", "layer"])["value"]
    want = real.set_index(["item", "layer"])["value"]
    assert len(got) == 2 * n_states
    for k, v in got.items():
        assert v == want[k], k
    roles = df[(df["intervention"] == "control_rendition") & (df["position_label"] == "role:differing")]
    assert len(roles[roles["item"] == "mean"]) == 3 * n_states  # recovery, ratio, effect per state
    _check_means(df)
    an = Patching(pairs="noise", num_items=1, seeds=(0,), noise_words=[1], max_new_tokens=3, components=["encoder"],
                  layers=[0], control=True, dither_snr_db=40.0, n_boot=20)  # fmt: skip
    rows = an.run(_ctx(corpus, whisper)).rows
    snr = [r["value"] for r in rows if r["metric"] == "dither_snr_db" and r["item"] != "mean"]
    assert len(snr) == 1 and snr[0] == pytest.approx(40.0, abs=0.01)
    ratio = [r["value"] for r in rows if r["metric"] == "ratio_to_clean_patch" and r["position"] is not None
             and r["item"] != "mean"]
    assert len(ratio) == 1 and np.isfinite(ratio[0]) and ratio[0] != 1.0


def test_patching_bad_input_fails_before_model_work(tmp_path, corpus, whisper, monkeypatch):
    import src.interventions.engine as engine

    def boom(*a, **k):
        raise AssertionError("model work started")

    monkeypatch.setattr(engine, "forward", boom)
    built = []
    p = tmp_path / "pairs.csv"
    p.write_text(f"clean_id,corrupted_id\n{corpus.ids[0]},nope\n")
    with pytest.raises(AnalysisError, match=r"pairs.csv:2: corrupted_id 'nope' is not an utterance"):
        Patching(pairs=str(p)).run(AnalysisContext(None, corpus, backbone_factory=lambda: built.append(1)))
    assert not built  # the model was not even built
    with pytest.raises(AnalysisError, match=r"analysis.words=\[9\]: position 9 is outside pair .* words 0\.\."):
        Patching(pairs="noise", num_items=1, seeds=(0,), words=[9]).run(_ctx(corpus, whisper))
    with pytest.raises(AnalysisError, match=r"analysis.noise_words=\[9\]: .*outside the utterance"):
        Patching(pairs="noise", num_items=1, seeds=(0,), noise_words=[9]).run(_ctx(corpus, whisper))
    w2v2 = make_backbone(tmp_path, "w2v2_post")
    with pytest.raises(AnalysisError, match=r"'decoder' needs a decoder; .* use \[encoder\]"):
        Patching(pairs="noise", num_items=1, seeds=(0,), components=["encoder", "decoder"]).run(_ctx(corpus, w2v2))
    with pytest.raises(AnalysisError, match="pairs"):
        Patching(pairs="nonsense")
    with pytest.raises(AnalysisError, match=r"head 7 is out of range; cross_attention layer 1 has heads 0\.\."):
        HeadAblation(components=["cross_attention"], heads=[7]).run(_ctx(corpus, whisper))


def test_head_ablation_results(tmp_path, corpus, whisper):
    an = HeadAblation(layers=[1], kinds=["silence", "white"], clips_per_kind=2, duration=1.0, max_utterances=2,
                      max_new_tokens=3, n_boot=50)  # fmt: skip
    res = an.run(_ctx(corpus, whisper))
    res.save(tmp_path, {"backbone": "tiny"})
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns) == COLUMNS
    items = df[df["item"] != "mean"]
    assert set(items[items["metric"] == "hallucinated"]["value"]) <= {0.0, 1.0}
    n_heads = sum(int(m.num_heads) for m in (whisper.decoder_attention_modules()[0], whisper.cross_attention_modules()[0]))
    abl = items[(items["intervention"] == "zero_ablation") & (items["metric"] == "hallucination_reduction")]
    assert len(abl) == n_heads * 4  # 4 clips per head
    # reduction = baseline - ablated, per clip (literal)
    base = items[(items["intervention"] == "none") & (items["metric"] == "hallucinated")].set_index("item")["value"]
    hall = items[(items["intervention"] == "zero_ablation") & (items["metric"] == "hallucinated")]
    merged = abl.merge(hall, on=["item", "component", "layer", "head"], suffixes=("_red", "_h"))
    assert np.allclose(merged["value_red"], base.loc[merged["item"]].to_numpy() - merged["value_h"])
    _check_means(df)
    top = pd.read_csv(tmp_path / "top_heads.csv")
    assert len(top) == min(10, n_heads) and "wer_cost" in top.columns
    assert (tmp_path / "top_heads.png").stat().st_size > 0



def test_head_sets_equal_a_literal_reference(tmp_path, corpus, whisper):
    """analysis.head_sets: the top k of the single-head ranking (a literal sort of the per-item rows here) and a
    listed set, each ablated together; every clip's transcript equals transformers' generate with the heads zeroed
    by hand (tests/reference/interventions.py), and the set rows are literal functions of them."""
    import torch

    from src.functional.text import normalize_text
    from src.interventions.counterfactual import nonspeech_clip
    from tests.reference import interventions as ref

    listed = ["cross_attention:1:0", "decoder_self_attention:1:1"]
    an = HeadAblation(kinds=["silence", "white", "tone"], clips_per_kind=1, duration=1.0, max_utterances=2,
                      max_new_tokens=4, n_boot=50, head_sets=[2, listed])  # fmt: skip
    res = an.run(_ctx(corpus, whisper))
    res.save(tmp_path, {"backbone": "tiny"})
    df = pd.read_csv(tmp_path / "results.csv")
    items = df[df["item"] != "mean"]
    single = items[items["intervention"] == "zero_ablation"]
    red = single[single["metric"] == "hallucination_reduction"].groupby(["component", "layer", "head"])["value"].mean()
    cost = single[single["metric"] == "wer_cost"].groupby(["component", "layer", "head"])["value"].mean()
    order = [(c, int(l), int(h)) for c, l, h in sorted(red.index, key=lambda k: (-red[k], cost[k], k[0], k[1], k[2]))]
    top = pd.read_csv(tmp_path / "top_heads.csv")
    assert [tuple(x) for x in top[["component", "layer", "head"]].itertuples(index=False)] == order[: len(top)]
    sets = pd.read_csv(tmp_path / "head_sets.csv")
    assert list(sets["set"]) == ["top2", "set2"] and list(sets["size"]) == [2, 2]
    assert sets["heads"][0] == "; ".join(f"{c} L{l} h{h}" for c, l, h in order[:2])
    clips = [nonspeech_clip(k, 1.0, whisper.sample_rate, seed=0 * 1000 + j, level_db=-30.0)
             for k in ("silence", "white", "tone") for j in range(1)]  # fmt: skip
    trans = pd.read_csv(tmp_path / "transcripts.csv", keep_default_na=False)
    base = items[(items["intervention"] == "none") & (items["metric"] == "hallucinated")].set_index("item")["value"]
    members = {"top2": order[:2], "set2": [("cross_attention", 1, 0), ("decoder_self_attention", 1, 1)]}
    for name, heads in members.items():
        want = ref.transcribe_with_zeroed_heads(whisper, [torch.as_tensor(c.audio) for c in clips], heads, 4)
        got = trans[trans["ablation"] == name].set_index("item").loc[[c.id for c in clips], "transcript"].tolist()
        assert got == want
        rows = items[(items["intervention"] == "zero_ablation_set") & (items["position_label"] == name)]
        h = rows[rows["metric"] == "hallucinated"].set_index("item").loc[[c.id for c in clips], "value"].tolist()
        assert h == [float(len(normalize_text(t).split()) > 0) for t in want]
        r = rows[rows["metric"] == "hallucination_reduction"].set_index("item")["value"]
        assert np.allclose(r.loc[[c.id for c in clips]].to_numpy(), base.loc[[c.id for c in clips]].to_numpy() - h)
        assert (rows["component"] == "head_set").all() and rows["layer"].isna().all() and rows["head"].isna().all()
    _check_means(df)


def test_head_ablation_resample_equals_a_literal_reference(tmp_path, corpus, whisper):
    """analysis.mode=resample: for every draw, every clip's and utterance's transcript equals transformers'
    generate with the heads replaced by their output on the drawn reference utterance, cut by hand
    (tests/reference/interventions.py); item values are the mean over the draws; the draws are seeded, stated in
    resample_draws.csv and results.json, and a speech utterance never draws itself."""
    import torch

    from src.functional.text import normalize_text, word_error_rate
    from src.interventions.counterfactual import nonspeech_clip
    from src.lenses.scoring import reference_texts
    from tests.reference import interventions as ref

    listed = ["cross_attention:1:0", "decoder_self_attention:1:1"]
    an = HeadAblation(components=["cross_attention"], layers=[1], heads=[1], mode="resample", resample_draws=2,
                      kinds=["white", "tone"], clips_per_kind=1, duration=1.0, max_utterances=3, max_new_tokens=4,
                      n_boot=20, head_sets=[listed])  # fmt: skip
    res = an.run(_ctx(corpus, whisper))
    res.save(tmp_path, {"backbone": "tiny"})
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns) == COLUMNS
    import json

    assert json.loads((tmp_path / "results.json").read_text())["meta"]["resample_draws"] == 2
    draws = pd.read_csv(tmp_path / "resample_draws.csv")
    assert sorted(draws["draw"].unique()) == [0, 1]
    speech_ids = list(corpus.ids[:3])
    sp = draws[draws["item"].isin(speech_ids)]
    assert len(sp) == 6 and (sp["item"] != sp["reference"]).all()
    assert pd.read_csv(tmp_path / "resample_draws.csv").equals(draws)  # same seed, same plan
    again = HeadAblation(mode="resample", resample_draws=2).resample_plan(2, 3, 0)
    assert again == HeadAblation(mode="resample", resample_draws=2).resample_plan(2, 3, 0)

    clips = [nonspeech_clip(k, 1.0, whisper.sample_rate, seed=0 * 1000 + j, level_db=-30.0)
             for k in ("white", "tone") for j in range(1)]  # fmt: skip
    audio = {c.id: torch.as_tensor(c.audio) for c in clips}
    audio.update({u: torch.as_tensor(corpus[i].audio) for i, u in enumerate(speech_ids)})
    prompt = list(whisper.decoder_prompt_ids())
    ref_ids = {u: prompt + whisper.transcribe_ids([audio[u]], max_new_tokens=4)[0] for u in speech_ids}
    refs = dict(zip(speech_ids, reference_texts(corpus, list(range(3)), "test")))
    items = df[df["item"] != "mean"]
    trans = pd.read_csv(tmp_path / "transcripts.csv", keep_default_na=False)
    for name, heads, intervention in (("single", [("cross_attention", 1, 1)], "resample_ablation"),
                                      ("set1", [("cross_attention", 1, 0), ("decoder_self_attention", 1, 1)],
                                       "resample_ablation_set")):  # fmt: skip
        rows = items[items["intervention"] == intervention]
        for item in list(audio):
            got_texts = []
            for d in (0, 1):
                r = draws[(draws["draw"] == d) & (draws["item"] == item)]["reference"].item()
                got_texts.append(ref.transcribe_with_resampled_heads(whisper, audio[item], heads, audio[r],
                                                                    ref_ids[r], 4))  # fmt: skip
            if item in speech_ids:
                want = np.mean([word_error_rate([refs[item]], [t]) for t in got_texts])
                assert rows[(rows["item"] == item) & (rows["metric"] == "wer")]["value"].item() == pytest.approx(want)
            else:
                want = np.mean([float(len(normalize_text(t).split()) > 0) for t in got_texts])
                assert rows[(rows["item"] == item) & (rows["metric"] == "hallucinated")]["value"].item() == want
                if name == "set1":
                    for d in (0, 1):
                        t = trans[(trans["item"] == item) & (trans["ablation"] == f"set1 draw{d}")]["transcript"]
                        assert t.item() == got_texts[d]
    _check_means(df)


def test_head_sets_bad_input_before_model_work(corpus, whisper, monkeypatch):
    with pytest.raises(AnalysisError, match=r"analysis.head_sets\[0\]='cross_attention:1': 'cross_attention:1' is not "
                                            r"'component:layer:head'"):  # fmt: skip
        HeadAblation(head_sets=["cross_attention:1"])
    with pytest.raises(AnalysisError, match=r"analysis.head_sets\[1\]=.*component 'encoder' is not one of"):
        HeadAblation(head_sets=[2, ["encoder:1:0"]])
    with pytest.raises(AnalysisError, match=r"top k heads need k >= 1"):
        HeadAblation(head_sets=[0])
    built = []

    def factory():
        built.append(1)
        return whisper

    import src.interventions

    def boom(*a, **k):
        raise AssertionError("model work started")

    monkeypatch.setattr(src.interventions, "forward", boom)
    with pytest.raises(AnalysisError, match=r"analysis.head_sets\[0\]: cross_attention:1:9: .*head 9 is out of range"):
        HeadAblation(head_sets=[["cross_attention:1:9"]]).run(AnalysisContext(None, corpus, seed=0, backbone_factory=factory))
    with pytest.raises(AnalysisError, match=r"analysis.head_sets\[0\]: cross_attention:0:0: .*layer 0 is out of range"):
        HeadAblation(head_sets=[["cross_attention:0:0"]]).run(AnalysisContext(None, corpus, seed=0, backbone_factory=factory))
    with pytest.raises(AnalysisError, match=r"analysis.head_sets\[0\]=99: the top 99 heads, but only"):
        HeadAblation(head_sets=[99]).run(AnalysisContext(None, corpus, seed=0, backbone_factory=factory))
    assert built  # the model is built (the heads are checked against it), but nothing ran through it


def test_patching_on_a_ctc_model_scores_the_ctc_transcript(tmp_path, corpus):
    """Encoder-only *ForCTC checkpoints: the metric is log p(the CTC head's greedy transcript of the clean member),
    equal to transformers' own CTC loss with labels read literally (frame argmax, repeats merged, blanks dropped)
    from transformers' logits; a checkpoint without a CTC head is an error before any forward."""
    import warnings

    import torch
    from transformers import AutoModelForCTC

    from src.backbones.hf import HFBackbone
    from src.interventions import counterfactual as cf
    from tests.builders import save_tiny_ctc_model

    d = save_tiny_ctc_model(tmp_path / "ctc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = HFBackbone(str(d))
        full = AutoModelForCTC.from_pretrained(str(d), ctc_loss_reduction="sum").eval()
    bb.model.double()
    full.double()
    an = Patching(pairs="noise", num_items=1, seeds=(0,), noise_words=[0], components=["encoder"], n_boot=20)
    res = an.run(_ctx(corpus, bb))
    rows = {r["metric"]: r["value"] for r in res.rows if r["intervention"] == "none"}
    pair = cf.noise_pairs(corpus[0], [0], 0.0, [0])[0]
    for member, name in ((pair.clean, "ctc_logprob_clean"), (pair.corrupted, "ctc_logprob_corrupted")):
        batch, _, _ = bb.prepare([torch.as_tensor(pair.clean.audio)])
        with torch.no_grad():
            best = full(batch.double()).logits[0].argmax(-1).tolist()
        labels = []
        for i, t in enumerate(best):
            if t != 0 and (i == 0 or t != best[i - 1]):  # blank = <pad> = 0
                labels.append(t)
        assert labels
        batch, _, _ = bb.prepare([torch.as_tensor(member.audio)])
        with torch.no_grad():
            loss = full(batch.double(), labels=torch.tensor([labels])).loss
        assert rows[name] == pytest.approx(-float(loss), rel=1e-6)
    assert any(r["metric"] == "recovery" and r["component"] == "encoder" for r in res.rows)
    plain = make_backbone(tmp_path / "plain", "w2v2_post")
    with pytest.raises(AnalysisError, match=r"without a decoder the metric is .* CTC log-probability .*without a CTC head"):
        Patching(pairs="noise", num_items=1, seeds=(0,), components=["encoder"]).run(_ctx(corpus, plain))


def test_patching_encoder_heads_and_mlps_equal_the_literal_loop(corpus, whisper):
    """components encoder_self_attention / encoder_mlp / decoder_mlp: every per-item effect equals one literal
    forward per site (tests/reference/interventions.py), and rows carry the state-convention layers 1..N."""
    from src.interventions import Out, pair_word_positions
    from tests.reference import interventions as ref

    an = Patching(pairs="noise", num_items=1, seeds=(0,), noise_words=[0], max_new_tokens=3, n_boot=20,
                  components=["encoder_self_attention", "encoder_mlp", "decoder_mlp"])  # fmt: skip
    res = an.run(_ctx(corpus, whisper))
    pair = an.build_pairs(_ctx(corpus, whisper))[0]
    clean, corr, metric, _, _ = an.prepare(whisper, pair, None)
    words = [(w.label, w.start, w.end) for w in pair.clean.tier("words")]
    positions = pair_word_positions(whisper, clean, corr, words, words)
    ids = clean.ids[0].tolist()
    n_enc, n_dec = len(whisper.layer_modules()), len(whisper.decoder_layer_modules())
    want_sites, keys = [], []
    for k in range(1, n_enc + 1):
        for h in range(2):
            want_sites.append(("encoder", "head", k, None, h))
            keys.append(("encoder_self_attention", k, None, h))
        for w, pos in enumerate(positions):
            want_sites.append(("encoder", "mlp", k, list(pos), None))
            keys.append(("encoder_mlp", k, w, None))
    for k in range(1, n_dec + 1):
        for t in range(len(ids)):
            want_sites.append(("decoder", "mlp", k, [t], None))
            keys.append(("decoder_mlp", k, t, None))

    def m_ref(lg, enc):
        return metric(Out([enc], lg, clean.frames))[0]

    want = ref.patching_loop(whisper, clean.waveform, corr.waveform, want_sites, m_ref, ids=ids)
    base = float(m_ref(*ref.run(whisper, corr.waveform, ids)))
    got = {(r["component"], r["layer"], r["position"], r["head"]): r for r in res.rows
           if r["item"] == pair.id and r["intervention"] == "patch_denoising" and r["metric"] == "effect"
           and not str(r["position_label"]).startswith("role:")}  # fmt: skip
    assert set(got) == set(keys)
    roles = {(r["component"], r["position_label"]) for r in res.rows if str(r["position_label"]).startswith("role:")}
    assert ("encoder_mlp", "role:changed") in roles and ("decoder_mlp", "role:last") in roles
    for key, v in zip(keys, want):
        assert got[key]["value"] == pytest.approx(v - base, abs=1e-9), key
        assert got[key]["layer_name"] == f"layer {key[1]} (-> state {key[1]})"


def test_patching_layers_checked_before_model_work(corpus, whisper, monkeypatch):
    """analysis.layers in the state convention per component: state 0 alone names no head layer, and a layer
    beyond the model is out of range; both fail before any forward."""
    import src.interventions.engine as engine

    def boom(*a, **k):
        raise AssertionError("model work started")

    monkeypatch.setattr(engine, "forward", boom)
    monkeypatch.setattr(whisper, "transcribe_ids", boom)
    with pytest.raises(AnalysisError, match=r"analysis.layers \(cross_attention layers 1\.\..*names state 0"):
        Patching(pairs="noise", num_items=1, seeds=(0,), layers=[0], components=["encoder", "cross_attention"]).run(
            _ctx(corpus, whisper))
    with pytest.raises(AnalysisError, match=r"analysis.layers \(encoder_mlp layers 1\.\.2.*out of range"):
        Patching(pairs="noise", num_items=1, seeds=(0,), layers=[3], components=["encoder_mlp"]).run(
            _ctx(corpus, whisper))
