"""src/functional/abx.py against a textbook DTW and a triplet-by-triplet ABX reference."""

import math

import numpy as np
import pytest
import torch

from src.functional.abx import abx_cells, abx_error_rate, collapse_cells, dtw_distance, pairwise_dtw
from tests.reference import abx as ref


@pytest.mark.parametrize("frame_distance", ["angular", "cosine", "euclidean"])
def test_dtw_matches_textbook_reference(frame_distance):
    rng = np.random.default_rng(0)
    for _ in range(25):
        a = rng.normal(size=(int(rng.integers(1, 10)), 4))
        b = rng.normal(size=(int(rng.integers(1, 10)), 4))
        assert dtw_distance(a, b, frame_distance) == pytest.approx(ref.dtw(a, b, frame_distance), abs=1e-10)


def test_dtw_known_values():
    a = np.array([[0.0], [1.0], [2.0]])
    b = np.array([[0.0], [2.0]])
    # D = [[0, 2], [1, 1], [3, 1]]; from (2, 1) the diagonal (1, 0) ties with up (1, 1) at 1 and
    # wins: path (0,0) (1,0) (2,1), cost 1 over 3 cells
    assert dtw_distance(a, b, "euclidean") == pytest.approx(1 / 3)
    assert dtw_distance(a, a, "euclidean") == 0.0
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.0, 1.0], [1.0, 0.0]])
    # angular costs [[.5, 0], [0, .5]]: every path costs 1; the diagonal one has 2 cells
    assert dtw_distance(x, y, "angular") == pytest.approx(0.5, abs=1e-15)
    assert dtw_distance(x[:1], -x[:1], "cosine") == pytest.approx(2.0)
    assert dtw_distance(x[:1], -x[:1], "angular") == pytest.approx(1.0)


def test_identical_frames_are_exactly_zero_apart():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(7, 384))
    for fd in ("angular", "cosine", "euclidean"):
        assert dtw_distance(a, a.copy(), fd) == 0.0
        d = pairwise_dtw([a, a.copy(), a * 3.0], np.array([[0, 1], [2, 0], [1, 2]]), fd).numpy()
        if fd != "euclidean":
            np.testing.assert_array_equal(d, 0.0)


@pytest.mark.parametrize("frame_distance", ["angular", "euclidean"])
def test_pairwise_dtw_blocks_and_batches_match_reference(frame_distance):
    rng = np.random.default_rng(2)
    items = [rng.normal(size=(int(rng.integers(1, 9)), 3)) for _ in range(25)]
    pairs = rng.integers(0, 25, size=(200, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    expected = np.array([ref.dtw(items[i], items[j], frame_distance) for i, j in pairs])
    # tiny blocks (pairs across blocks, both orientations) and tiny batches; then one big batch
    for block_frames, batch_elements in ((10, 20), (2, 3), (10_000, 10**7)):
        got = pairwise_dtw(items, pairs, frame_distance, block_frames, batch_elements)
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)


def test_separated_clusters_give_zero_error():
    rng = np.random.default_rng(3)
    centres = np.eye(4) * 10
    items = [centres[i % 4] + 0.1 * rng.normal(size=(int(rng.integers(2, 6)), 4)) for i in range(24)]
    labels = [i % 4 for i in range(24)]
    assert abx_error_rate(items, labels) == 0.0
    assert abx_error_rate(items, labels, distance="mean_pooled") == 0.0


def test_identical_items_give_chance():
    item = np.random.default_rng(4).normal(size=(5, 8))
    items = [item.copy() for _ in range(9)]
    labels = [i % 3 for i in range(9)]
    for distance in ("dtw", "mean_pooled"):
        for fd in ("angular", "cosine", "euclidean"):
            assert abx_error_rate(items, labels, distance=distance, frame_distance=fd) == 0.5


def test_constructed_case_with_known_fraction():
    # label a at 0 and 1, label b at 0.4 and 3 (1-D items, mean pooled, euclidean):
    # cell (a, b): X=0,A=1: B=0.4 err, B=3 ok; X=1,A=0: B=0.4 err, B=3 ok      -> 2/4
    # cell (b, a): X=0.4,A=3: B=0 err, B=1 err; X=3,A=0.4: B=0 ok, B=1 err     -> 3/4
    items = [np.array([[0.0]]), np.array([[1.0]]), np.array([[0.4]]), np.array([[3.0]])]
    labels = ["a", "a", "b", "b"]
    cells = abx_cells(items, labels, distance="mean_pooled", frame_distance="euclidean")
    assert all(type(c.label_a) is str for c in cells)  # plain Python values, not numpy scalars
    scores = {(c.label_a, c.label_b): (c.score, c.n_triplets) for c in cells}
    assert scores == {("a", "b"): (0.5, 4), ("b", "a"): (0.75, 4)}
    assert abx_error_rate(items, labels, distance="mean_pooled", frame_distance="euclidean") == 0.625


def test_dtw_sees_order_that_mean_pooling_loses():
    u, v = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    up = [np.stack([u] * k + [v] * k) for k in (2, 3)]  # u then v
    down = [np.stack([v] * k + [u] * k) for k in (2, 3)]  # v then u
    items, labels = up + down, ["uv", "uv", "vu", "vu"]
    assert abx_error_rate(items, labels, distance="mean_pooled") == 0.5  # identical means
    assert abx_error_rate(items, labels, distance="dtw") == 0.0


@pytest.mark.parametrize("mode", ["within", "across"])
@pytest.mark.parametrize("with_context", [False, True])
@pytest.mark.parametrize("distance", ["dtw", "mean_pooled"])
def test_matches_triplet_reference(mode, with_context, distance):
    rng = np.random.default_rng(5)
    n = 36
    labels = [int(i % 3) for i in range(n)]
    items = [rng.normal(size=(int(rng.integers(1, 6)), 3)) + 0.8 * labels[i] for i in range(n)]
    speakers = rng.integers(0, 3, n).tolist()
    contexts = rng.integers(0, 2, n).tolist() if with_context else None
    expected = ref.abx(items, labels, contexts, speakers, mode, distance, "angular")
    got = abx_error_rate(items, labels, contexts, speakers, mode, distance)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 < got < 0.5


def test_sparse_pair_table_gives_the_same_rates(monkeypatch):
    import src.functional.abx as abx_mod

    rng = np.random.default_rng(8)
    labels = [i % 3 for i in range(30)]
    items = [rng.normal(size=(int(rng.integers(1, 5)), 3)) + 0.5 * labels[i] for i in range(30)]
    speakers = rng.integers(0, 2, 30).tolist()
    dense = abx_error_rate(items, labels, speakers=speakers, mode="across")
    monkeypatch.setattr(abx_mod, "_DENSE_KEYS", 0)  # force sorted keys + binary search
    assert abx_error_rate(items, labels, speakers=speakers, mode="across") == dense
    assert dense == pytest.approx(ref.abx(items, labels, None, speakers, "across"), abs=1e-12)


def test_cell_counts_and_collapse_order():
    rng = np.random.default_rng(6)
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 1])
    speakers = np.array(["s1"] * 5 + ["s2"] * 3)
    items = [rng.normal(size=(3, 2)) for _ in labels]
    cells = abx_cells(items, labels, speakers=speakers)
    counts = {(c.label_a, c.label_b, c.speaker): c.n_triplets for c in cells}
    # within s1: label 0 has 3 items, label 1 has 2 -> (0,1): 3*2*2, (1,0): 2*1*3; s2: (0,1): 2*1*1, (1,0) none
    assert counts == {(0, 1, "s1"): 12, (1, 0, "s1"): 6, (0, 1, "s2"): 2}
    by = {(c.label_a, c.label_b, c.speaker): c.score for c in cells}
    expected = (((by[(0, 1, "s1")] + by[(0, 1, "s2")]) / 2) + by[(1, 0, "s1")]) / 2
    assert collapse_cells(cells, has_context=False) == pytest.approx(expected)


