"""analysis=attribution end to end on a tiny wav2vec2 + a saved random classifier + a hand-made commands corpus."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.analyses.attribution import LEADING, Attribution, plausibility_rows
from src.analyses.base import AnalysisContext, AnalysisError
from src.datamodules.commands import CommandItem
from src.datamodules.corpus import Interval
from tests.attribution.conftest import make_classifier, make_utt


class FakeCommands(list):
    name = "fake_commands"

    def __init__(self, utts, items):
        super().__init__(utts)
        self.items = items

    @property
    def ids(self):
        return [u.id for u in self]

    def command_item(self, i):
        return self.items[i]


@pytest.fixture(scope="module")
def setup(w2v_bb, tiny_w2v2_dir, tmp_path_factory):
    clf = make_classifier(w2v_bb)
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    utts, items = [], []
    for k in range(3):
        u = make_utt(8000, seed=k, uid=f"c{k}", words=[Interval(0.05, 0.2, "go"), Interval(0.22, 0.3, "the"),
                                                       Interval(0.3, 0.45, "door")])  # fmt: skip
        utts.append(u)
        items.append(CommandItem(u.id, "go the door", {"action": "go", "object": "door"},
                                 {"action": (0,), "object": (2,)}))  # fmt: skip
    clf.save(path, {"backbone": {"_target_": "src.backbones.hf.HFBackbone", "model_id": str(tiny_w2v2_dir)},
                    "splits": {"test": ["c0", "c1", "c2"]}, "test_accuracy": {"action": 0.5}})  # fmt: skip
    return path, FakeCommands(utts, items)


def test_analysis_rows_plausibility_figures(setup, tmp_path):
    path, corpus = setup
    an = Attribution(checkpoint=str(path), methods=["saliency", "feature_ablation"], inputs=["waveform", "cnn"],
                     save_raw=True, plot_utterances=1, n_boot=200)  # fmt: skip
    res = an.run(AnalysisContext(None, corpus, seed=0))
    pngs = res.save(tmp_path, {"backbone": "tiny", "corpus": corpus.name})
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns[: len(LEADING)]) == LEADING
    # 3 utterances x 2 inputs x 2 methods x 2 heads x 6 segments ([SIL]_0 go [SIL]_1 the door [SIL]_2)
    assert len(df) == 3 * 2 * 2 * 2 * 6
    assert df[df.utterance == "c0"].segment.unique().tolist() == ["[SIL]_0", "go", "[SIL]_1", "the", "door", "[SIL]_2"]
    assert set(df.reduction) == {"mean", "group"}
    assert set(df.target) == {"action=go", "object=door"}
    # plausibility == a literal recomputation from results.csv
    plaus = pd.read_csv(tmp_path / "plausibility.csv")
    for _, r in plaus.iterrows():
        hits, chance = [], []
        for u in corpus.ids:
            sub = df[(df.utterance == u) & (df["head"] == r["head"]) & (df.method == r["method"]) & (df.input == r["input"])
                     & df.is_word]  # fmt: skip
            top = sub.sort_values("score", ascending=False).iloc[0]
            want = {"action": 0, "object": 2}[r["head"]]
            hits.append(float(top.word_index == want))
            chance.append(1 / 3)
        assert r["value"] == pytest.approx(np.mean(hits))
        assert r["random"] == pytest.approx(1 / 3)
    assert len(plaus) == 2 * 2 * 2
    assert (tmp_path / "plausibility.png").exists()
    assert len([p for p in pngs if p.name.startswith("attribution_c0")]) == 2  # first head, 2 methods
    raw = np.load(tmp_path / "raw" / "c0.npz")
    assert raw["saliency__waveform__action_go"].shape == (8000,)
    assert raw["mask__cnn"].shape == raw["saliency__cnn__action_go"].shape


def test_plausibility_rows_hand_case():
    items = [{"head": "a", "method": "m", "input": "i", "group": g, "hit": h, "chance": c}
             for g, h, c in [("s1", 1.0, 0.5), ("s1", 0.0, 0.5), ("s2", 1.0, 0.25)]]  # fmt: skip
    (r,) = plausibility_rows(items, n_boot=500, alpha=0.05, seed=0)
    assert r["value"] == pytest.approx(2 / 3) and r["random"] == pytest.approx(1.25 / 3)
    assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["n_units"] == 2


def test_bad_options_and_items(setup):
    path, corpus = setup
    with pytest.raises(AnalysisError, match="analysis.methods"):
        Attribution(checkpoint=str(path), methods=["deeplift"])
    with pytest.raises(AnalysisError, match="analysis.target"):
        Attribution(checkpoint=str(path), target="logits")
    with pytest.raises(AnalysisError, match="does not exist"):
        Attribution(checkpoint="/nonexistent.pt").run(AnalysisContext(None, corpus, seed=0))
    an = Attribution(checkpoint=str(path), methods=["saliency"], inputs=["cnn"], class_index=7, plot_utterances=0)
    with pytest.raises(AnalysisError, match="'c0'.*class index 7 is outside head 'action'"):
        an.run(AnalysisContext(None, corpus, seed=0))


def test_analysis_asr_words_on_tiny_whisper(whisper_bb, tmp_path):
    corpus = FakeCommands([make_utt(16000, uid="w0", words=[Interval(0.1, 0.5, "hello"), Interval(0.5, 0.9, "you")])],
                          [None])  # fmt: skip
    corpus.command_item = lambda i: None
    an = Attribution(checkpoint=None, target="asr_token", methods=["saliency", "occlusion"], inputs=["spectrogram"],
                     utterances="all", max_targets=2, plot_utterances=1, per_method={"occlusion": {"window": 0.25}})  # fmt: skip
    res = an.run(AnalysisContext(None, corpus, seed=0, backbone_factory=lambda: whisper_bb))
    res.save(tmp_path, {"backbone": "tiny_whisper", "corpus": "fake"})
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df.method) == {"saliency", "occlusion"} and df.target.nunique() == 2
    assert df.target.str.startswith("asr_token").all()
    assert len(df) == 2 * 2 * 4  # 2 methods x 2 tokens x 4 segments ([SIL]_0 hello you [SIL]_1)
    assert not (tmp_path / "plausibility.csv").exists()
    assert np.isfinite(df.score).all()
