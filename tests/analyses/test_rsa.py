"""RSA analysis: values against scipy on the same items, invariances, references by time, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.rsa import RSA
from src.datamodules.phones import phonological_features
from tests.analyses.phone_fakes import FakeActs, phone_corpus, prototype_acts
from tests.reference.rsa import kendall_tau_a_loop

CONF = Path(__file__).resolve().parents[2] / "conf"
PHONES = ["aa", "iy", "s", "m", "t", "z", "uw", "l"]


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    seqs = [list(rng.choice(PHONES, size=12)) for _ in range(10)]
    return phone_corpus(seqs, ["spk1", "spk2"] * 5, track=True)


@pytest.fixture(scope="module")
def protos():
    rng = np.random.default_rng(1)
    return {p: rng.standard_normal((3, 16)) for p in PHONES}  # (L, D) per phone


@pytest.fixture(scope="module")
def acts(corpus, protos):
    return prototype_acts(corpus, protos, noise=0.5, seed=2)


def _scaled(a: FakeActs, scale: float, shift: float) -> FakeActs:
    frames = [np.stack([a.layer(i)[a.offsets[u] : a.offsets[u] + a.lengths[u]] for i in range(a.num_layers)])
              for u in range(len(a))]  # fmt: skip
    return FakeActs(a.ids, a.speakers, [scale * f + shift for f in frames], a.frame_rate, a.frame_offset)


def _values(result, measure: str, reference: str) -> np.ndarray:
    rows = sorted(
        (r for r in result.rows if r["metric"] == measure and r["reference"] == reference),
        key=lambda r: r["layer"],
    )
    return np.array([r["value"] for r in rows])


def _class_means_by_hand(acts, corpus, layer: int) -> tuple[list[str], np.ndarray]:
    """Every phone's frames (5 per token at 50 Hz, 0.1 s phones) averaged per token, then per class."""
    tokens: dict[str, list[np.ndarray]] = {}
    x = acts.layer(layer)
    for u in range(len(corpus)):
        for k, iv in enumerate(corpus.annotation(u).tiers["phones"]):
            rows = acts.offsets[u] + np.arange(5 * k, 5 * k + 5)
            tokens.setdefault(iv.label, []).append(x[rows].mean(0))
    classes = sorted(tokens)
    return classes, np.stack([np.mean(tokens[c], axis=0) for c in classes])


def test_rsa_matches_scipy_on_class_means(acts, corpus):
    res = RSA(references=["phonological", "track:ema"], metric="correlation", n_perm=0, min_count=1,
              method="spearman").run(AnalysisContext(acts, corpus))  # fmt: skip
    ema = {p: (k, k * k) for k, p in enumerate(sorted(PHONES))}
    for layer in range(3):
        classes, means = _class_means_by_hand(acts, corpus, layer)
        model = pdist(means, "correlation")
        phon = pdist(phonological_features(classes)[0], "hamming")
        track = pdist(np.array([ema[c] for c in classes], dtype=float), "euclidean")
        assert _values(res, "rsa_spearman", "phonological")[layer] == pytest.approx(
            spearmanr(model, phon).statistic, abs=1e-10
        )
        assert _values(res, "rsa_spearman", "track:ema")[layer] == pytest.approx(
            spearmanr(model, track).statistic, abs=1e-10
        )
    assert res.meta["num_items"] == len(PHONES)
    assert set(res.matrices) == {
        "rdm_reference_phonological",
        "rdm_reference_track_ema",
        "rdm_layer00",
        "rdm_layer01",
        "rdm_layer02",
    }
    np.testing.assert_allclose(res.matrices["rdm_layer02"].values[np.triu_indices(8, 1)],
                               pdist(_class_means_by_hand(acts, corpus, 2)[1], "correlation"), atol=1e-10)  # fmt: skip


