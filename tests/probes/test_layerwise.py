"""Lightning layer-wise probes: determinism, independence of heads, per-head early stopping."""

from __future__ import annotations

import functools
import warnings

import lightning as L
import numpy as np
import pytest
import torch

from src.probes.base import LayerwiseProbe, head_seed
from src.probes.linear import LinearProbe
from src.probes.mlp import MLPProbe
from src.probes.pipeline import SplitArrays, fit_probe
from src.probes.weighted import WeightedSumProbe

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")

LAYER_IDS = [0, 3, 5, 7]  # cache layers the 4 columns stand for (not their positions)
C = 3


def make_arrays(seed: int = 0, n=(240, 160, 160), d: int = 6) -> dict[str, SplitArrays]:
    """Labels from a random linear rule; layer j sees it with noise growing in j, and a few rows.

    Few training rows and noisy high layers make the heads overfit at different epochs.
    """
    g = np.random.default_rng(seed)
    w = g.normal(size=(d, C))
    out = {}
    for split, m in zip(("train", "val", "test"), n):
        z = g.normal(size=(m, d))
        y = (z @ w + 0.5 * g.normal(size=(m, C))).argmax(-1)
        x = np.stack([z + (0.3 + 1.2 * j) * g.normal(size=(m, d)) + 3.0 * j for j in range(len(LAYER_IDS))], 1)
        utt = np.arange(m) // 4
        out[split] = SplitArrays(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y).long(), utt, None)
    return out


def trainer_factory(max_epochs: int = 6, **kw):
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)  # fmt: skip


def linear_factory(**kw):
    return functools.partial(LinearProbe, optimizer=functools.partial(torch.optim.AdamW, lr=0.05, weight_decay=1e-4), **kw)


def only(arrays: dict[str, SplitArrays], j: int) -> dict[str, SplitArrays]:
    return {s: SplitArrays(a.x[:, [j]], a.y, a.utt, a.data) for s, a in arrays.items()}


def test_docstring_and_head_seed():
    assert LayerwiseProbe.__doc__ and "subclasses define" in LayerwiseProbe.__doc__
    assert head_seed(0, 3) == head_seed(0, 3)
    assert len({head_seed(0, k) for k in range(50)} | {head_seed(1, k) for k in range(50)}) == 100


@pytest.mark.parametrize("cls", [LinearProbe, MLPProbe, WeightedSumProbe])
def test_construction_ignores_global_rng(cls):
    """The same (seed, layer ids) give the same initial weights whatever the global RNG did before."""
    torch.manual_seed(123)
    a = cls(num_layers=4, dim=6, num_outputs=C, layer_ids=LAYER_IDS, seed=0)
    torch.rand(1000)
    b = cls(num_layers=4, dim=6, num_outputs=C, layer_ids=LAYER_IDS, seed=0)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    if cls is not WeightedSumProbe:  # a head's init depends on its layer id and the seed, not on its position
        c = cls(num_layers=2, dim=6, num_outputs=C, layer_ids=[LAYER_IDS[2], 99], seed=0)
        assert torch.equal(dict(c.named_parameters())[next(iter(dict(c.named_parameters())))][0],
                           dict(a.named_parameters())[next(iter(dict(a.named_parameters())))][2])  # fmt: skip
        d = cls(num_layers=4, dim=6, num_outputs=C, layer_ids=LAYER_IDS, seed=1)
        assert not torch.equal(next(d.parameters()), next(a.parameters()))


@pytest.mark.parametrize("factory", [linear_factory(), functools.partial(MLPProbe, hidden=8, dropout=0.2)],
                         ids=["linear", "mlp"])  # fmt: skip
