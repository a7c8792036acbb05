"""Dictionary recovery on a synthetic cache written from a known sparse dictionary (tests/sae/conftest.py).

The truth is the generating dictionary (48 unit atoms in 64 dims, 3 per frame, noise 0.02): for each
true atom the best cosine with a learned decoder row, averaged (mean max cosine similarity, MMCS).
Controls: the same SAE scored against an unrelated random dictionary, and the untrained SAE against
the true one, stay far below the threshold (so the measure cannot pass by construction).
"""

from __future__ import annotations

import numpy as np
import pytest

from src.sae.synthetic import mean_max_cosine, random_dictionary
from src.sae.train import SAETrainConfig, evaluate, fit_saes
from tests.sae.conftest import stream_of, trainer_factory

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(
    d_sae=96, batch_size=256, epochs=6, lr=3e-3, warmup_steps=20, standardize=False, dead_after_frames=5000
)


def fit(path, arch, **kw):
    stream = stream_of(path, layers=[0])
    module = fit_saes(stream, SAETrainConfig(architecture=arch, **{**BASE, **kw}), trainer_factory())
    return stream, module.export()[0]


@pytest.fixture(scope="module")
def topk(dict_cache):
    return fit(dict_cache[0], "topk", k=3, epochs=3)


def test_topk_at_true_k_recovers_the_dictionary(dict_cache, topk):
    stream, sae = topk
    truth = dict_cache[1][0]
    mmcs = mean_max_cosine(sae.W_dec.detach().numpy(), truth)
    assert mmcs >= 0.9, mmcs
    ev = evaluate([sae], stream)[0]
    assert ev["l0"] == pytest.approx(3.0) and ev["fvu"] < 0.15, ev


def test_shuffled_dictionary_control_does_not_match(dict_cache, topk):
    _, sae = topk
    learned = sae.W_dec.detach().numpy()
    other = random_dictionary(48, 64, seed=123)  # a dictionary the data were not built from
    assert mean_max_cosine(learned, other) < 0.6
    perm = np.random.default_rng(0).permutation(64)
    shuffled = dict_cache[1][0][:, perm]  # the true atoms with their coordinates shuffled
    assert mean_max_cosine(learned, shuffled) < 0.6
    from src.sae.model import SAE

    untrained = SAE(64, 96, "topk", k=3, seed=0).W_dec.detach().numpy()
    assert mean_max_cosine(untrained, dict_cache[1][0]) < 0.6


def test_relu_l1_at_a_tuned_penalty_recovers_the_dictionary(dict_cache):
    stream, sae = fit(dict_cache[0], "relu", l1_coefficient=1.0)
    mmcs = mean_max_cosine(sae.W_dec.detach().numpy(), dict_cache[1][0])
    assert mmcs >= 0.9, mmcs
    ev = evaluate([sae], stream)[0]
    assert 2.0 < ev["l0"] < 8.0, ev  # sparse: near the true 3 active atoms


def test_relu_with_too_small_a_penalty_is_dense(dict_cache):
    """The penalty matters: at 0.05 the codes are dense (the recovery above is not free)."""
    stream, sae = fit(dict_cache[0], "relu", l1_coefficient=0.05, epochs=2)
    assert evaluate([sae], stream)[0]["l0"] > 15
