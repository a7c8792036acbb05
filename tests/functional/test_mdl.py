"""src/functional/mdl.py: Voita & Titov (2020) online code."""

import doctest
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import src.functional.mdl as mdl_mod
from src.functional.mdl import (
    MDL_FRACTIONS_PERCENT,
    mdl_block_schedule,
    online_code_probe,
    online_codelength,
)
from tests.reference.probing import online_codelength_loop


def test_schedule_for_1000_and_small_and_large_n():
    assert mdl_block_schedule(1000) == [1, 2, 4, 8, 16, 32, 62, 125, 250, 500, 1000]
    assert mdl_block_schedule(10) == [1, 2, 5, 10]  # zeros and repeats dropped
    assert mdl_block_schedule(1) == [1]
    big = mdl_block_schedule(123_457)
    assert big == [int(f / 100 * 123_457) for f in MDL_FRACTIONS_PERCENT]
    assert big[0] == 123 and big[6] == 7716  # 0.1 % and 6.25 %


def uniform_fit(num_classes):
    def fit(x, y):
        return lambda xb: np.full((len(xb), num_classes), -math.log(num_classes))

    return fit


def test_uniform_probe_gives_uniform_codelength():
    x = np.zeros((1000, 2))
    y = np.arange(1000) % 5
    res = online_code_probe(x, y, 5, uniform_fit(5))
    assert res.uniform_codelength_bits == pytest.approx(1000 * math.log2(5))
    assert res.codelength_bits == pytest.approx(res.uniform_codelength_bits)
    assert res.compression == pytest.approx(1.0)
    assert res.schedule == mdl_block_schedule(1000)
    assert res.block_bits[0] == pytest.approx(math.log2(5))  # first block: 1 example
    assert sum(res.block_bits) == pytest.approx(res.codelength_bits)


def test_perfect_probe_pays_only_the_first_block():
    y = np.arange(400) % 4
    x = y[:, None].astype(float)  # the label is in the input

    def fit(xp, yp):
        def predict(xb):
            out = np.full((len(xb), 4), -np.inf)
            out[np.arange(len(xb)), xb[:, 0].astype(int)] = 0.0
            return out

        return predict

    res = online_code_probe(x, y, 4, fit)
    first = mdl_block_schedule(400)[0]
    assert res.codelength_bits == pytest.approx(first * 2.0)
    assert res.compression == pytest.approx(400 / first)


def test_hand_computed_blocks():
    # schedule [2, 4]: first block 2 * log2(2) = 2 bits; block 2 = -log2(.5) - log2(.25) = 3 bits
    out = online_codelength([np.array([1.0, 2.0])], first_block_size=2, num_classes=2)
    assert out == {"codelength_bits": 5.0, "uniform_codelength_bits": 4.0, "compression": 0.8}
    scalar = online_codelength([3.0], first_block_size=2, num_classes=2, block_sizes=[2])
    assert scalar == out


def _logreg_fit(num_classes):
    """sklearn LogisticRegression padded to all classes; a class-prior code for 1-class prefixes."""

    def fit(x, y):
        classes = np.unique(y)
        if classes.size == 1:
            counts = np.bincount(y, minlength=num_classes) + 1.0  # Laplace prior
            logp = np.log(counts / counts.sum())
            return lambda xb: np.tile(logp, (len(xb), 1))
        model = LogisticRegression(C=1.0, max_iter=200).fit(x, y)

        def predict(xb):
            out = np.full((len(xb), num_classes), np.log(1e-6))
            out[:, model.classes_] = model.predict_log_proba(xb)
            out -= np.logaddexp.reduce(out, axis=1, keepdims=True)
            return out

        return predict

    return fit


def _centroid_fit(num_classes):
    """A cheap numpy probe: Gaussian class centroids (unit variance), prior-smoothed."""

    def fit(x, y):
        counts = np.bincount(y, minlength=num_classes)
        means = np.zeros((num_classes, x.shape[1]))
        np.add.at(means, y, x)
        means /= np.maximum(counts, 1)[:, None]
        log_prior = np.log((counts + 1.0) / (counts.sum() + num_classes))

        def predict(xb):
            logits = log_prior - 0.5 * ((xb[:, None, :] - means) ** 2).sum(-1)
            logits[:, counts == 0] = log_prior[counts == 0]  # unseen class: prior only
            return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)

        return predict

    return fit


def separable(n, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, 8)) * 6
    y = rng.integers(0, k, size=n)
    return centres[y] + rng.normal(size=(n, 8)), y


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_logistic_regression_on_separable_data_compresses():
    x, y = separable(500)
    res = online_code_probe(x, y, 4, _logreg_fit(4))
    assert res.compression > 2.0, res
    assert res.schedule == mdl_block_schedule(500)


def test_equals_literal_loop_and_random_labels_do_not_compress():
    x, y = separable(1000, seed=1)
    res = online_code_probe(x, y, 4, _centroid_fit(4))
    ref = online_codelength_loop(x, y, 4, _centroid_fit(4), MDL_FRACTIONS_PERCENT)
    assert res.codelength_bits == pytest.approx(ref, rel=1e-9)
    assert res.compression > 5
    y_rand = np.random.default_rng(2).integers(0, 4, size=1000)
    assert online_code_probe(x, y_rand, 4, _centroid_fit(4)).compression < 1.05


def test_seed_shuffles_reproducibly():
    rng = np.random.default_rng(1)
    y = np.sort(rng.integers(0, 3, size=300))  # sorted labels: order matters
    x = rng.normal(size=(300, 2)) + y[:, None]
    a = online_code_probe(x, y, 3, _centroid_fit(3), seed=5)
    b = online_code_probe(x, y, 3, _centroid_fit(3), seed=5)
    c = online_code_probe(x, y, 3, _centroid_fit(3))
    assert a.codelength_bits == b.codelength_bits != c.codelength_bits


def test_errors():
    x, y = np.zeros((10, 1)), np.arange(10) % 2
    with pytest.raises(ValueError, match="shape"):
        online_code_probe(x, y, 2, lambda xp, yp: lambda xb: np.zeros((len(xb), 3)))
    with pytest.raises(ValueError, match="schedule"):
        online_code_probe(x, y, 2, uniform_fit(2), schedule=[5, 3, 10])
    with pytest.raises(ValueError, match="class indices"):
        online_code_probe(x, y + 5, 2, uniform_fit(2))
    with pytest.raises(ValueError, match="block_sizes"):
        online_codelength([3.0], 2, 2)


def test_doctests():
    assert doctest.testmod(mdl_mod, raise_on_error=True).attempted > 0