def test_fit_probe_same_numbers_whatever_ran_before(factory):
    """A first run (that consumed RNG building the cache) and a later run agree exactly."""
    arrays = make_arrays()
    torch.manual_seed(123)
    np.random.seed(5)
    torch.randn(10_000)  # e.g. a cache build in between
    p1 = fit_probe(factory, arrays, "classification", C, lambda **kw: trainer_factory(3, **kw), layer_ids=LAYER_IDS)
    p2 = fit_probe(factory, arrays, "classification", C, lambda **kw: trainer_factory(3, **kw), layer_ids=LAYER_IDS)
    for (n, a), (_, b) in zip(p1.named_parameters(), p2.named_parameters()):
        assert torch.equal(a, b), n
    assert torch.equal(p1.predict_all(arrays["test"].x), p2.predict_all(arrays["test"].x))
    assert p1.best_epochs == p2.best_epochs


class _Snapshots(L.Callback):
    """Per-epoch parameters and per-head validation losses, to check what the keep-best callback restored."""

    def __init__(self):
        self.params, self.losses = [], []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
            self.losses.append(pl_module.validation_loss_per_head().clone())


def test_per_head_early_stopping_restores_each_head_at_its_own_best_epoch():
    arrays = make_arrays()
    snap = _Snapshots()

    def tf(callbacks=(), **kw):
        return trainer_factory(10, callbacks=[snap, *callbacks], **kw)

    probe = fit_probe(linear_factory(select_by="loss"), arrays, "classification", C, tf, layer_ids=LAYER_IDS)
    losses = torch.stack(snap.losses)  # (E, H)
    expected = losses.argmin(0).tolist()  # first minimum per head
    assert probe.best_epochs == expected
    assert len(set(expected)) > 1, "the toy should make heads stop at different epochs"
    for k, e in enumerate(expected):
        assert torch.equal(probe.weight[k], snap.params[e]["weight"][k])
        assert torch.equal(probe.bias[k], snap.params[e]["bias"][k])
    # per-head validation loss equals the explicit cross-entropy of the restored head
    with torch.no_grad():
        out = probe.predict_all(arrays["val"].x)  # (H, N, C)
        ce = torch.stack([torch.nn.functional.cross_entropy(o, arrays["val"].y) for o in out]).double()
    best = losses.min(0).values
    torch.testing.assert_close(ce, best, rtol=1e-5, atol=1e-6)
    rows = probe.extra_results()
    assert [(r["layer_index"], r["metric"], r["value"]) for r in rows] == [(k, "best_epoch", e) for k, e in enumerate(expected)]


# Tolerance for "alone == among others": the heads share no parameter, AdamW is elementwise,
# the loss is a sum of per-head mean losses (so each head's gradient is exactly that of its
# own mean loss), standardisation is per layer, init and dropout draw from per-head
# generators, and the shuffling generator depends only on the seed and N. What may differ is
# the float32 reduction order of the batched einsum over L layers vs 1 (BLAS may block a
# batch of 4 differently from a single matrix): ~1 ulp (6e-8 relative) per step. Measured
# here: bitwise equal (max |diff| 0.0). Over the ~30 AdamW steps below such differences stay
# orders of magnitude under 1e-6 on weights of size ~0.1-3 (and Adam's normalised steps do
# not amplify them), so rtol = atol = 1e-6 allows for another BLAS without hiding a real
# coupling (a shared init, RNG stream or best epoch moves weights by >1e-3). Test accuracy is
# compared exactly: argmax of logits that agree to 1e-6 flips only on a near-exact tie.
WEIGHT_TOL = 1e-6


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_layer_alone_equals_layer_among_all(kind):
    """probe.layer=K alone and the all-layers run give the same weights and test accuracy for K."""
    arrays = make_arrays(1)
    factory = linear_factory() if kind == "linear" else functools.partial(
        MLPProbe, hidden=8, dropout=0.2, optimizer=functools.partial(torch.optim.AdamW, lr=0.02))  # fmt: skip
    tf = functools.partial(trainer_factory, 8)
    full = fit_probe(factory, arrays, "classification", C, tf, batch_size=64, layer_ids=LAYER_IDS)
    test = arrays["test"]
    full_acc = (full.predict_all(test.x).argmax(-1) == test.y).double().mean(-1)  # (L,)
    if kind == "linear":
        assert len(set(full.best_epochs)) > 1, "the toy should make heads stop at different epochs"
    for j in (1, 3):
        alone = fit_probe(factory, only(arrays, j), "classification", C, tf, batch_size=64, layer_ids=[LAYER_IDS[j]])
        assert alone.best_epochs == [full.best_epochs[j]]
        for (n, a), (_, b) in zip(alone.named_parameters(), full.named_parameters()):
            torch.testing.assert_close(a[0], b[j], rtol=WEIGHT_TOL, atol=WEIGHT_TOL, msg=f"{n} layer {LAYER_IDS[j]}")
        acc = (alone.predict_all(test.x[:, [j]]).argmax(-1) == test.y).double().mean(-1)  # (1,)
        assert float(acc[0]) == float(full_acc[j])