def test_kendall_tau_a_matches_literal_reference(acts, corpus):
    res = RSA(references=["phonological"], metric="euclidean", method="kendall_tau_a", n_perm=0, min_count=1,
              layers=[1]).run(AnalysisContext(acts, corpus))  # fmt: skip
    classes, means = _class_means_by_hand(acts, corpus, 1)
    ref = kendall_tau_a_loop(pdist(means), pdist(phonological_features(classes)[0], "hamming"))
    assert _values(res, "rsa_kendall_tau_a", "phonological")[0] == pytest.approx(ref, abs=1e-12)


def test_default_method_is_tau_a_for_categorical_references_and_units_are_named(acts, corpus):
    res = RSA(references=["phonological", "track:ema"], metric="euclidean", n_perm=19, min_count=1,
              layers=[1]).run(AnalysisContext(acts, corpus))  # fmt: skip
    classes, means = _class_means_by_hand(acts, corpus, 1)
    phon = kendall_tau_a_loop(pdist(means), pdist(phonological_features(classes)[0], "hamming"))
    ema = {p: (k, k * k) for k, p in enumerate(sorted(PHONES))}
    track = spearmanr(pdist(means), pdist(np.array([ema[c] for c in classes], dtype=float))).statistic
    assert _values(res, "rsa_kendall_tau_a", "phonological")[0] == pytest.approx(phon, abs=1e-12)
    assert _values(res, "rsa_spearman", "track:ema")[0] == pytest.approx(track, abs=1e-10)
    assert len(_values(res, "rsa_spearman", "phonological")) == 0  # tied categorical RDM: not Spearman
    assert res.meta["methods"] == {"phonological": "kendall_tau_a", "track:ema": "spearman"}
    assert {r["permuted"] for r in res.rows if r["metric"] == "p_value"} == {"class"}  # items are classes
    assert res.line_plots == ["rsa_kendall_tau_a", "rsa_spearman"]


def test_tokens_permute_class_labels_or_utterances_not_tokens(acts, corpus):
    from src.functional.rsa import class_permutation_test, permutation_test

    ctx = AnalysisContext(acts, corpus, reference_loader=lambda name: acts)
    res = RSA(items="tokens", references=["phonological", "self:0"], metric="euclidean", n_perm=30, min_count=1,
              layers=[2], matrices_at=None, seed=4).run(ctx)  # fmt: skip
    units = {r["reference"]: r["permuted"] for r in res.rows if r["metric"] == "p_value"}
    assert units == {"phonological": "class", "self:0": "utterance"} and res.meta["permuted"] == units
    assert res.meta["counts"]["utterances_exchangeable"] == 10  # 10 utterances of 12 tokens each
    # the same p-values from the functional tests, on the tokens as the analysis orders them (by label)
    labels, utt, frames = [], [], {0: [], 2: []}
    for u in range(len(corpus)):
        for k, iv in enumerate(corpus.annotation(u).tiers["phones"]):
            labels.append(iv.label)
            utt.append(u)
            for layer in frames:
                frames[layer].append(acts.layer(layer)[acts.offsets[u] + np.arange(5 * k, 5 * k + 5)].mean(0))
    order = np.argsort(np.array(labels), kind="stable")
    labels, utt = np.array(labels)[order], np.array(utt)[order]
    model, ref0 = pdist(np.stack(frames[2])[order]), pdist(np.stack(frames[0])[order])
    classes = sorted(set(labels))
    _, p_phon = class_permutation_test(model, pdist(phonological_features(classes)[0], "hamming"), labels,
                                       n_perm=30, seed=4, method="kendall_tau_a")  # fmt: skip
    _, p_self = permutation_test(model, ref0, n_perm=30, seed=4, method="spearman", groups=utt)
    assert _values(res, "p_value", "phonological")[0] == pytest.approx(p_phon)
    assert _values(res, "p_value", "self:0")[0] == pytest.approx(p_self)


