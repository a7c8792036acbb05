"""Speaker Gram analysis: exact pair similarities on hand-built utterance means; grouping; errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.speaker_gram import SpeakerGram
from src.datamodules.corpus import Utterance
from tests.analyses.helpers import SENTENCES, SPEAKERS, D, _build
from tests.analyses.phone_fakes import FakeActs, MemoryCorpus

CONF = Path(__file__).resolve().parents[2] / "conf"


def _by(result, measure):
    return {r["layer"]: r["value"] for r in result.rows if r["metric"] == measure}


def test_pair_similarities_are_exact():
    acts, corpus = _build()
    res = SpeakerGram(similarity="cosine").run(AnalysisContext(acts, corpus))
    # layer 0: (2s + t).(2s + t') / 5 = 4/5 for the same speaker; (2s + t).(2s' + t) / 5 = 1/5 same sentence
    assert _by(res, "same_speaker") == pytest.approx({0: 0.8, 1: 0.2}, abs=1e-12)
    assert _by(res, "same_sentence") == pytest.approx({0: 0.2, 1: 0.8}, abs=1e-12)
    assert _by(res, "different") == pytest.approx({0: 0.0, 1: 0.0}, abs=1e-12)
    assert _by(res, "speaker_minus_sentence") == pytest.approx({0: 0.6, 1: -0.6}, abs=1e-12)
    assert res.meta["speakers"] == SPEAKERS and res.meta["sentences"] == 4 and res.meta["items"] == 12
    g = res.matrices["gram_layer_00"]
    assert g.values.shape == (12, 12) and g.row_labels[:4] == ["ann/s0", "bob/s0", "cat/s0", "ann/s1"]
    np.testing.assert_allclose(np.diag(g.values), 1.0, atol=1e-12)
    assert g.values[0, 1] == pytest.approx(0.2) and g.values[0, 3] == pytest.approx(0.8)


def test_speaker_order_and_cap():
    acts, corpus = _build()
    res = SpeakerGram(similarity="cosine", order="speaker", max_sentences=2, layers=[1]).run(
        AnalysisContext(acts, corpus)
    )
    g = res.matrices["gram_layer_01"]
    assert g.row_labels == ["ann/s0", "ann/s1", "bob/s0", "bob/s1", "cat/s0", "cat/s1"]
    assert g.values[0, 1] == pytest.approx(0.2) and g.values[0, 2] == pytest.approx(0.8)
    assert res.meta["shared_sentences"] == 4 and res.meta["items"] == 6
    assert _by(res, "same_sentence") == pytest.approx({1: 0.8})


def test_centred_similarity_matches_literal():
    acts, corpus = _build(a=3.0, b=0.5)
    res = SpeakerGram(similarity="centred").run(AnalysisContext(acts, corpus))
    means = {}
    for u in range(len(corpus)):
        ann = corpus.annotation(u)
        if ann.text in SENTENCES:
            means[(ann.speaker, ann.text)] = acts.layer(0)[
                acts.offsets[u] : acts.offsets[u] + acts.lengths[u]
            ].mean(0)
    keys = list(means)
    m = np.stack([means[k] for k in keys])
    m = m - m.mean(0)
    same_spk, same_sent = [], []
    for i in range(len(keys)):
        for j in range(len(keys)):
            if i == j:
                continue
            c = float(m[i] @ m[j] / np.linalg.norm(m[i]) / np.linalg.norm(m[j]))
            if keys[i][0] == keys[j][0]:
                same_spk.append(c)
            elif keys[i][1] == keys[j][1]:
                same_sent.append(c)
    assert _by(res, "same_speaker")[0] == pytest.approx(np.mean(same_spk), abs=1e-12)
    assert _by(res, "same_sentence")[0] == pytest.approx(np.mean(same_sent), abs=1e-12)


def test_figures_and_save(tmp_path):
    acts, corpus = _build()
    res = SpeakerGram().run(AnalysisContext(acts, corpus))
    res.save(tmp_path, {"backbone": "fake"})
    names = {p.name for p in tmp_path.iterdir()}
    assert {"results.csv", "gram_layer_00.png", "gram_layer_01.png", "speaker_minus_sentence_over_layers.png",
            "pair_similarity_over_layers.png"} <= names  # fmt: skip


def test_errors():
    acts, corpus = _build(extra=False)
    with pytest.raises(AnalysisError, match="at least 2 speakers"):
        SpeakerGram(speakers=["ann"]).run(AnalysisContext(acts, corpus))
    with pytest.raises(AnalysisError, match="not in the corpus"):
        SpeakerGram(speakers=["ann", "zed"]).run(AnalysisContext(acts, corpus))
    # one sentence shared by all speakers
    utts = [Utterance(f"{s}_{k}", np.zeros(160, np.float32), 16000, s, text=t)
            for k, (s, t) in enumerate([("ann", "x"), ("bob", "x"), ("ann", "y")])]  # fmt: skip
    c1 = MemoryCorpus(utts)
    a1 = FakeActs(c1.ids, ["ann", "bob", "ann"], [np.ones((1, 2, 3))] * 3)
    with pytest.raises(AnalysisError, match="at least 2 shared sentences"):
        SpeakerGram().run(AnalysisContext(a1, c1))
    with pytest.raises(AnalysisError, match="similarity"):
        SpeakerGram(similarity="euclid")
    zero = FakeActs(corpus.ids, acts.speakers, [np.zeros((2, 3, D))] * len(corpus))
    with pytest.raises(AnalysisError, match="undefined"):
        SpeakerGram().run(AnalysisContext(zero, corpus))


def test_config_composes_and_runs():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "analyze", overrides=["analysis=speaker_gram", "logger=none", "analysis.similarity=cosine"]
        )
    assert cfg.analysis.name == "speaker_gram"
    analysis = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"})
    acts, corpus = _build()
    res = analysis.run(AnalysisContext(acts, corpus))
    assert _by(res, "speaker_minus_sentence")[0] == pytest.approx(0.6)
    assert set(res.matrices) == {"gram_layer_00", "gram_layer_01"}
