"""src/functional/probing.py: control tasks, selectivity, utterance bootstrap."""

import numpy as np
import pytest

from src.functional.intervals import bootstrap_ci, bootstrap_indices, group_sums
from src.functional.probing import accuracy_by_group, control_task_labels, selectivity
from tests.reference.probing import bootstrap_loop, pearson_r_loop

# ---------------------------------------------------------------------- control tasks


def test_control_labels_follow_the_type_mapping():
    types = np.array(["aa", "b", "aa", "k", "b", "aa", "s"])
    mapping, labels = control_task_labels(types, seed=3)
    assert sorted(mapping) == ["aa", "b", "k", "s"]
    assert labels.dtype == np.int64 and labels.shape == (7,)
    assert [mapping[t] for t in types] == labels.tolist()
    # every token of a type gets the same label
    assert labels[0] == labels[2] == labels[5] and labels[1] == labels[4]
    # real task = type identity: 4 classes
    assert set(labels.tolist()) <= {0, 1, 2, 3}


def test_control_mapping_deterministic_per_seed_and_independent_of_token_order():
    rng = np.random.default_rng(0)
    types = rng.integers(0, 300, size=3000)
    m1, l1 = control_task_labels(types, seed=7)
    m2, l2 = control_task_labels(types, seed=7)
    m3, _ = control_task_labels(types, seed=8)
    assert m1 == m2 and np.array_equal(l1, l2)
    assert m1 != m3
    perm = rng.permutation(types.size)
    m4, l4 = control_task_labels(types[perm], seed=7)
    assert m4 == m1 and np.array_equal(l4, l1[perm])


def test_control_empirical_distribution_matches_real_label_distribution():
    # 6000 types; the real task has 3 classes with token frequencies .6/.3/.1
    rng = np.random.default_rng(1)
    n_types = 6000
    types = np.repeat(np.arange(n_types), 2)  # every type twice
    real = rng.choice(["x", "y", "z"], p=[0.6, 0.3, 0.1], size=n_types).repeat(2)
    mapping, labels = control_task_labels(types, seed=0, task_labels=real)
    freq_real = np.unique(real, return_counts=True)[1] / real.size
    freq_types = np.bincount(list(mapping.values()), minlength=3) / n_types
    np.testing.assert_allclose(freq_types, freq_real, atol=0.02)
    # control label c indexes np.unique(task_labels): 0 -> "x" is the most frequent
    assert freq_types.argmax() == 0
    assert labels.max() == 2


def test_control_uniform_distribution_and_num_classes():
    types = np.arange(5000)
    _, labels = control_task_labels(types, num_control_classes=4, distribution="uniform", seed=2)
    np.testing.assert_allclose(np.bincount(labels) / 5000, [0.25] * 4, atol=0.02)
    _, single = control_task_labels(types, num_control_classes=1, distribution="uniform")
    assert (single == 0).all()


def test_control_task_errors():
    with pytest.raises(ValueError, match="uniform"):
        control_task_labels(np.arange(5), num_control_classes=3)  # empirical has 5 classes
    with pytest.raises(ValueError, match="distribution"):
        control_task_labels(np.arange(5), distribution="zipf")
    with pytest.raises(ValueError, match="shape"):
        control_task_labels(np.arange(5), task_labels=np.arange(4))
    with pytest.raises(ValueError, match="non-empty"):
        control_task_labels(np.array([]))


def test_selectivity_hand_case():
    assert selectivity(0.92, 0.61) == pytest.approx(0.31)
    np.testing.assert_allclose(selectivity([0.9, 0.8], [0.5, 0.85]), [0.4, -0.05])


# ---------------------------------------------------------------------- groups


def test_group_sums_and_accuracy_by_group_hand_case():
    correct = [1, 0, 1, 1, 0, 0]
    groups = ["u2", "u1", "u2", "u1", "u3", "u2"]
    ids, acc, counts = accuracy_by_group(correct, groups)
    assert ids.tolist() == ["u1", "u2", "u3"]
    np.testing.assert_allclose(acc, [0.5, 2 / 3, 0.0])
    np.testing.assert_array_equal(counts, [2, 3, 1])
    _, sums, _ = group_sums(np.array([[1.0, 2.0]] * 6), groups)
    np.testing.assert_array_equal(sums, [[2, 4], [3, 6], [1, 2]])


# ---------------------------------------------------------------------- bootstrap


def make_utterances(n_utt=40, seed=0, p_mean=0.7):
    """Per-frame correctness with an utterance effect (frames within an utterance correlate)."""
    rng = np.random.default_rng(seed)
    p_utt = np.clip(rng.normal(p_mean, 0.15, size=n_utt), 0.05, 0.95)
    lengths = rng.integers(5, 30, size=n_utt)
    groups = np.repeat([f"utt{i:03d}" for i in range(n_utt)], lengths)
    correct = (rng.random(groups.size) < np.repeat(p_utt, lengths)).astype(float)
    return correct, groups