@pytest.mark.parametrize("items", ["class_means", "tokens"])
def test_model_against_itself_is_one_with_small_p(acts, corpus, items):
    ctx = AnalysisContext(acts, corpus, reference_loader=lambda name: acts)
    res = RSA(items=items, references=["self:1"], n_perm=199, min_count=1, seed=0).run(ctx)
    r = _values(res, "rsa_spearman", "self:1")
    p = _values(res, "p_value", "self:1")
    assert r[1] == pytest.approx(1.0, abs=1e-12)
    assert p[1] == pytest.approx(1 / 200)  # no permutation of 8 (or 120) items matches the observed RDM
    assert r[0] < 0.99 and r[2] < 0.99  # other layers' prototypes differ


@pytest.mark.parametrize("method", ["spearman", "kendall_tau_a"])
def test_monotone_transform_gives_exactly_one(acts, corpus, method):
    scaled = _scaled(acts, 3.0, 1.0)  # euclidean distances x 3: a monotone transform of the RDM
    ctx = AnalysisContext(acts, corpus, reference_loader=lambda name: scaled)
    res = RSA(items="tokens", references=["scaled:2"], metric="euclidean", method=method, n_perm=0,
              max_items=60, min_count=1).run(ctx)  # fmt: skip
    assert _values(res, f"rsa_{method}", "scaled:2")[2] == pytest.approx(1.0, abs=1e-12)


def test_reference_pooled_by_time_at_another_frame_rate(corpus, protos):
    model = prototype_acts(corpus, protos, noise=0.0)
    ref = prototype_acts(
        corpus, protos, noise=0.0, frame_rate=100.0, frame_offset=0.005
    )  # other frames, same content
    ctx = AnalysisContext(model, corpus, reference_loader=lambda name: ref)
    res = RSA(references=["other"], metric="euclidean", n_perm=0, min_count=1).run(ctx)
    # the reference's last layer (2) pooled over the same segments by time equals model layer 2
    np.testing.assert_allclose(_values(res, "rsa_spearman", "other"), [spearmanr(
        pdist(np.stack([protos[p][i] for p in sorted(PHONES)])), pdist(np.stack([protos[p][2] for p in sorted(PHONES)]))
    ).statistic for i in range(3)], atol=1e-10)  # fmt: skip
    assert _values(res, "rsa_spearman", "other")[2] == pytest.approx(1.0)


def test_too_few_classes_names_the_minimum(corpus):
    small = phone_corpus([["aa", "iy", "aa", "iy"]] * 3, ["s"] * 3)
    a = prototype_acts(small, {"aa": np.ones((1, 4)), "iy": -np.ones((1, 4))}, noise=0.1)
    with pytest.raises(AnalysisError, match="at least 3"):
        RSA(references=["phonological"], n_perm=0, min_count=1).run(AnalysisContext(a, small))


def test_unknown_phones_and_constant_layers_are_clear_errors(corpus, acts):
    odd = phone_corpus([["x1", "x2", "x3"] * 3] * 2, ["s"] * 2)
    a = prototype_acts(odd, {p: np.eye(3)[[i]] for i, p in enumerate(["x1", "x2", "x3"])}, noise=0.1)
    with pytest.raises(AnalysisError, match="phone table"):
        RSA(references=["phonological"], n_perm=0, min_count=1).run(AnalysisContext(a, odd))
    zero = _scaled(acts, 0.0, 0.0)
    with pytest.raises(AnalysisError, match="layer 0.*zero norm"):
        RSA(references=["phonological"], metric="cosine", n_perm=0, min_count=1).run(
            AnalysisContext(zero, corpus)
        )
    with pytest.raises(AnalysisError, match="no reference loader|reference loader"):
        RSA(references=["mfcc"], n_perm=0, min_count=1).run(AnalysisContext(acts, corpus))


