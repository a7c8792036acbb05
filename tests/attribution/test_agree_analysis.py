"""analysis=attribution_agreement end to end on a tiny wav2vec2 + random classifiers: matrices against a direct
computation with scipy, identical classifiers agree exactly (ISA = 1), sanity rows, chance levels, heatmaps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from src.analyses.base import AnalysisContext, AnalysisError
from tests.attribution.helpers import FakeCommands, save_classifier


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_w2v2_dir):
    import warnings

    from src.backbones.hf import HFBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = HFBackbone(str(tiny_w2v2_dir)).eval()
    d = tmp_path_factory.mktemp("agree")
    corpus = FakeCommands(n=3)
    p0 = save_classifier(bb, d / "clf0.pt", tiny_w2v2_dir, seed=0, test_ids=corpus.ids[:2])
    p1 = save_classifier(bb, d / "clf1.pt", tiny_w2v2_dir, seed=1, test_ids=corpus.ids[:2])
    return bb, corpus, p0, p1


def test_agreement_end_to_end(setup, tmp_path):
    from src.analyses.attribution_agreement import AttributionAgreement
    from src.analyses.faithfulness import attribution_scores
    from src.attribution import Representation, classifier_target, make_segments
    from src.probes.utterance import UtteranceClassifier

    bb, corpus, p0, p1 = setup
    an = AttributionAgreement(checkpoint=str(p0), seed_checkpoints=[str(p0), str(p0), str(p1)],
                              methods=["saliency", "feature_ablation"], inputs=["cnn", "waveform"],
                              baselines=["zeros", "noise"], n_boot=50, seed=3)  # fmt: skip
    res = an.run(AnalysisContext(None, corpus, seed=0))
    rows = res.rows
    groups = {r["group"] for r in rows}
    assert groups == {"method", "input", "baseline", "seed", "isa", "sanity"}

    def row(**kw):
        hits = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
        assert len(hits) == 1, (kw, hits)
        return hits[0]

    # method matrix on cnn against scipy on directly computed scores (items pooled per utterance over heads)
    clf, _ = UtteranceClassifier.load(p0)
    per_utt = []
    for i in range(2):
        utt = corpus[i]
        segs = make_segments(utt, "words")
        words = np.flatnonzero(segs.is_word)
        rep = Representation(bb, utt.audio, "cnn", utt.id)
        rhos = []
        for h in clf.heads:
            t = classifier_target(bb, clf, utt, h, "cnn", which="true", label=corpus.items[i].slots[h], rep=rep)
            a, _, _ = attribution_scores(t, "saliency", None, segs, "mean", {})
            b, _, _ = attribution_scores(t, "feature_ablation", None, segs, "mean", {"perturbations_per_eval": 8})
            rhos.append(stats.spearmanr(a[words], b[words]).statistic)
        per_utt.append(np.mean(rhos))
    r = row(group="method", input="cnn", source_a="saliency", source_b="feature_ablation", metric="spearman")
    assert r["value"] == pytest.approx(np.mean(per_utt), abs=1e-6)
    assert r["n_units"] == 2 and r["unit"] == "utterance"
    assert row(group="method", input="cnn", source_a="saliency", source_b="saliency", metric="kendall")["value"] == 1.0

    # identical classifiers (seed0 == seed1 == the trained checkpoint) agree exactly; another seed does not
    assert row(group="seed", method="saliency", input="cnn", source_a="seed0", source_b="seed1",
               metric="spearman")["value"] == pytest.approx(1.0)  # fmt: skip
    other = row(group="seed", method="saliency", input="cnn", source_a="seed0", source_b="seed2", metric="spearman")
    assert other["value"] < 1.0 - 1e-6
    isa = row(group="isa", method="saliency", input="cnn", metric="spearman")
    assert isa["n_pairs"] == 3
    # ISA: per utterance the mean over the 3 pairs (1, x, x): between x and 1
    assert other["value"] - 1e-9 <= isa["value"] <= 1.0

    # top-k chance: 3 words per utterance -> k / m = 1/3
    tk = row(group="method", input="cnn", source_a="saliency", source_b="feature_ablation", metric="top_k")
    assert tk["chance"] == pytest.approx(1 / 3) and tk["k"] == 1
    # sanity rows: the trained maps vs a randomised head and a random backbone
    for s in ("randomized_head", "random_backbone"):
        sr = row(group="sanity", method="saliency", input="cnn", source_b=s, metric="spearman")
        assert -1.0 <= sr["value"] <= 1.0 and sr["n_units"] == 2
    # baseline group only for methods that take a baseline
    assert {r["method"] for r in rows if r["group"] == "baseline"} == {"feature_ablation"}

    pngs = res.save(tmp_path, {"backbone": bb.name, "corpus": corpus.name})
    names = {p.name for p in pngs}
    assert "agreement_method_cnn_zeros_spearman.png" in names
    assert "agreement_seed_saliency_cnn_zeros_spearman.png" in names
    m = np.load(tmp_path / "agreement_seed_saliency_cnn_zeros_spearman.npy")
    np.testing.assert_allclose(np.diag(m), 1.0)


def test_bad_input(setup):
    from src.analyses.attribution_agreement import AttributionAgreement

    _, corpus, p0, _ = setup
    with pytest.raises(AnalysisError, match="groups"):
        AttributionAgreement(checkpoint=str(p0), groups=["methods"])
    with pytest.raises(AnalysisError, match="at least 2"):
        AttributionAgreement(checkpoint=str(p0), seeds=[0])
    with pytest.raises(AnalysisError, match="seed_checkpoints"):
        AttributionAgreement(checkpoint=str(p0), methods=["saliency"], inputs=["cnn"], groups=["seed"]).run(
            AnalysisContext(None, corpus))