def test_bootstrap_accuracy_equals_literal_loop():
    correct, groups = make_utterances(n_utt=25)
    ci = bootstrap_ci(correct, groups, n_boot=200, seed=4)
    est, low, high, reps = bootstrap_loop(correct, groups, n_boot=200, seed=4)
    np.testing.assert_allclose(ci.samples, reps, rtol=1e-12)
    assert ci.estimate == pytest.approx(est) == pytest.approx(correct.mean())
    assert ci.low == pytest.approx(low) and ci.high == pytest.approx(high)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.n_groups == 25 and ci.samples.shape == (200,)


def test_bootstrap_per_group_totals_equal_per_item_input():
    correct, groups = make_utterances(n_utt=30, seed=1)
    _, sums, counts = group_sums(correct, groups)
    a = bootstrap_ci(correct, groups, seed=5)
    b = bootstrap_ci(sums, totals=counts, seed=5)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-12)
    assert (a.low, a.high) == pytest.approx((b.low, b.high))


def test_bootstrap_mean_of_per_utterance_values_hand_case():
    values = np.array([1.0, 2.0, 3.0, 6.0])
    ci = bootstrap_ci(values, statistic="mean", n_boot=50, seed=0)
    idx = bootstrap_indices(4, 50, 0)
    np.testing.assert_allclose(ci.samples, values[idx].mean(1))
    assert ci.estimate == pytest.approx(3.0)


def test_bootstrap_pearson_per_target_equals_literal_loop():
    rng = np.random.default_rng(2)
    n_utt = 15
    lengths = rng.integers(4, 12, size=n_utt)
    groups = np.repeat(np.arange(n_utt), lengths)
    target = rng.normal(size=(groups.size, 3)) + 100.0  # offset: sums must stay accurate
    pred = target * np.array([1.0, 0.5, 0.0]) + rng.normal(size=target.shape)
    ci = bootstrap_ci(pred, groups, target=target, statistic="pearson", n_boot=100, seed=9)
    _, low, high, reps = bootstrap_loop(pred, groups, target=target, statistic="pearson", n_boot=100, seed=9)
    np.testing.assert_allclose(ci.estimate, pearson_r_loop(pred, target), atol=1e-9)
    np.testing.assert_allclose(ci.samples, reps, atol=1e-9)
    np.testing.assert_allclose(ci.low, low, atol=1e-9)
    np.testing.assert_allclose(ci.high, high, atol=1e-9)
    assert ci.samples.shape == (100, 3)
    assert np.all(ci.low <= ci.estimate) and np.all(ci.estimate <= ci.high)
    # 1-D input gives scalars
    one = bootstrap_ci(pred[:, 0], groups, target=target[:, 0], statistic="pearson", n_boot=100, seed=9)
    assert one.samples.shape == (100,) and one.high == pytest.approx(ci.high[0])


def test_bootstrap_width_shrinks_with_more_utterances():
    widths = []
    for n_utt in (20, 80, 320):
        correct, groups = make_utterances(n_utt=n_utt, seed=3)
        ci = bootstrap_ci(correct, groups, seed=0)
        assert ci.low <= ci.estimate <= ci.high
        widths.append(ci.high - ci.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] > 2.5  # ~ sqrt(16) = 4 in expectation


def test_bootstrap_resamples_utterances_not_frames():
    # all frames of an utterance agree: the utterance-level interval must be much wider
    # than a frame-level one would be
    correct, groups = make_utterances(n_utt=30, seed=4)
    ids, acc, _ = accuracy_by_group(correct, groups)
    per_utt = np.where(acc[np.searchsorted(ids, groups)] > 0.7, 1.0, 0.0)
    utt = bootstrap_ci(per_utt, groups, seed=0)
    frames = bootstrap_ci(per_utt, np.arange(per_utt.size), seed=0)
    assert (utt.high - utt.low) > 2 * (frames.high - frames.low)


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="0/1"):
        bootstrap_ci([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="totals"):
        bootstrap_ci([3.0, 4.0])
    with pytest.raises(ValueError, match=r"\[0, totals\]"):
        bootstrap_ci([3.0, 4.0], totals=[2.0, 5.0])
    with pytest.raises(ValueError, match="target"):
        bootstrap_ci([1.0, 2.0], statistic="pearson")
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci([1.0, 0.0], [0, 1], statistic="median")
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci([1.0, 0.0], [0, 1, 2])
