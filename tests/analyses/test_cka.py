"""CKA analysis: values against literal Gram-matrix CKA, references paired by time, modes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.activations import ActivationCache
from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.cka import CKA
from src.backbones.features import SpectralBaseline
from src.backbones.whisper import WhisperBackbone
from src.datamodules.corpus import TextGridCorpus
from tests.analyses.phone_fakes import FakeActs
from tests.reference.cka import linear_cka as literal_linear_cka
from tests.reference.cka import rbf_cka as literal_rbf_cka

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def tone(tone_corpus_dir, tiny_whisper_dir, tmp_path_factory):
    corpus = TextGridCorpus(tone_corpus_dir)
    cache = ActivationCache(tmp_path_factory.mktemp("cka_cache"), dtype="float32", progress=False)
    whisper = cache.get(WhisperBackbone(str(tiny_whisper_dir)), corpus)
    mfcc = cache.get(SpectralBaseline("mfcc"), corpus)
    return corpus, whisper, mfcc


def _ctx(acts, corpus, refs: dict | None = None, seed: int = 0) -> AnalysisContext:
    return AnalysisContext(acts, corpus, (lambda name: refs[name]) if refs else None, seed=seed)


def _utt_frames(acts, u: int, layer: int) -> np.ndarray:
    return np.asarray(
        acts.layer(layer)[acts.offsets[u] : acts.offsets[u] + acts.lengths[u]], dtype=np.float64
    )


def _all_frames(acts, layer: int) -> np.ndarray:
    return np.concatenate([_utt_frames(acts, u, layer) for u in range(len(acts))])


def test_within_matches_literal_and_diagonal_is_one(tone):
    corpus, whisper, _ = tone
    res = CKA().run(_ctx(whisper, corpus))
    m = res.matrices["cka_self"].values
    L = whisper.num_layers
    assert m.shape == (L, L)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    x0, xl = _all_frames(whisper, 0), _all_frames(whisper, L - 1)
    assert m[0, L - 1] == pytest.approx(literal_linear_cka(x0, xl), rel=1e-5)
    rows = [r for r in res.rows if r["layer"] == 0 and r["layer_b"] == L - 1]
    assert len(rows) == 1 and rows[0]["reference"] == "self" and rows[0]["metric"] == "cka"
    assert res.meta["references"]["self"]["frames_used"] == whisper.total_frames
    assert res.line_plots == []  # a layer x layer matrix draws as a heatmap only


def test_reference_same_backbone_equals_within(tone):
    corpus, whisper, _ = tone
    within = CKA(max_frames=200, seed=3).run(_ctx(whisper, corpus)).matrices["cka_self"].values
    res = CKA(reference="copy", max_frames=200, seed=3).run(_ctx(whisper, corpus, {"copy": whisper}))
    np.testing.assert_allclose(res.matrices["cka_copy"].values, within, atol=1e-6)
    assert res.meta["references"]["copy"]["frame_count_difference"] == 0
    assert res.meta["references"]["copy"]["frames_used"] == 200
    assert {r["layer_b"] for r in res.rows} == set(range(whisper.num_layers))


def test_per_utterance_is_mean_of_utterance_cka(tone):
    corpus, whisper, mfcc = tone
    assert whisper.frame_rate == mfcc.frame_rate and whisper.frame_offset == mfcc.frame_offset == 0.0
    res = CKA(reference="mfcc", mode="per_utterance").run(_ctx(whisper, corpus, {"mfcc": mfcc}))
    # same frame times: pairing by time keeps the common frames of each utterance
    expected = np.zeros(whisper.num_layers)
    for u in range(len(corpus)):
        n = min(whisper.lengths[u], mfcc.lengths[u])
        y = _utt_frames(mfcc, u, 0)[:n]
        for k in range(whisper.num_layers):
            expected[k] += literal_linear_cka(_utt_frames(whisper, u, k)[:n], y) / len(corpus)
    got = res.matrices["cka_mfcc"].values[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    meta = res.meta["references"]["mfcc"]
    assert meta["utterances_used"] == len(corpus)
    assert meta["frame_count_difference"] == int(np.abs(whisper.lengths - mfcc.lengths).sum())
    rows = [r for r in res.rows if r["reference"] == "mfcc"]
    assert all(r["layer_b"] is None and r["mode"] == "per_utterance" for r in rows)


def _literal_track_pairs(acts, corpus, track: str):
    """Frame times i / rate (+ offset); track sample j at j / rate_track; linear interpolation;
    frames more than half a track sample outside the track dropped."""
    xs, ys = [[] for _ in range(acts.num_layers)], []
    for u in range(len(corpus)):
        tr = corpus.annotation(u).tracks[track]
        t = acts.frame_offset + np.arange(acts.lengths[u]) / acts.frame_rate
        pos = t * tr.rate
        n = tr.values.shape[0]
        keep = (pos >= -0.5) & (pos <= n - 0.5)
        ys.append(
            np.stack(
                [np.interp(pos[keep], np.arange(n), tr.values[:, k]) for k in range(tr.values.shape[1])], 1
            )
        )
        for k in range(acts.num_layers):
            xs[k].append(_utt_frames(acts, u, k)[keep])
    return [np.concatenate(x) for x in xs], np.concatenate(ys)


def test_track_reference_matches_literal(tone):
    corpus, _, mfcc = tone
    res = CKA(reference="track:ema").run(_ctx(mfcc, corpus))
    xs, y = _literal_track_pairs(mfcc, corpus, "ema")
    expected = literal_linear_cka(xs[0], y)
    got = res.matrices["cka_track_ema"].values
    assert got.shape == (1, 1) and got[0, 0] == pytest.approx(expected, rel=1e-5)
    assert 0.05 < expected < 0.5  # MFCC vs the tone-frequency channel: related, far from identical
    meta = res.meta["references"]["track:ema"]
    assert meta["frames_used"] == len(y) and meta["frame_count_difference"] == mfcc.total_frames - len(y)


def test_reference_list_gives_one_curve_each(tone, tmp_path):
    corpus, whisper, mfcc = tone
    res = CKA(reference=["mfcc", "track:ema"], mode="per_utterance").run(
        _ctx(whisper, corpus, {"mfcc": mfcc})
    )
    assert {r["reference"] for r in res.rows} == {"mfcc", "track:ema"}
    assert len(res.rows) == 2 * whisper.num_layers and res.line_plots == ["cka"]
    assert set(res.matrices) == {"cka_mfcc", "cka_track_ema"}
    res.save(tmp_path, {"backbone": "tiny"})
    assert (tmp_path / "cka_over_layers.png").exists() and (tmp_path / "cka_mfcc.npy").exists()
    import pandas as pd

    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns[:6]) == ["backbone", "analysis", "layer", "layer_b", "reference", "metric"]
    assert np.isfinite(df["value"]).all()


def _correlated_fake(n_utts: int = 40, t: int = 100, d: int = 8, seed: int = 0) -> FakeActs:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    frames = []
    for _ in range(n_utts):
        x = rng.standard_normal((t, d))
        y = np.tanh(x @ a) + 0.5 * rng.standard_normal((t, d))
        frames.append(np.stack([x, y, x[:, ::-1] * 2.0]))  # (L=3, T, D)
    return FakeActs([f"u{i}" for i in range(n_utts)], ["s"] * n_utts, frames)


def test_minibatch_close_to_pooled_debiased():
    acts = _correlated_fake()
    pooled = CKA(debiased=True, max_frames=None).run(_ctx(acts, None)).matrices["cka_self"].values
    res = CKA(mode="minibatch", batch_size=500, seed=1).run(_ctx(acts, None))
    mini = res.matrices["cka_self"].values
    assert res.rows[0]["metric"] == "cka_debiased"
    assert res.meta["references"]["self"]["batches"] == 8
    assert 0.3 < pooled[0, 1] < 0.9
    np.testing.assert_allclose(mini, pooled, atol=0.01)
    np.testing.assert_allclose(pooled[0, 2], 1.0, atol=1e-9)  # permuted, scaled features: CKA 1


def test_rbf_pooled_matches_literal():
    acts = _correlated_fake(n_utts=3, t=40)
    res = CKA(kernel="rbf", threshold=0.8, layers=[0, 1]).run(_ctx(acts, None))
    expected = literal_rbf_cka(_all_frames(acts, 0), _all_frames(acts, 1), threshold=0.8)
    assert res.matrices["cka_self"].values[0, 1] == pytest.approx(
        expected, rel=1e-6
    )  # frames read as float32


def test_bad_input(tone):
    corpus, whisper, _ = tone
    with pytest.raises(AnalysisError, match="mode"):
        CKA(mode="nope")
    with pytest.raises(AnalysisError, match="linear"):
        CKA(mode="minibatch", kernel="rbf")
    with pytest.raises(AnalysisError, match="out of range"):
        CKA(layers=[0, 99]).run(_ctx(whisper, corpus))
    with pytest.raises(AnalysisError, match="no track 'tongue'"):
        CKA(reference="track:tongue").run(_ctx(whisper, corpus))
    with pytest.raises(AnalysisError, match="reference loader"):
        CKA(reference="mfcc").run(_ctx(whisper, corpus))
    const = FakeActs(["a", "b"], ["s", "s"], [np.ones((2, 5, 3)), np.ones((2, 5, 3))])
    with pytest.raises(AnalysisError, match="constant"):
        CKA().run(_ctx(const, None))
    with pytest.raises(AnalysisError, match="no utterance usable"):
        CKA(mode="per_utterance").run(_ctx(const, None))
    tiny = FakeActs(["a"], ["s"], [np.random.default_rng(0).standard_normal((2, 3, 3))])
    with pytest.raises(AnalysisError, match="at least 4"):
        CKA(debiased=True).run(_ctx(tiny, None))


def test_configs_compose(tone, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    corpus, whisper, mfcc = tone
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("analyze", overrides=["analysis=cka", "backbone=mfcc", "data=textgrid",
                                            f"data.root={corpus.root}", f"paths.cache_dir={tmp_path}", "logger=none",
                                            "analysis.reference=mfcc"])  # fmt: skip
        exp = compose("analyze", overrides=["experiment=cka_acoustic_articulatory", "logger=none"])
    analysis = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"})
    res = analysis.run(_ctx(whisper, corpus, {"mfcc": mfcc}))
    assert len(res.rows) == whisper.num_layers and res.meta["references"]["mfcc"]["frames_used"] > 300
    assert exp.data._target_.endswith("SynthArticulatoryCorpus")
    assert list(exp.analysis.reference) == ["mfcc", "track:ema"] and exp.analysis.mode == "per_utterance"
    built = instantiate({k: v for k, v in exp.analysis.items() if k != "name"})
    assert built.references == ["mfcc", "track:ema"]


# ----------------------------------------------------------------------------- at scale: reads from disk


def _disk_cache(tmp_path, n_utts: int = 12, t: int = 50, d: int = 16, dtype=np.float16):
    """A cache on disk (memory-mapped layers, the read_rows preadv path) with related layers."""
    from src.activations import Activations
    from tests.probes.synthetic_cache import write_cache

    rng = np.random.default_rng(3)
    n = n_utts * t
    z = rng.standard_normal((n, d))
    layers = [(z @ rng.standard_normal((d, d)) + (0.5 + k) * rng.standard_normal((n, d))).astype(dtype)
              for k in range(3)]  # fmt: skip
    write_cache(tmp_path / "cache", layers, np.full(n_utts, t))
    return Activations(tmp_path / "cache", verify="full")


def _literal_minibatch(acts, layers: list[int], batch_size: int, seed: int) -> np.ndarray:
    """Nguyen et al. (2021) minibatch CKA written out: the same batches as the analysis (a seeded
    permutation of every frame cut into batch_size pieces), HSIC_1 of literal Gram matrices summed."""
    from tests.reference.cka import hsic_unbiased, linear_gram

    n = acts.total_frames
    perm = np.random.default_rng(seed).permutation(n)
    num = len(layers)
    xy = np.zeros((num, num))
    for s in range(0, n, batch_size):
        idx = np.sort(perm[s : s + batch_size])
        if len(idx) < 4:
            continue
        grams = []
        for k in layers:
            x = np.asarray(acts.layer(k), dtype=np.float64)[idx]
            grams.append(linear_gram(x - x.mean(0)))
        for i in range(num):
            for j in range(num):
                xy[i, j] += hsic_unbiased(grams[i], grams[j])
    return xy / np.sqrt(np.outer(np.diag(xy), np.diag(xy)))


def test_minibatch_mode_matches_literal_on_disk_cache(tmp_path):
    acts = _disk_cache(tmp_path)
    want = _literal_minibatch(acts, [0, 1, 2], batch_size=64, seed=5)  # 600 frames: 9 full batches + 24
    res = CKA(mode="minibatch", batch_size=64, seed=5).run(_ctx(acts, None))
    got = res.matrices["cka_self"].values
    assert res.meta["references"]["self"]["batches"] == 10
    assert 0.2 < want[0, 1] < 0.95  # related layers, not identical
    np.testing.assert_allclose(got, want, rtol=1e-9)
    got32 = CKA(mode="minibatch", batch_size=64, seed=5, compute_dtype="float32").run(_ctx(acts, None))
    np.testing.assert_allclose(got32.matrices["cka_self"].values, want, atol=1e-5)
    with pytest.raises(AnalysisError, match="compute_dtype"):
        CKA(compute_dtype="float16")


def test_read_rows_equals_literal_rows(tmp_path):
    from src.analyses.base import read_rows

    acts = _disk_cache(tmp_path)
    layer = acts.layer(1)  # np.memmap of a float16 .npy file
    rows = np.array([7, 3, 3, 599, 0, 1, 2, 100, 101, 103, 50])  # unsorted, repeated, runs and gaps
    for dtype in (np.float32, np.float64):
        want = np.stack([np.asarray(layer[r], dtype=dtype) for r in rows])
        got = read_rows(layer, rows, dtype)
        assert got.dtype == dtype and got.shape == (len(rows), acts.hidden_size)
        np.testing.assert_array_equal(got, want)
    assert read_rows(layer, np.array([], dtype=np.int64)).shape == (0, acts.hidden_size)
    in_memory = np.asarray(layer, dtype=np.float32)
    np.testing.assert_array_equal(read_rows(in_memory, rows), in_memory[rows])  # not a memmap: indexed
    with pytest.raises(IndexError, match="rows outside"):
        read_rows(layer, np.array([600]))


def _vm_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmRSS from /proc (Linux)")
def test_read_rows_leaves_no_memmap_pages_resident(tmp_path):
    """A pass over a 48 MB layer through read_rows leaves RSS flat; indexing the memmap does not
    (the control: file-backed pages a process touched count in its RSS)."""
    from src.analyses.base import read_rows

    n, d = 32768, 768
    f = tmp_path / "layer.npy"
    np.save(f, np.ones((n, d), dtype=np.float16))  # 48 MB
    layer = np.load(f, mmap_mode="r")
    read_rows(layer, np.arange(2048))  # warm up: the heap of one chunk's buffers is not what is measured
    before = _vm_rss()
    total = 0.0
    for s in range(0, n, 2048):
        total += float(read_rows(layer, np.arange(s, s + 2048))[:, 0].sum())
    grown_read_rows = _vm_rss() - before
    assert total == n
    before = _vm_rss()
    for s in range(0, n, 2048):
        total += float(np.asarray(layer[s : s + 2048], dtype=np.float32)[:, 0].sum())
    grown_memmap = _vm_rss() - before
    assert grown_read_rows < 8 * 2**20, grown_read_rows
    assert grown_memmap > 32 * 2**20, grown_memmap  # the test can fail: the memmap path grows