def test_max_triplets_per_cell():
    rng = np.random.default_rng(7)
    n = 40
    labels = [i % 2 for i in range(n)]
    items = [rng.normal(size=(int(rng.integers(2, 5)), 3)) + 0.3 * labels[i] for i in range(n)]
    full = abx_error_rate(items, labels)
    assert abx_error_rate(items, labels, max_triplets_per_cell=10**6) == full
    cells = abx_cells(items, labels, max_triplets_per_cell=500, seed=1)
    assert all(c.n_triplets == 500 for c in cells)
    a = abx_error_rate(items, labels, max_triplets_per_cell=500, seed=1)
    assert a == abx_error_rate(items, labels, max_triplets_per_cell=500, seed=1)
    assert a != abx_error_rate(items, labels, max_triplets_per_cell=500, seed=2)
    assert abs(a - full) < 0.05


def test_accepts_torch_and_scalar_frames():
    items = [
        torch.tensor([0.0, 0.1]),
        torch.tensor([0.05]),
        torch.tensor([5.0, 5.2, 5.1]),
        torch.tensor([4.9]),
    ]
    assert abx_error_rate(items, [0, 0, 1, 1], frame_distance="euclidean") == 0.0


def test_errors():
    items = [np.ones((2, 3))] * 4
    with pytest.raises(ValueError, match="needs speakers"):
        abx_error_rate(items, [0, 0, 1, 1], mode="across")
    with pytest.raises(ValueError, match="mode"):
        abx_error_rate(items, [0, 0, 1, 1], mode="sideways")
    with pytest.raises(ValueError, match="at least 3 items"):
        abx_error_rate(items[:2], [0, 1])
    with pytest.raises(ValueError, match="no ABX cell"):
        abx_error_rate(items[:3], [0, 1, 2])
    with pytest.raises(ValueError, match="one entry per item"):
        abx_error_rate(items, [0, 1])
    with pytest.raises(ValueError, match="frame dimension"):
        abx_error_rate(items[:3] + [np.ones((2, 4))], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="item 1 has no frame"):
        abx_error_rate([np.ones((2, 3)), np.ones((0, 3)), np.ones((1, 3)), np.ones((1, 3))], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="frame_distance"):
        dtw_distance(items[0], items[1], "manhattan")
    assert math.isfinite(dtw_distance(np.zeros((2, 3)), np.ones((1, 3))))  # zero frames: cos sim 0
