"""Every analysis parses its layers with the one parser (src.layers): out-of-range layers are
rejected with a message naming the config key and the valid range, names and named extra
states are accepted, duplicates are removed; and a layer holding inf/NaN raises naming it."""

from __future__ import annotations

import numpy as np
import pytest

from src.analyses.abx import ABX
from src.analyses.base import AnalysisContext, AnalysisError, analysis_layers
from src.analyses.cca import CCA
from src.analyses.cka import CKA
from src.analyses.dimred import DimReduction
from src.analyses.mutual_info import MutualInfo
from src.analyses.rsa import RSA
from src.analyses.speaker_gram import SpeakerGram
from src.layers import LayerSpecError
from tests.analyses.helpers import _build as speaker_gram_data
from tests.analyses.phone_fakes import FakeActs, phone_corpus, prototype_acts

PHONES = ["aa", "iy", "s", "m", "t", "z"]


def with_final_norm(acts: FakeActs, poison: tuple[int, float] | None = None) -> FakeActs:
    """The cache with one named extra state 'final_norm' (index num_layers) stored after the residual
    states, as the activation cache stores it; ``poison=(layer, value)`` writes value into one frame."""
    frames = []
    for u in range(len(acts)):
        sl = slice(acts.offsets[u], acts.offsets[u] + acts.lengths[u])
        states = [np.asarray(acts.layer(i)[sl], dtype=np.float64) for i in range(acts.num_layers)]
        last = states[-1]
        states.append((last - last.mean(1, keepdims=True)) / (last.std(1, keepdims=True) + 1e-6))  # a "LayerNorm"
        frames.append(np.stack(states))
    out = FakeActs(acts.ids, acts.speakers, frames, acts.frame_rate, acts.frame_offset)
    if poison is not None:
        layer, value = poison
        out._layers[layer, 3, 1] = value
    out.num_layers = acts.num_layers  # residual states 0..L-1 ...
    out.extra_states = ["final_norm"]  # ... then the named extra
    out.layer_names = [str(i) for i in range(acts.num_layers)] + ["final_norm"]
    return out


@pytest.fixture(scope="module")
def phone_data():
    rng = np.random.default_rng(0)
    corpus = phone_corpus([list(rng.choice(PHONES, size=12)) for _ in range(8)], ["s1", "s2"] * 4)
    protos = {p: rng.standard_normal((3, 8)) for p in PHONES}  # 3 residual layers
    return corpus, prototype_acts(corpus, protos, noise=0.3, seed=1)


def _analyses(layers):
    """(analysis, needs the speaker-gram corpus) for every analysis, with the given layer spec."""
    return {
        "cka": CKA(layers=layers),
        "cca": CCA(layers=layers, held_out=False, null_permutations=0, pairs="all"),
        "speaker_gram": SpeakerGram(layers=layers, heatmaps=False),
        "rsa": RSA(layers=layers, references=["phonological"], n_perm=0, min_count=1, matrices_at=None),
        "abx": ABX(layers=layers, by_context=False, mode="within", distance="mean_pooled"),
        "mutual_info": MutualInfo(layers=layers, ks=[3], algorithm="kmeans", class_attribute=None),
        "dimred": DimReduction(methods=["pca"], layers=layers, min_count=1, colour_by=["phone"],
                               silhouette_by=["phone"]),  # fmt: skip
    }


def _ctx(name, phone_data, **kw):
    if name == "speaker_gram":
        acts, corpus = speaker_gram_data(extra=False)  # 2 residual layers
    else:
        corpus, acts = phone_data
    return AnalysisContext(with_final_norm(acts, **kw), corpus)


def _layers_in_rows(res) -> set:
    return {r["layer"] for r in res.rows}


NAMES = ["cka", "cca", "speaker_gram", "rsa", "abx", "mutual_info", "dimred"]


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_layer_names_key_and_range(name, phone_data):
    ctx = _ctx(name, phone_data)
    n = ctx.acts.num_layers
    for bad in ([0, n], n + 5, -(n + 1), "layer_norm"):
        with pytest.raises(AnalysisError) as e:
            _analyses(bad)[name].run(ctx)
        msg = str(e.value)
        assert msg.startswith("analysis.layers: ") and f"valid layers: 0..{n - 1}" in msg and "final_norm" in msg
        assert isinstance(e.value, LayerSpecError)  # the one parser's error, also an AnalysisError


@pytest.mark.parametrize("name", NAMES)
def test_names_and_extra_states_accepted_without_duplicates(name, phone_data):
    ctx = _ctx(name, phone_data)
    n = ctx.acts.num_layers
    res = _analyses([0, "first", -n, "last", n - 1, "final_norm"])[name].run(ctx)
    assert _layers_in_rows(res) <= {0, n - 1, n} and {0, n - 1} <= _layers_in_rows(res)
    layers = res.meta.get("layers")
    if layers is not None:
        assert layers == [0, n - 1, n]  # sorted, unique; final_norm is state n
    # no duplicated row: every (layer, layer_b, reference, measure) once
    keys = [(r["layer"], r.get("layer_b"), r.get("reference"), r["metric"]) for r in res.rows]
    assert len(keys) == len(set(keys))


