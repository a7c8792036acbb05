"""ABX analysis: known answers on built items, the literal reference, item selection, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.analyses.abx import ABX, useful_items
from src.analyses.base import AnalysisContext, AnalysisError
from src.functional.abx import abx_error_rate
from tests.analyses.phone_fakes import phone_corpus, prototype_acts
from tests.reference.abx import abx as abx_reference

CONF = Path(__file__).resolve().parents[2] / "conf"


def _rows(res) -> dict[tuple[int, str], float]:
    return {(r["layer"], r["metric"]): r["value"] for r in res.rows}


def _items_by_hand(acts, corpus, layer: int):
    """Each 0.1 s phone = 5 frames at 50 Hz; context = neighbours, '#' at the edges."""
    items, labels, contexts, speakers = [], [], [], []
    x = acts.layer(layer)
    for u in range(len(corpus)):
        ivs = corpus.annotation(u).tiers["phones"]
        for k, iv in enumerate(ivs):
            items.append(x[acts.offsets[u] + 5 * k : acts.offsets[u] + 5 * k + 5])
            labels.append(iv.label)
            prev = ivs[k - 1].label if k else "#"
            nxt = ivs[k + 1].label if k + 1 < len(ivs) else "#"
            contexts.append(f"{prev}_{nxt}")
            speakers.append(corpus.speaker(u))
    return items, np.array(labels), np.array(contexts), np.array(speakers)


@pytest.fixture(scope="module")
def separated():
    rng = np.random.default_rng(0)
    seqs = [list(rng.choice(["a", "b", "c", "d"], size=8)) for _ in range(6)]
    corpus = phone_corpus(seqs, ["s1", "s2", "s3"] * 2)
    protos = {p: rng.standard_normal((2, 6)) for p in "abcd"}
    protos = {p: v + 5 * np.eye(6)[i] for i, (p, v) in enumerate(protos.items())}  # far apart
    return corpus, prototype_acts(corpus, protos, noise=0.05, seed=1)


@pytest.mark.parametrize("distance", ["dtw", "mean_pooled"])
def test_perfectly_separated_labels_give_zero_error(separated, distance):
    corpus, acts = separated
    res = ABX(by_context=False, distance=distance).run(AnalysisContext(acts, corpus))
    assert _rows(res) == {
        (0, "abx_within"): 0.0,
        (0, "abx_across"): 0.0,
        (1, "abx_within"): 0.0,
        (1, "abx_across"): 0.0,
    }
    assert res.meta["cells"]["within"]["cells"] > 0 and res.meta["cells"]["across"]["cells"] > 0


@pytest.fixture(scope="module")
def noisy():
    # two sentences read by two speakers: context a_a holds b and c twice per speaker
    sents = [["a", "b", "a", "c", "a"], ["a", "c", "a", "b", "a"]]
    corpus = phone_corpus(sents * 2, ["s1", "s1", "s2", "s2"])
    rng = np.random.default_rng(3)
    protos = {p: rng.standard_normal((1, 4)) for p in "abc"}
    return corpus, prototype_acts(corpus, protos, noise=5.0, seed=4)


@pytest.mark.parametrize("by_context", [False, True])
@pytest.mark.parametrize("distance", ["dtw", "mean_pooled"])
def test_equals_literal_reference(noisy, by_context, distance):
    corpus, acts = noisy
    res = ABX(by_context=by_context, distance=distance, max_items=None, max_triplets_per_cell=None).run(
        AnalysisContext(acts, corpus)
    )
    items, labels, contexts, speakers = _items_by_hand(acts, corpus, 0)
    for mode in ("within", "across"):
        ref = abx_reference(
            items, list(labels), list(contexts) if by_context else None, list(speakers), mode, distance
        )
        assert _rows(res)[(0, f"abx_{mode}")] == pytest.approx(ref, abs=1e-12)
        assert 0.0 < ref < 1.0


def test_items_left_out_are_never_in_a_cell(noisy):
    corpus, acts = noisy
    items, labels, contexts, speakers = _items_by_hand(acts, corpus, 0)
    for mode in ("within", "across"):
        ok = useful_items(labels, contexts, speakers, mode)
        assert 0 < ok.sum() < len(ok)  # edge phones of each sentence have unique contexts
        full = abx_error_rate(items, labels, contexts, speakers, mode=mode)
        kept = abx_error_rate(
            [items[i] for i in np.flatnonzero(ok)], labels[ok], contexts[ok], speakers[ok], mode=mode
        )
        assert kept == pytest.approx(full, abs=1e-12)


def test_one_speaker_and_too_few_items():
    one = phone_corpus([["a", "b", "a", "b", "a"]] * 2, ["s"] * 2)
    a1 = prototype_acts(one, {"a": np.ones((1, 3)), "b": -np.ones((1, 3))}, noise=0.1)
    with pytest.raises(AnalysisError, match="at least 2 speakers"):
        ABX(mode="across", by_context=False).run(AnalysisContext(a1, one))
    res = ABX(mode="both", by_context=False).run(AnalysisContext(a1, one))
    assert [r["metric"] for r in res.rows] == ["abx_within"] and "across" in res.meta["notes"]
    tiny = phone_corpus([["a", "b"]], ["s"])
    a2 = prototype_acts(tiny, {"a": np.ones((1, 3)), "b": -np.ones((1, 3))})
    with pytest.raises(AnalysisError, match="at least 3 items"):
        ABX(mode="within", by_context=False).run(AnalysisContext(a2, tiny))
    with pytest.raises(AnalysisError, match="by_context: false"):
        ABX(mode="within", by_context=True).run(AnalysisContext(a1, one))  # a_b_a contexts: no B partner


def test_config_composes_runs_and_saves(separated, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    corpus, acts = separated
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("analyze", overrides=["analysis=abx", "backbone=mfcc", "data=textgrid", f"data.root={tmp_path}",
                                            "logger=none", "analysis.by_context=false"])  # fmt: skip
    res = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"}).run(
        AnalysisContext(acts, corpus)
    )
    assert set(_rows(res)) == {(layer, f"abx_{m}") for layer in (0, 1) for m in ("within", "across")}
    pngs = res.save(tmp_path / "out", {"backbone": "fake"})
    assert {p.name for p in pngs} == {"abx_over_layers.png"}  # within and across on one figure
    assert (tmp_path / "out" / "results.csv").exists()


def test_one_speaker_per_text_keeps_each_shared_text_once():
    from types import SimpleNamespace

    from src.analyses.abx import _one_speaker_per_text

    texts = ["t1", "t1", "t2", "t2", "t3", "t3", "solo"]
    spks = ["s1", "s2", "s1", "s2", "s1", "s2", "s1"]
    corpus = SimpleNamespace(annotation=lambda u: SimpleNamespace(text=texts[u]), speaker=lambda u: spks[u])
    utt = np.array([0, 0, 1, 2, 3, 4, 5, 6, 6])  # items -> utterances
    keep = _one_speaker_per_text(corpus, utt)
    kept_utts = sorted({int(u) for u, k in zip(utt, keep) if k})
    # sorted texts: solo, t1, t2, t3 -> owners: s1 (only reader), s2 (j=1), s1 (j=2), s2 (j=3)
    assert kept_utts == [1, 2, 5, 6]
    assert sorted({texts[u] for u in kept_utts}) == ["solo", "t1", "t2", "t3"]
