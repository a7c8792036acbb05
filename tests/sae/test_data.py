"""The SAE frame stream: every frame once per epoch, a shuffle buffer that mixes utterances, reads equal
to numpy's own reading of the layer files, several caches as one stream, DDP shares, silence filtering
from a corpus's tiers, and the clear errors (a cache without the layer, nothing left after silence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.activations import Activations
from src.datamodules.corpus import Interval
from src.sae.data import FrameSource, FrameStream, SAEBatches, SAEDataError, rank_share, silence_runs
from src.sae.synthetic import write_dictionary_cache
from tests.sae.conftest import stream_of
from tests.sae.helpers import layer_arrays


def test_every_training_frame_once_per_epoch_and_batches_mix_utterances(small_cache):
    st = stream_of(small_cache[0], buffer_frames=512)
    acts = st.sources[0].acts
    batches = list(st.epoch_batches(0, 64))
    rows = np.concatenate(batches)
    assert len(rows) == st.train_frames == len(np.unique(rows))
    assert all(len(b) == 64 for b in batches[:-1]) and len(batches) == st.num_batches(64)
    val = np.concatenate(list(st.epoch_batches(0, 64, "val")))
    assert len(np.intersect1d(rows, val)) == 0 and len(rows) + len(val) == acts.total_frames
    utt = np.searchsorted(acts.offsets, batches[0], side="right") - 1
    assert len(np.unique(utt)) >= 10  # 64 frames from >= 10 of the 40-frame utterances
    again = list(st.epoch_batches(0, 64))
    other = list(st.epoch_batches(1, 64))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not np.array_equal(batches[0], other[0])


def test_reads_equal_numpy_and_several_caches_are_one_stream(tmp_path, small_cache):
    p2, _ = write_dictionary_cache(
        tmp_path / "c2", 600, 16, 24, 2, num_layers=2, seed=9, dtype="float32", utt_len=30
    )
    a1, a2 = Activations(small_cache[0]), Activations(p2)
    st = FrameStream([FrameSource.from_cache(a1, "all", silence="keep"), FrameSource.from_cache(a2, "all", silence="keep")],
                     val_fraction=0.0, buffer_frames=256)  # fmt: skip
    ref = np.concatenate([layer_arrays(small_cache[0]), layer_arrays(p2)])  # (2600, 2, 16)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(ref), size=300)
    np.testing.assert_array_equal(st.read(rows).numpy(), ref[rows])
    all_rows = np.concatenate(list(st.epoch_batches(0, 100)))
    assert sorted(all_rows.tolist()) == list(range(2600))
    first = np.concatenate(list(st.epoch_batches(0, 100))[:6])
    assert (first < 2000).any() and (first >= 2000).any()  # the corpora are mixed, not one after the other


def test_ddp_shares_cover_the_global_batch_with_weights(small_cache):
    b = np.arange(10, 17)  # 7 items over 2 ranks: 4 + 3
    (m0, w0), (m1, w1) = rank_share(b, 0, 2), rank_share(b, 1, 2)
    assert sorted([*m0, *m1]) == b.tolist()
    np.testing.assert_allclose(w0, 2 / 7)
    np.testing.assert_allclose(w1, 2 / 7)
    m, w = rank_share(np.array([5]), 1, 2)  # fewer items than ranks: one repeated with weight 0
    assert m.tolist() == [5] and w.tolist() == [0.0]
    st = stream_of(small_cache[0])
    ds = SAEBatches(st, 64)
    x, w, B = next(iter(ds))
    assert (
        x.shape == (64, 2, 16)
        and B == 64
        and torch.allclose(w, torch.full((64,), 1 / 64, dtype=torch.float64))
    )


def test_layer_stats_equal_numpy(small_cache):
    st = stream_of(small_cache[0])
    ref = layer_arrays(small_cache[0])
    rows = np.concatenate(list(st.rows_in_order(st.train_units)))
    mean, std = st.layer_stats(chunk=333)
    np.testing.assert_allclose(mean.numpy(), ref[rows].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), ref[rows].astype(np.float64).std(0), rtol=1e-5, atol=1e-6)


class FakeCorpus:
    """ids + tiers: what silence_runs reads from a corpus."""

    name = "fake"

    def __init__(self, ids, tiers):
        self.ids, self._tiers = list(ids), tiers

    def __len__(self):
        return len(self.ids)

    def annotation(self, u):
        from types import SimpleNamespace

        return SimpleNamespace(tiers=self._tiers[u])


def test_silence_frames_left_out_from_the_phone_tier(tmp_path):
    p, _ = write_dictionary_cache(
        tmp_path / "c", 100, 8, 8, 2, num_layers=1, utt_len=50
    )  # 2 utterances, 1 s each
    acts = Activations(p)
    # frame k stands for k / 50 s: utterance 0 silent before 0.2 s and from 0.8 s; 'sp' inside
    tiers = [
        {
            "phones": [
                Interval(0.0, 0.2, "sil"),
                Interval(0.2, 0.5, "AH1"),
                Interval(0.5, 0.6, "sp"),
                Interval(0.6, 0.8, "T"),
                Interval(0.8, 1.0, "pau"),
            ]
        },
        {"words": [Interval(0.1, 0.3, "hello")]},
    ]  # fmt: skip  (no phones tier: the words tier; gaps silent)
    counts = {}
    u, s, e = silence_runs(acts, FakeCorpus(acts.ids, tiers), counts=counts)
    assert u.tolist() == [0, 0, 1]
    assert s.tolist() == [10, 30, 55] and e.tolist() == [25, 40, 65]
    assert counts["frames_silence"] == 100 - 15 - 10 - 10
    src = FrameSource.from_cache(acts, "all", corpus=FakeCorpus(acts.ids, tiers))
    st = FrameStream([src], val_fraction=0.0)
    assert sorted(np.concatenate(list(st.epoch_batches(0, 7))).tolist()) == [
        *range(10, 25),
        *range(30, 40),
        *range(55, 65),
    ]


def test_empty_stream_after_silence_filtering_is_a_clear_error(tmp_path):
    p, _ = write_dictionary_cache(tmp_path / "c", 100, 8, 8, 2, num_layers=1, utt_len=50)
    acts = Activations(p)
    tiers = [{"phones": [Interval(0.0, 1.0, "sil")]}, {"phones": [Interval(0.0, 1.0, "pau")]}]
    with pytest.raises(
        SAEDataError, match=r"no frame left for SAE training after silence filtering.*sae.silence=keep"
    ):
        FrameSource.from_cache(acts, "all", corpus=FakeCorpus(acts.ids, tiers))


def test_cache_without_the_layer_is_a_clear_error(small_cache):
    acts = Activations(small_cache[0])
    with pytest.raises(SAEDataError, match=rf"layers=\[5\].*{acts.path}.*does not hold them"):
        FrameSource.from_cache(acts, [5], silence="keep")
    with pytest.raises(SAEDataError, match="needs the corpus"):
        FrameSource.from_cache(acts, "all")