def test_final_norm_is_the_extra_state_and_values_differ_from_the_last_layer(phone_data):
    ctx = _ctx("cka", phone_data)
    res = CKA(layers=["last", "final_norm"]).run(ctx)
    m = res.matrices["cka_self"]
    assert m.row_labels == ["2", "final_norm"] and m.col_labels == ["2", "final_norm"]
    assert 0.0 < m.values[0, 1] < 1.0 - 1e-6  # a different state, not the last layer read twice


def test_analysis_layers_ranges_and_negatives(phone_data):
    acts = with_final_norm(phone_data[1])
    assert analysis_layers(None, acts) == [0, 1, 2]  # extras only when named
    assert analysis_layers("0:2", acts) == [0, 1] and analysis_layers("1-2", acts) == [1, 2]
    assert analysis_layers([-1, "all"], acts) == [0, 1, 2]
    assert analysis_layers(["middle", "final_norm"], acts) == [1, 3]
    with pytest.raises(AnalysisError, match=r"analysis.matrices_at: layer 3 is out of range"):
        analysis_layers([3], acts, "analysis.matrices_at")
    plain = phone_data[1]  # a cache without extra states: final_norm is not a layer
    with pytest.raises(AnalysisError, match="cannot read layer 'final_norm'"):
        analysis_layers("final_norm", plain)


def test_rsa_matrices_at_and_reference_layer_use_the_parser(phone_data):
    corpus, acts = phone_data
    ctx = AnalysisContext(with_final_norm(acts), corpus, reference_loader=lambda name: with_final_norm(acts))
    with pytest.raises(AnalysisError, match=r"^analysis.matrices_at: layer 7 is out of range"):
        RSA(references=["phonological"], n_perm=0, min_count=1, matrices_at=[7]).run(ctx)
    with pytest.raises(AnalysisError, match=r"analysis.references \('self:9'\): layer 9 is out of range"):
        RSA(references=["self:9"], n_perm=0, min_count=1, matrices_at=None).run(ctx)
    res = RSA(references=["self:final_norm", "self:-1"], n_perm=0, min_count=1, matrices_at=["final_norm"],
              method="spearman", layers=["last", "final_norm"]).run(ctx)  # fmt: skip
    vals = {(r["layer"], r["reference"]): r["value"] for r in res.rows}
    assert vals[(3, "self:final_norm")] == pytest.approx(1.0) and vals[(2, "self:-1")] == pytest.approx(1.0)
    assert "rdm_layer03" in res.matrices


# ----------------------------------------------------------------------------- non-finite layers


@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize(
    "make",
    [
        lambda: CKA(),
        lambda: CKA(mode="per_utterance"),
        lambda: CKA(mode="minibatch", batch_size=16),
        lambda: CKA(kernel="rbf"),
        lambda: CKA(debiased=True),
        lambda: CCA(pairs="all", null_permutations=0),
        lambda: RSA(references=["phonological"], n_perm=0, min_count=1, matrices_at=None),
        lambda: DimReduction(methods=["pca"], layers=None, min_count=1, colour_by=["phone"], silhouette_by=[]),
        lambda: MutualInfo(ks=[3], algorithm="kmeans", class_attribute=None),
        lambda: ABX(by_context=False, mode="within"),
    ],
    ids=["cka", "cka_per_utt", "cka_minibatch", "cka_rbf", "cka_debiased", "cca", "rsa", "dimred", "mi", "abx"],
)
def test_non_finite_layer_raises_naming_the_layer(make, value, phone_data):
    ctx = _ctx("cka", phone_data, poison=(1, value))  # frame 3 of layer 1 holds inf / NaN
    with pytest.raises(AnalysisError, match=r"layer 1 holds non-finite values") as e:
        make().run(ctx)
    assert "constant" not in str(e.value) and "float16" in str(e.value)


def test_non_finite_reference_raises_naming_it(phone_data):
    corpus, acts = phone_data
    bad = with_final_norm(acts, poison=(0, np.inf))
    ctx = AnalysisContext(acts, corpus, reference_loader=lambda name: bad)
    with pytest.raises(AnalysisError, match=r"reference mfcc layer 0 holds non-finite values"):
        CKA(reference="mfcc").run(ctx)
    with pytest.raises(AnalysisError, match=r"reference 'mfcc:0' layer 0 holds non-finite values"):
        RSA(references=["mfcc:0"], n_perm=0, min_count=1, matrices_at=None).run(ctx)