def test_config_composes_runs_and_saves(acts, corpus, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("analyze", overrides=["analysis=rsa", "backbone=mfcc", "data=textgrid", f"data.root={tmp_path}",
                                            "logger=none", "analysis.n_perm=20", "analysis.min_count=1"])  # fmt: skip
    analysis = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"})
    res = analysis.run(AnalysisContext(acts, corpus, reference_loader=lambda name: _scaled(acts, 2.0, 0.0)))
    assert {r["reference"] for r in res.rows} == {"phonological", "mfcc"}
    assert _values(res, "rsa_spearman", "mfcc")[2] == pytest.approx(
        1.0
    )  # 2 x the last layer: same correlation RDM
    pngs = res.save(tmp_path / "out", {"backbone": "fake"})
    names = {p.name for p in pngs}
    assert {"rsa_over_layers.png", "rdm_layer00.png", "rdm_reference_phonological.png"} <= names
    assert all(p.stat().st_size > 1000 for p in pngs)
    text = (tmp_path / "out" / "results.csv").read_text()
    assert text.count("rsa_spearman") == 3 and text.count("rsa_kendall_tau_a") == 3  # mfcc / phonological
    assert cfg.analysis.method == "auto"


# ---------------------------------------------------------------- one pass over utterances


def _items(utt, seed=0):
    from src.datamodules.alignment import SegmentItems

    rng = np.random.default_rng(seed)
    n = len(utt)
    start = np.round(rng.uniform(0, 2, n), 3)
    return SegmentItems(np.arange(n), np.arange(n) + 1, np.array([PHONES[i % 8] for i in range(n)]), np.asarray(utt),
                        start, start + 0.05, np.array(["#_#"] * n))  # fmt: skip


@pytest.mark.parametrize("utt", [[0, 0, 1, 1, 1, 3], [2, 0, 2, 1, 0, 2, 5, 1], [4], []])
def test_intervals_by_utterance_equal_the_scan_per_utterance(utt):
    """The grouping by run boundaries equals the old ``items.utt == u`` scan per utterance,
    also for items not sorted by utterance (positions within one keep item order)."""
    from src.analyses.rsa import _intervals_by_utterance
    from src.datamodules.corpus import Interval

    items = _items(utt)
    got = _intervals_by_utterance(items)
    literal = {}
    for u in sorted(set(utt)):
        pos = [i for i, x in enumerate(utt) if x == u]
        literal[u] = (pos, [Interval(float(items.start[i]), float(items.end[i]), str(items.labels[i])) for i in pos])
    assert list(got) == list(literal)
    for u in literal:
        assert got[u][0].tolist() == literal[u][0] and got[u][1] == literal[u][1]
    if utt == [2, 0, 2, 1, 0, 2, 5, 1]:
        assert got[2][0].tolist() == [0, 2, 5]  # a literal value


def test_group_permutations_equal_the_scan_per_group():
    """Members by one argsort give the same permutations (same generator draws) as a scan per group."""
    from src.functional.rsa import group_permutations

    def literal(groups, n_perm, rng):
        _, inv = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(int(inv.max()) + 1)]
        sizes = np.array([len(m) for m in members])
        strata = [np.flatnonzero(sizes == s) for s in np.unique(sizes)]
        out = np.empty((n_perm, len(groups)), dtype=np.int64)
        for p in range(n_perm):
            for gs in strata:
                for g, h in zip(gs, rng.permutation(gs)):
                    out[p, members[g]] = members[h]
        return out

    groups = np.array([3, 1, 3, 2, 1, 7, 2, 3, 9, 9, 1, 2, 4])
    got = group_permutations(groups, 20, np.random.default_rng(5))
    np.testing.assert_array_equal(got, literal(groups, 20, np.random.default_rng(5)))
    assert sorted(got[0].tolist()) == list(range(len(groups)))  # a permutation
    assert (got[:, [8, 9]] == [8, 9]).all()  # group 9 is the only group of 2 items: it stays in place
    assert set(got[:, 12].tolist()) == {5, 12}  # groups 4 and 7 (one item each) swap or stay
