"""src/functional/cka.py against the literal Gram-matrix HSIC reference."""

import doctest
import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

import src.functional.cka as cka_mod
from src.functional.cka import MinibatchCKA, cka_matrix, hsic, linear_cka, minibatch_cka, rbf_cka, rbf_gram
from tests.reference import cka as ref

REL = 1e-9


def make_pair(n=60, d1=7, d2=5, seed=0):
    """x off-centre and anisotropic; y a noisy linear map of x (CKA well inside (0, 1))."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1)) * rng.uniform(0.3, 3.0, size=d1) + 5.0
    y = x @ rng.normal(size=(d1, d2)) + 2.0 * rng.normal(size=(n, d2)) - 3.0
    return x, y


def make_layers(n=80, dims=(6, 9, 4, 7), seed=1):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5))
    layers = []
    for i, d in enumerate(dims):
        z = z + 0.7 * rng.normal(size=z.shape)
        layers.append(z @ rng.normal(size=(5, d)) + (0.5 + i) * rng.normal(size=(n, d)) + rng.normal(size=d))
    return layers


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("as_torch", [False, True])
def test_linear_cka_matches_reference(debiased, as_torch):
    x, y = make_pair()
    expected = ref.linear_cka(x, y, debiased)
    args = (torch.from_numpy(x), torch.from_numpy(y)) if as_torch else (x, y)
    got = linear_cka(*args, debiased=debiased)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=REL)
    assert 0.2 < expected < 0.95  # a non-trivial value
    # The reference's unbiased HSIC uses the uncentred Gram matrices (x is off-centre): the
    # feature-space estimator, which centres first, agrees because HSIC_1 is translation invariant.


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_rbf_cka_matches_reference(debiased, threshold):
    x, y = make_pair(n=40)
    expected = ref.rbf_cka(x, y, threshold, debiased)
    assert rbf_cka(x, y, threshold, debiased).item() == pytest.approx(expected, rel=REL)


@pytest.mark.parametrize("n", [30, 31])  # even and odd number of distances for the median
def test_rbf_gram_matches_reference(n):
    x, _ = make_pair(n=n)
    np.testing.assert_allclose(rbf_gram(x, 0.7).numpy(), ref.rbf_gram(x, 0.7), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("debiased", [False, True])
def test_hsic_of_grams_matches_reference(debiased):
    x, y = make_pair(n=25)
    k, l = ref.linear_gram(x), ref.linear_gram(y)
    f = ref.hsic_unbiased if debiased else ref.hsic_biased
    got = hsic(torch.from_numpy(k), torch.from_numpy(l), debiased)
    assert got.item() == pytest.approx(f(k, l), rel=REL)


def test_doctest_linear_cka_of_scaled_copy_is_one():
    result = doctest.testmod(cka_mod, verbose=False)
    assert result.attempted >= 2 and result.failed == 0
    x, _ = make_pair()
    assert linear_cka(x, 2 * x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 2 * x, debiased=True).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["linear", "linear_debiased", "rbf", "rbf_debiased"])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(kind):
    x, y = make_pair(n=50)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(x.shape[1], x.shape[1])))
    f = {
        "linear": lambda a, b: linear_cka(a, b),
        "linear_debiased": lambda a, b: linear_cka(a, b, debiased=True),
        "rbf": lambda a, b: rbf_cka(a, b),
        "rbf_debiased": lambda a, b: rbf_cka(a, b, debiased=True),
    }[kind]
    base = f(x, y).item()
    assert f(x @ q, y).item() == pytest.approx(base, rel=1e-10)
    assert f(3.7 * x, y).item() == pytest.approx(base, rel=1e-10)
    assert f(x + 11.0, y).item() == pytest.approx(base, rel=1e-10)  # translation too


def test_not_invariant_to_general_invertible_linear_map():
    x, y = make_pair(n=50)
    a = np.diag([10.0, 0.1, 1.0, 5.0, 0.5, 2.0, 0.2]) @ np.random.default_rng(4).normal(size=(7, 7))
    assert abs(np.linalg.det(a)) > 1e-3  # invertible
    base = linear_cka(x, y).item()
    assert abs(linear_cka(x @ a, y).item() - base) > 0.05


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_equals_pairwise_linear_cka(debiased):
    layers = make_layers()
    expected = np.array([[linear_cka(a, b, debiased).item() for b in layers] for a in layers])
    exact = cka_matrix(layers, debiased=debiased, chunk_size=13, compute_dtype=torch.float64)
    assert exact.shape == (4, 4) and exact.dtype == torch.float64
    np.testing.assert_allclose(exact.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(exact.numpy(), exact.numpy().T, atol=1e-15)
    fast = cka_matrix(layers, debiased=debiased)  # float32 products, float64 sums
    np.testing.assert_allclose(fast.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_two_sets_and_several_passes(debiased):
    layers = make_layers()
    xs, ys = layers[:2], layers[1:]
    expected = np.array([[linear_cka(a, b, debiased).item() for b in ys] for a in xs])
    got = cka_matrix(
        xs, ys, debiased=debiased, chunk_size=7, compute_dtype=torch.float64, max_accumulator_bytes=1
    )
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_cka_matrix_reads_float16_memmaps(tmp_path):
    layers = make_layers(n=300)
    maps = []
    for i, a in enumerate(layers):
        m = np.lib.format.open_memmap(tmp_path / f"l{i}.npy", mode="w+", dtype=np.float16, shape=a.shape)
        m[:] = a
        m.flush()
        maps.append(np.load(tmp_path / f"l{i}.npy", mmap_mode="r"))
    halves = [np.asarray(m, dtype=np.float64) for m in maps]  # what the memmaps hold
    expected = np.array([[linear_cka(a, b).item() for b in halves] for a in halves])
    got = cka_matrix(maps, chunk_size=64, compute_dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(cka_matrix(maps, chunk_size=64).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("two_sets", [False, True])
def test_minibatch_cka_over_all_subsets_equals_full_debiased(two_sets):
    """The mean of HSIC_1 over all b-subsets is the full-data HSIC_1 (a U-statistic), exactly."""
    layers = make_layers(n=8, dims=(3, 4, 2))
    xs, ys = (layers[:2], layers[1:]) if two_sets else (layers, None)
    acc = MinibatchCKA()
    for subset in itertools.combinations(range(8), 5):
        rows = list(subset)
        acc.update([a[rows] for a in xs], None if ys is None else [b[rows] for b in ys])
    assert acc.num_batches == 56
    expected = cka_matrix(xs, ys, debiased=True, compute_dtype=torch.float64)
    np.testing.assert_allclose(acc.compute().numpy(), expected.numpy(), rtol=1e-9)


def test_minibatch_cka_converges_to_full_value_with_more_batches():
    layers = make_layers(n=600, dims=(8, 6, 10))
    full = cka_matrix(layers, debiased=True, compute_dtype=torch.float64).numpy()
    rng = np.random.default_rng(0)
    acc = MinibatchCKA()
    errors = {}
    for epoch in range(1, 41):
        perm = rng.permutation(600)
        for s in range(0, 600, 50):
            rows = perm[s : s + 50]
            acc.update([a[rows] for a in layers])
        if epoch in (1, 40):
            errors[epoch] = np.abs(acc.compute().numpy() - full).max()
    assert errors[40] < 0.01
    assert errors[40] < errors[1]


def test_minibatch_cka_function_and_biased_gap():
    layers = make_layers(n=64, dims=(5, 5))
    batches = [[a[s : s + 16] for a in layers] for s in range(0, 64, 16)]
    acc = MinibatchCKA()
    for b in batches:
        acc.update(b)
    np.testing.assert_allclose(minibatch_cka(batches).numpy(), acc.compute().numpy())
    pairs = [(b[:1], b[1:]) for b in batches]
    np.testing.assert_allclose(minibatch_cka(pairs).numpy(), acc.compute().numpy()[:1, 1:])


def test_errors_name_the_problem():
    x, y = make_pair(n=10)
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(x, y[:9])
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(x[:1], y[:1])
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(x[:3], y[:3], debiased=True)
    with pytest.raises(ValueError, match="constant features"):
        linear_cka(np.ones((10, 3)) * 0.1, y)
    with pytest.raises(ValueError, match="constant features"):
        rbf_cka(x, np.ones((10, 2)))
    with pytest.raises(ValueError, match="max_items"):
        rbf_cka(x, y, max_items=5)
    with pytest.raises(ValueError, match="constant features"):
        cka_matrix([x, np.full((10, 2), 3.3)])
    with pytest.raises(ValueError, match="same number of rows"):
        cka_matrix([x, y[:9]])
    acc = MinibatchCKA()
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()
    with pytest.raises(ValueError, match="at least 4 rows"):
        acc.update([x[:3]])
    acc.update([x[:5], y[:5]])
    with pytest.raises(ValueError, match="number of layers changed"):
        acc.update([x[:5]])


def test_functional_modules_import_no_heavy_frameworks():
    code = (
        "import sys\n"
        "import src.functional.cka, src.functional.rsa, src.functional.cca, src.functional.abx, "
        "src.functional.mutual_info\n"
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'sklearn', 'torchmetrics') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=cka_mod.__file__.rsplit("/src/", 1)[0])


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_inputs_raise_not_constant_features(bad):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3000, 5)), rng.normal(size=(3000, 4))
    xb = x.copy()
    xb[2500, 3] = bad  # beyond the first chunk of cka_matrix below
    for fn in (lambda: linear_cka(xb, y), lambda: linear_cka(y, xb, debiased=True), lambda: rbf_cka(xb[2400:2600], y[:200])):
        with pytest.raises(ValueError, match="non-finite") as e:
            fn()
        assert "constant" not in str(e.value)
    with pytest.raises(ValueError, match=r"layers_y\[1\] has non-finite"):
        cka_matrix([x], [y, xb], chunk_size=1024)
    with pytest.raises(ValueError, match=r"layers_x\[0\] has non-finite"):
        cka_matrix([xb, x], chunk_size=1024, debiased=True)
    with pytest.raises(ValueError, match=r"xs\[1\] has non-finite"):
        MinibatchCKA().update([x[2400:2600], xb[2400:2600]])
    # float16 overflow: a finite float32 value above 65504 becomes inf in a float16 cache
    x16 = x.astype(np.float16)
    x16[10, 0] = np.float16(np.float32(7e4))
    assert np.isinf(x16[10, 0])
    with pytest.raises(ValueError, match="non-finite"):
        cka_matrix([x16], [y])
    assert float(cka_matrix([x.astype(np.float16)], [y])[0, 0]) == pytest.approx(
        float(linear_cka(x.astype(np.float16), y)), abs=1e-6
    )  # the check changes nothing for finite data