def test_weighted_probe_keeps_whole_state_at_best_epoch():
    """One head: early stopping on its one loss; one best_epoch row (layer -1) and layer weights per layer."""
    arrays = make_arrays()
    snap = _Snapshots()
    factory = functools.partial(WeightedSumProbe, optimizer=functools.partial(torch.optim.AdamW, lr=0.05))
    probe = fit_probe(factory, arrays, "classification", C,
                      lambda callbacks=(), **kw: trainer_factory(6, callbacks=[snap, *callbacks], **kw),
                      layer_ids=LAYER_IDS)  # fmt: skip
    e = int(torch.stack(snap.losses)[:, 0].argmin())
    assert probe.best_epochs == [e]
    for n, p in probe.named_parameters():
        assert torch.equal(p, snap.params[e][n]), n
    rows = probe.extra_results()
    assert [r["layer_index"] for r in rows if r["metric"] == "layer_weight"] == [0, 1, 2, 3]
    assert [(r["layer"], r["value"]) for r in rows if r["metric"] == "best_epoch"] == [(-1, e)]


def test_regression_heads_and_one_dim_targets():
    """Regression: per-item MSE per head; a (N,) target works like (N, 1)."""
    arrays = make_arrays()
    reg = {s: SplitArrays(a.x, a.x[:, 0, :2].sum(-1).float(), a.utt, a.data) for s, a in arrays.items()}
    probe = fit_probe(linear_factory(), reg, "regression", 1, functools.partial(trainer_factory, 4), layer_ids=LAYER_IDS)
    out = probe.predict_all(reg["val"].x)  # (H, N, 1)
    mse = ((out[..., 0] - reg["val"].y) ** 2).mean(-1).double()
    assert mse[0] < mse[-1]  # layer 0 holds the target with the least noise


def test_keep_best_callback_rules():
    """Sanity-check validation is ignored, ties keep the earlier epoch, a NaN loss is never best."""
    from types import SimpleNamespace

    from src.probes.pipeline import keep_best_callback

    probe = LinearProbe(num_layers=3, dim=2, num_outputs=2, layer_ids=[1, 2, 3], select_by="loss")
    nan = float("nan")
    losses = iter([[1.0, 2.0, nan], [0.5, 2.0, nan], [0.7, 3.0, nan]])  # epochs 0, 1, 2 (not read in the sanity check)
    probe.validation_loss_per_head = lambda: torch.tensor(next(losses), dtype=torch.float64)
    cb = keep_best_callback()
    snaps = []
    for epoch, sanity in [(0, True), (0, False), (1, False), (2, False)]:
        with torch.no_grad():
            probe.weight.add_(1.0)  # what an epoch of training would change
        snaps.append(probe.weight.detach().clone())
        cb.on_validation_epoch_end(SimpleNamespace(sanity_checking=sanity, current_epoch=epoch, callback_metrics={}), probe)
    cb.on_fit_end(None, probe)
    assert probe.best_epochs == [1, 0, -1]
    assert torch.equal(probe.weight[0], snaps[2][0])  # epoch 1 (snapshot 0 is the sanity check)
    assert torch.equal(probe.weight[1], snaps[1][1])  # tie at epoch 1 keeps epoch 0
    assert torch.equal(probe.weight[2], snaps[3][2])  # never finite: the last parameters stay
    assert [r["value"] for r in probe.extra_results()] == [1, 0, -1]
