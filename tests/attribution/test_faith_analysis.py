"""analysis=faithfulness end to end on a tiny wav2vec2 + a random UtteranceClassifier + a 4-utterance
commands-like corpus: values against the literal reference with the classifier target as f, the saved-
attributions path, the multi-head scorer, result layout and figures."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from src.analyses.base import AnalysisContext, AnalysisError
from tests.attribution.helpers import HEADS, FakeCommands, save_classifier
from tests.reference import faithfulness as ref


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_w2v2_dir):
    from src.backbones.hf import HFBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = HFBackbone(str(tiny_w2v2_dir)).eval()
    d = tmp_path_factory.mktemp("faith")
    corpus = FakeCommands()
    ckpt = save_classifier(bb, d / "clf.pt", tiny_w2v2_dir, test_ids=corpus.ids[:2])
    return bb, corpus, ckpt, d


def test_heads_scorer_equals_the_classifier_targets(setup):
    from src.analyses.faithfulness import heads_scorer_fn
    from src.attribution import Representation, classifier_target
    from src.probes.utterance import UtteranceClassifier

    bb, corpus, ckpt, _ = setup
    clf, _ = UtteranceClassifier.load(ckpt)
    utt = corpus[0]
    for inp in ("waveform", "cnn"):
        rep = Representation(bb, utt.audio, inp, utt.id)
        targets = {h: classifier_target(bb, clf, utt, h, inp, which="predicted", rep=rep) for h in HEADS}
        f = heads_scorer_fn(rep, clf, list(HEADS), {h: t.info["class_index"] for h, t in targets.items()})
        x = torch.cat([rep.x0, 0.5 * rep.x0, torch.zeros_like(rep.x0)])
        y = f(x)
        for j, h in enumerate(HEADS):
            torch.testing.assert_close(y[:, j], targets[h](x), atol=1e-6, rtol=0)


def test_faithfulness_end_to_end_against_the_reference(setup, tmp_path):
    from src.analyses.faithfulness import Faithfulness, attribution_scores
    from src.attribution import Representation, classifier_target, make_segments
    from src.probes.utterance import UtteranceClassifier

    bb, corpus, ckpt, _ = setup
    an = Faithfulness(checkpoint=str(ckpt), methods=["saliency", "feature_ablation"], inputs=["cnn"],
                      replace_with="zeros", n_random=3, batch_size=8, n_boot=50, seed=5, max_utterances=None)  # fmt: skip
    res = an.run(AnalysisContext(None, corpus, seed=0))
    rows = res.rows
    assert res.meta["utterances"] == 2 and res.meta["utterance_ids"] == corpus.ids[:2]  # the classifier's test split
    got = {(r["method"], r["input"], r["head"], r["metric"], r["variant"]): r for r in rows}
    for v in ("eraser", "all_k", "ferret"):
        for m in ("comprehensiveness_aopc", "sufficiency_aopc"):
            assert ("saliency", "cnn", "all", m, v) in got
    r = got[("feature_ablation", "cnn", "action", "comprehensiveness_aopc", "all_k")]
    assert r["n_units"] == 2 and r["n_random"] == 3 and 0 < r["p_random"] <= 1
    assert r["random_low"] <= r["random_mean"] <= r["random_high"]
    assert r["difference"] == pytest.approx(r["value"] - r["random_mean"], abs=1e-12)

    # the literal reference with the classifier target as f, utterance by utterance (cnn: few elements)
    clf, _ = UtteranceClassifier.load(ckpt)
    vals, ferret = [], []
    for i in range(2):
        utt = corpus[i]
        segs = make_segments(utt, "words")
        rep = Representation(bb, utt.audio, "cnn", utt.id)
        t = classifier_target(bb, clf, utt, "object", "cnn", which="true", label=corpus.items[i].slots["object"], rep=rep)
        sc, _, _ = attribution_scores(t, "feature_ablation", None, segs, "mean", {"perturbations_per_eval": 8})
        shape = rep.x0.shape
        x0 = rep.x0.reshape(-1).double().tolist()
        mask = t.feature_mask(segs).reshape(-1).tolist()
        zeros = [0.0] * len(x0)

        def f(lst, t=t, shape=shape):
            return float(t(torch.tensor(lst, dtype=torch.float32).reshape(shape)))

        units = [k for k in range(len(segs)) if segs.is_word[k]]
        vals.append(ref.aopc_all_k(f, x0, zeros, mask, list(sc), units, "comprehensiveness"))
        ferret.append(ref.aopc_ferret(f, x0, zeros, mask, list(sc), units, "sufficiency"))
    row = got[("feature_ablation", "cnn", "object", "comprehensiveness_aopc", "all_k")]
    assert row["value"] == pytest.approx(np.mean(vals), abs=1e-5)
    row = got[("feature_ablation", "cnn", "object", "sufficiency_aopc", "ferret")]
    assert row["value"] == pytest.approx(np.mean(ferret), abs=1e-5)

    # head "all": per utterance the mean over heads
    a = got[("saliency", "cnn", "all", "deletion_auc", "trapezoid")]
    assert a["n_units"] == 2
    # plausibility: slot words known (action: word 0, object: word 2)
    p = got[("feature_ablation", "cnn", "action", "plausibility_top1", "-")]
    assert 0.0 <= p["value"] <= 1.0 and p["random_mean"] == pytest.approx(1 / 3, abs=0.34)

    pngs = res.save(tmp_path, {"backbone": bb.name, "corpus": corpus.name})
    names = {p.name for p in pngs}
    assert {"deletion_insertion_cnn.png", "faithfulness_bars.png"} <= names
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "curves.csv").is_file()
    import pandas as pd

    curves = pd.read_csv(tmp_path / "curves.csv")
    dele = curves[(curves.method == "random") & (curves.curve == "deletion") & (curves.input == "cnn")]
    assert dele.y.iloc[0] == pytest.approx(0.0, abs=1e-6)  # nothing removed: the full score

    # the same scores read back from the saved scores table give the same numbers
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert set(scores.columns) >= {"utterance", "method", "input", "segment_index", "segment", "score", "head"}
    sal = scores[scores.method == "saliency"].copy()
    sal["target"] = sal["head"] + "=" + sal["class"]  # analysis=attribution names classifier targets so
    asr = sal.iloc[:3].assign(head=None, target="asr_token0:x")  # ... and its ASR rows have no head: ignored
    pd.concat([sal, asr]).to_csv(tmp_path / "attr.csv", index=False)
    saved = Faithfulness(checkpoint=str(ckpt), attributions=str(tmp_path / "attr.csv"), methods=["saliency"],
                         inputs=["cnn"], replace_with="zeros", n_random=3, n_boot=50, seed=5).run(
        AnalysisContext(None, corpus, seed=0))  # fmt: skip
    for r in saved.rows:
        key = (r["method"], r["input"], r["head"], r["metric"], r["variant"])
        assert r["value"] == pytest.approx(got[key]["value"], abs=1e-6), key
        assert r["random_mean"] == pytest.approx(got[key]["random_mean"], abs=1e-6), key


def test_bad_input(setup):
    from src.analyses.faithfulness import Faithfulness

    bb, corpus, ckpt, _ = setup
    with pytest.raises(AnalysisError, match="methods"):
        Faithfulness(checkpoint=str(ckpt), methods=["gradcam"])
    with pytest.raises(AnalysisError, match="no such file"):
        Faithfulness(checkpoint="/nonexistent.pt").run(AnalysisContext(None, corpus))
    with pytest.raises(AnalysisError, match="heads"):
        Faithfulness(checkpoint=str(ckpt), heads=["colour"], inputs=["cnn"]).run(AnalysisContext(None, corpus))
    with pytest.raises(AnalysisError, match="n_random"):
        Faithfulness(checkpoint=str(ckpt), n_random=0)


def test_method_kwargs_from_hydra_blocks(setup):
    from omegaconf import OmegaConf

    from src.analyses.faithfulness import Faithfulness

    _, _, ckpt, _ = setup
    kw = OmegaConf.create({"integrated_gradients": {"n_steps": 4}, "perturbations_per_eval": 2})
    f = Faithfulness(checkpoint=str(ckpt), method_kwargs=kw)
    assert f.kwargs_of("integrated_gradients") == {"perturbations_per_eval": 2, "n_steps": 4}
    assert f.kwargs_of("saliency") == {"perturbations_per_eval": 2}  # a DictConfig block is not a flat option
