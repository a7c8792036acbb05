"""No run reports the 'accuracy' of a layer whose features hold inf/NaN (float16 overflow)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from src.functional.ridge import RidgeStats
from src.probes.base import check_finite
from src.probes.linear import LinearProbe
from src.probes.pipeline import SplitArrays, fit_probe, standardization
from src.probes.ridge import RidgeProbe


def feats(n=50, layers=3, d=4, seed=0, dtype=torch.float16):
    return torch.randn(n, layers, d, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_standardization_names_the_layer_and_counts(bad):
    x = feats()
    x[3, 1, 2] = bad
    x[7, 1, 0] = bad
    with pytest.raises(ValueError, match=r"layer 5: 2 of 200 values") as e:
        standardization(x, layer_ids=[2, 5, 9])
    assert "layer 2" not in str(e.value) and "layer 9" not in str(e.value) and "float16" in str(e.value)
    with pytest.raises(ValueError, match=r"layer position 1: 2 of 200"):
        standardization(x)


def test_float16_overflow_inf_is_caught():
    x = feats()
    x[0, 2, 0] = torch.tensor(70000.0).to(torch.float16)  # beyond float16's max 65504 -> inf
    assert torch.isinf(x[0, 2, 0])
    with pytest.raises(ValueError, match=r"layer 9: 1 of 200"):
        standardization(x, chunk=16, layer_ids=[2, 5, 9])


def test_zero_variance_feature_standardises_to_zero_not_nan():
    x = feats(dtype=torch.float32)
    x[:, 1, 3] = 300.25  # constant feature (also exactly representable in float16)
    mu, sd = standardization(x.half())
    assert float(sd[1, 3]) == 0.0 and float(mu[1, 3]) == 300.25
    probe = LinearProbe(num_layers=3, dim=4, num_outputs=2)
    probe.set_standardization(mu, sd)
    z = probe.standardize(x.half())
    assert torch.isfinite(z).all() and torch.equal(z[:, 1, 3], torch.zeros(50))


def test_check_finite_and_fit_probe_refuse_any_split():
    x = feats()
    check_finite(x, [0, 1, 2])  # clean: no error
    y = torch.randint(0, 2, (50,))
    utt = np.arange(50)
    bad = x.clone()
    bad[4, 0, 1] = float("nan")
    arrays = {"train": SplitArrays(x, y, utt, None), "val": SplitArrays(x, y, utt, None), "test": SplitArrays(bad, y, utt, None)}
    for factory in (functools.partial(LinearProbe), functools.partial(RidgeProbe, alphas=[1.0])):
        with pytest.raises(ValueError, match=r"test features: layer 4: 1 of 200"):
            fit_probe(factory, arrays, "classification", 2, None, layer_ids=[4, 6, 8])


def test_ridge_stats_update_names_the_layer():
    x = feats(dtype=torch.float32)
    y = torch.randn(50, 2)
    st = RidgeStats()
    xb = x[:, 1].clone()
    xb[10, 0] = float("inf")
    with pytest.raises(ValueError, match=r"layer 7: 1 of 200 values"):
        st.update(xb, y, layer_ids=7)
    with pytest.raises(ValueError, match=r"x: 1 of 200"):
        st.update(xb, y)
    xl = x.transpose(0, 1).clone()  # (L, n, d) batched layers
    xl[2, 5, 1] = float("nan")
    xl[2, 6, 1] = float("nan")
    with pytest.raises(ValueError, match=r"layer 12: 2 of 200") as e:
        st.update(xl, y, layer_ids=[3, 8, 12])
    assert "layer 3" not in str(e.value)
    yb = y.clone()
    yb[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"targets y: 1 of 100"):
        st.update(x[:, 0], yb)
    # masked-out rows are not used, so they may hold anything
    mask = torch.ones(50, dtype=torch.bool)
    mask[10] = False
    st.update(xb, y, mask=mask, layer_ids=7)
    assert st.n == 49 and torch.isfinite(st.xtx).all()  # the refused updates added nothing
