"""Streaming probes: features read from the cache in chunks give the in-memory path's numbers.

A synthetic float16 cache (tests/probes/synthetic_cache.py) with a learnable label: class =
argmax of a fixed linear map of layer 1's frames. References are literal: numpy indexing of
the layer files, a per-segment mean loop, and the in-memory pipeline (kept as it was).
"""

from __future__ import annotations

import functools
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from src.activations import Activations
from src.datamodules.tasks import ProbeData
from src.probes.data import CacheFeatures, GlobalBatchSampler, ProbeDataset, collate_batch
from src.probes.linear import LinearProbe
from src.probes.pipeline import (
    baseline_rows,
    control_rows,
    drop_unseen_labels,
    evaluate,
    fit_probe,
    load_split_arrays,
    mdl_rows,
    probe_dataloaders,
    standardization,
)
from src.probes.ridge import RidgeProbe
from tests.probes.synthetic_cache import write_cache

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")

U, T, D, C = 60, 40, 8, 4  # utterances, frames each, width, classes
LAYERS = [1, 3]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    g = np.random.default_rng(0)
    base = g.normal(size=(U * T, D))
    layers = [(base * (k + 1) + 0.5 * k * g.normal(size=base.shape) + k).astype(np.float16) for k in range(4)]
    path = write_cache(tmp_path_factory.mktemp("cache") / "c", layers, np.full(U, T), [f"s{u % 3}" for u in range(U)])
    return Activations(path)


def frame_data(acts) -> ProbeData:
    """Every second frame; label from a fixed linear map of layer 1 (learnable), types from (label, utt % 5)."""
    rows = np.arange(0, U * T, 2)
    utt = rows // T
    w = np.random.default_rng(1).normal(size=(D, C))
    y = (np.asarray(acts.layer(1)[rows], dtype=np.float64) @ w).argmax(-1)
    types = np.array([f"{a}|{b}" for a, b in zip(y, utt % 5)], dtype=object)
    return ProbeData("phones", "classification", y.astype(np.int64), utt, ["phones"], [str(c) for c in range(C)],
                     rows=rows, types=types)  # fmt: skip


def segment_data(acts) -> ProbeData:
    """Segments of 1-7 frames inside each utterance, with a regression target of 2 values."""
    g = np.random.default_rng(2)
    lo, hi, utt = [], [], []
    for u in range(U):
        t = 0
        while t < T - 1:
            n = int(g.integers(1, 8))
            lo.append(u * T + t)
            hi.append(u * T + min(T, t + n))
            utt.append(u)
            t += n + int(g.integers(0, 3))
    lo, hi, utt = np.array(lo), np.array(hi), np.array(utt)
    x = np.stack([np.asarray(acts.layer(1)[a:b], dtype=np.float64).mean(0) for a, b in zip(lo, hi)])
    y = np.stack([x[:, 0] + 0.3 * x[:, 1], x[:, 2] - x[:, 3]], 1) + 0.2 * g.normal(size=(len(lo), 2))
    return ProbeData("ema", "regression", y.astype(np.float32), utt, ["a", "b"], lo=lo, hi=hi)


SPLITS = {"train": np.arange(0, 36), "val": np.arange(36, 46), "test": np.arange(46, 60)}


def arrays_both(acts, data, groups=None):
    mem = load_split_arrays(acts, data, SPLITS, LAYERS, unit_of_utterance=groups, stream=False)
    st = load_split_arrays(acts, data, SPLITS, LAYERS, unit_of_utterance=groups, stream=True, chunk_bytes=3000)
    return mem, st


# ------------------------------------------------------------------ reading
def test_chunks_and_take_equal_the_layer_rows(cache):
    g = np.random.default_rng(3)
    rows = g.choice(U * T, 700, replace=False)  # unsorted, with gaps of every size
    src = CacheFeatures(cache, [3, 0], rows=rows, chunk_bytes=2000, max_gap=2)
    ref = np.stack([np.asarray(cache.layer(3))[rows], np.asarray(cache.layer(0))[rows]], 1).astype(np.float32)
    pieces = list(src.chunks())
    assert len(pieces) > 10 and pieces[0][0] == 0 and pieces[-1][1] == 700
    assert all(x.dtype == torch.float32 and x.shape[1:] == (2, D) for _, _, x in pieces)
    np.testing.assert_array_equal(torch.cat([x for _, _, x in pieces]).numpy(), ref)
    idx = g.integers(0, 700, 300)  # repeats, any order
    np.testing.assert_array_equal(src.take(idx).numpy(), ref[idx])
    np.testing.assert_array_equal(src.take(idx, layers=[1])[:, 0].numpy(), ref[idx, 1])
    keep = rows % 3 == 0
    np.testing.assert_array_equal(src.subset(keep).materialize().numpy(), ref[keep])
    assert src.shape == (700, 2, D) and len(src) == 700


def test_pooled_segments_equal_a_literal_mean_loop(cache):
    data = segment_data(cache)
    src = CacheFeatures.from_data(cache, data, [1, 2], chunk_bytes=500)
    got = torch.cat([x for _, _, x in src.chunks()]).numpy()  # (N, 2, D)
    lay = np.asarray(cache.layer(2))
    ref = np.empty((len(data.lo), D), dtype=np.float32)
    for i, (a, b) in enumerate(zip(data.lo, data.hi)):
        ref[i] = np.float16(sum(lay[r].astype(np.float64) for r in range(a, b)) / (b - a))  # mean, rounded to the cache dtype
    np.testing.assert_allclose(got[:, 1], ref, rtol=0, atol=0)  # float64 sums of <= 7 float16 values: same rounding
    np.testing.assert_array_equal(got[:, 0], data.features(cache.layer(1), np.float16).astype(np.float32))
    idx = np.array([5, 0, 5, len(data.lo) - 1])
    np.testing.assert_array_equal(src.take(idx).numpy(), got[idx])


def test_load_split_arrays_stream_modes_give_the_same_features(cache):
    data = frame_data(cache)
    mem, st = arrays_both(cache, data)
    for s in SPLITS:
        assert isinstance(st[s].x, CacheFeatures) and isinstance(mem[s].x, torch.Tensor)
        assert mem[s].x.dtype == torch.float16
        np.testing.assert_array_equal(st[s].x.materialize().numpy(), mem[s].x.float().numpy())
        assert torch.equal(st[s].y, mem[s].y)
    need = sum(len(a.y) for a in mem.values()) * len(LAYERS) * D * 4  # float32 bytes of all splits
    auto_small = load_split_arrays(cache, data, SPLITS, LAYERS, stream="auto", memory_budget_gb=need / 1e9 * 1.01)
    auto_big = load_split_arrays(cache, data, SPLITS, LAYERS, stream="auto", memory_budget_gb=need / 1e9 * 0.99)
    assert isinstance(auto_small["train"].x, torch.Tensor) and isinstance(auto_big["train"].x, CacheFeatures)
    with pytest.raises(ValueError, match="stream must be"):
        load_split_arrays(cache, data, SPLITS, LAYERS, stream="sometimes")
    mu_m, sd_m = standardization(mem["train"].x)
    mu_s, sd_s = standardization(st["train"].x, chunk=100)
    torch.testing.assert_close(mu_s, mu_m, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sd_s, sd_m, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ ridge and evaluation
def test_ridge_streamed_equals_in_memory_classification(cache):
    data = frame_data(cache)
    groups = np.array([f"s{u % 3}|{u // 3}" for u in range(U)])
    mem, st = arrays_both(cache, data, groups)
    fac = functools.partial(RidgeProbe, alphas=[0.1, 10.0, 1000.0], chunk=97)  # many chunks
    pm = fit_probe(fac, mem, "classification", C, None, layer_ids=LAYERS)
    ps = fit_probe(fac, st, "classification", C, None, layer_ids=LAYERS)
    for (wm, bm), (ws, bs) in zip(pm.weights, ps.weights):
        assert torch.equal(wm, ws) and torch.equal(bm, bs)  # same float operations in the same order
    assert [float(a) for a in pm.best_alpha] == [float(a) for a in ps.best_alpha]
    rm = evaluate(pm, mem["test"], "classification", LAYERS, ["phones"], "test", n_boot=200, unit="text")
    rs = evaluate(ps, st["test"], "classification", LAYERS, ["phones"], "test", n_boot=200, unit="text")
    assert rm == rs  # identical predictions and integer counts: identical values and intervals
    assert {r["metric"] for r in rm} == {"accuracy", "macro_f1"}
    acc = [r["value"] for r in rm if r["metric"] == "accuracy"]
    assert acc[0] > 0.8  # layer 1 carries the rule (a ridge classifier of it): the test is not vacuous
    assert baseline_rows(mem, data, n_boot=50) == baseline_rows(st, data, n_boot=50)


def test_ridge_and_evaluate_streamed_regression_on_pooled_segments(cache):
    data = segment_data(cache)
    mem, st = arrays_both(cache, data)
    fac = functools.partial(RidgeProbe, alphas=[0.01, 1.0, 100.0], chunk=50)
    pm = fit_probe(fac, mem, "regression", 2, None, layer_ids=LAYERS)
    ps = fit_probe(fac, st, "regression", 2, None, layer_ids=LAYERS)
    for (wm, bm), (ws, bs) in zip(pm.weights, ps.weights):
        assert torch.equal(wm, ws) and torch.equal(bm, bs)
    rm = evaluate(pm, mem["test"], "regression", LAYERS, ["a", "b"], "test", n_boot=300)
    rs = evaluate(ps, st["test"], "regression", LAYERS, ["a", "b"], "test", n_boot=300)
    assert len(rm) == len(rs) == 2 * 6
    for a, b in zip(rm, rs):
        assert (a["layer"], a["target"], a["metric"], a["n_units"], a["unit"]) == \
            (b["layer"], b["target"], b["metric"], b["n_units"], b["unit"])  # fmt: skip
        # values: torchmetrics float32 (in memory) vs float64 sums (streamed); bounds: float64 sums in another order
        assert b["value"] == pytest.approx(a["value"], abs=2e-6)
        assert b["ci_low"] == pytest.approx(a["ci_low"], abs=1e-9)
        assert b["ci_high"] == pytest.approx(a["ci_high"], abs=1e-9)
    assert max(r["value"] for r in rm if r["metric"] == "pearson_r") > 0.8


def test_controls_and_mdl_streamed_equal_in_memory(cache):
    data = frame_data(cache)
    mem, st = arrays_both(cache, data)
    fac = functools.partial(RidgeProbe, alphas=[1.0, 100.0])
    out = []
    for arrays in (mem, st):
        task_probe = fit_probe(fac, arrays, "classification", C, None, layer_ids=LAYERS)
        counts = {}
        rows = control_rows(fac, arrays, data, LAYERS, None, task_probe, counts, n_boot=100)
        out.append((rows, counts, mdl_rows(arrays, data, LAYERS, max_items=600)))
    assert out[0] == out[1]
    assert {r["metric"] for r in out[0][0]} == {"control_accuracy", "accuracy_control_types_seen", "selectivity"}
    assert len(out[0][2]) == 2 * len(LAYERS)


def test_drop_unseen_labels_streamed(cache):
    data = frame_data(cache)
    mem, st = arrays_both(cache, data)
    for arrays in (mem, st):
        keep = arrays["train"].y != 2
        arrays["train"] = arrays["train"].subset(keep.numpy())
    cm, cs = {}, {}
    drop_unseen_labels(mem, cm)
    drop_unseen_labels(st, cs)
    test_items = frame_data(cache).subset(np.isin(frame_data(cache).utt, SPLITS["test"]))
    assert cm == cs and cm["test_items_unseen_label"] == int((test_items.y == 2).sum()) > 0
    assert int((st["test"].y == 2).sum()) == 0 and len(st["test"].y) == len(st["test"].x)
    np.testing.assert_array_equal(st["test"].x.materialize().numpy(), mem["test"].x.float().numpy())


# ------------------------------------------------------------------ Lightning
def trainer_factory(**kw):
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=4, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)  # fmt: skip


def test_linear_probe_streamed_reaches_the_in_memory_accuracy(cache):
    data = frame_data(cache)
    mem, st = arrays_both(cache, data)
    fac = functools.partial(LinearProbe, optimizer=functools.partial(torch.optim.AdamW, lr=0.05))
    accs = []
    for arrays in (mem, st):
        probe = fit_probe(fac, arrays, "classification", C, trainer_factory, batch_size=64, layer_ids=LAYERS)
        rows = evaluate(probe, arrays["test"], "classification", LAYERS, ["phones"], "test", n_boot=10)
        accs.append([r["value"] for r in rows if r["metric"] == "accuracy"])
    # same model, same epochs, another (block-shuffled) item order: accuracies within 0.05 of each other
    assert accs[0][0] > 0.85 and accs[1][0] > 0.85
    assert abs(accs[0][0] - accs[1][0]) < 0.05 and abs(accs[0][1] - accs[1][1]) < 0.05


def test_in_memory_batches_are_the_dataloader_shuffle_order():
    x, y = torch.randn(1003, 2, 3), torch.arange(1003)
    g = torch.Generator().manual_seed(7)
    ref_dl = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=g)
    ref = [[b[1].tolist() for b in ref_dl] for _ in range(3)]  # three epochs
    arrays = {s: type("A", (), {"x": x, "y": y, "streaming": False})() for s in ("train", "val")}
    train_dl, val_dl = probe_dataloaders(arrays, batch_size=64, seed=7)
    got = [[b[1].tolist() for b in train_dl] for _ in range(3)]
    assert got == ref
    xb, yb = next(iter(train_dl))
    assert torch.equal(xb, x[yb])
    assert [b[1].tolist() for b in val_dl][0] == list(range(1003))  # one validation batch of <= 4096, in order


@pytest.mark.parametrize("block", [None, 50])
def test_rank_slices_reproduce_the_global_batches(block):
    W, n, bs = 3, 1000, 30
    one = GlobalBatchSampler(n, bs, shuffle=True, generator=torch.Generator().manual_seed(0), block=block, rank=0,
                             world=1)  # fmt: skip
    glob = [list(one) for _ in range(2)]  # two epochs
    ranks = []
    for r in range(W):
        s = GlobalBatchSampler(n, bs, shuffle=True, generator=torch.Generator().manual_seed(0), block=block, rank=r,
                               world=W)  # fmt: skip
        ranks.append([list(s) for _ in range(2)])
        assert len(s) == len(glob[0])
    for e in range(2):
        assert sorted(sum(glob[e], [])) == list(range(n))  # every item once per epoch
        for k, batch in enumerate(glob[e]):
            assert [ranks[r][e][k] for r in range(W)] == [batch[r::W] for r in range(W)]
    assert glob[0] != glob[1]
    if block:  # block shuffle: a batch mixes at most 2 * window blocks, and the order is not the identity
        assert max(len({i // block for i in b}) for b in glob[0]) <= 8  # 2 * window (a batch across a window edge)
        assert sum(glob[0], []) != list(range(n))


def test_ddp_pad_gives_every_rank_a_last_batch():
    s = [GlobalBatchSampler(65, 32, rank=r, world=2, pad=True) for r in range(2)]
    got = [list(x) for x in s]
    assert got[0][-1] == [64] and got[1][-1] == [64]  # the single last item: rank 1 repeats it (training only)
    assert len(s[0]) == len(s[1]) == 3
    v = GlobalBatchSampler(65, 32, rank=1, world=2)
    assert len(list(v)) == len(v) == 2  # validation: no item counted twice
    with pytest.raises(ValueError, match="batch_size 2 is smaller"):
        list(GlobalBatchSampler(10, 2, rank=0, world=3))


def test_dataset_block_cache_serves_block_shuffled_batches(cache):
    data = frame_data(cache)
    src = CacheFeatures.from_data(cache, data, LAYERS)
    y = torch.from_numpy(data.y)
    ds = ProbeDataset(src, y, block=100, keep_blocks=4)
    sampler = GlobalBatchSampler(len(y), 32, shuffle=True, generator=torch.Generator().manual_seed(0), block=100,
                                 window=2)  # fmt: skip
    ref = src.materialize()
    calls = []
    orig = src.take
    src.take = lambda idx, layers=None: (calls.append(len(idx)), orig(idx, layers))[1]
    for b in DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batch):
        pass
    for idx in sampler:
        xb, yb = ds.__getitems__(idx)
        assert torch.equal(xb, ref[idx]) and torch.equal(yb, y[idx])
    blocks = -(-len(y) // 100)
    assert len(calls) <= 2 * blocks + 2  # each block read about once per epoch (two epochs here)


def test_in_memory_pooled_segments_equal_alignment_pool(cache):
    """stream=false pools segments chunk by chunk too: the values of ``alignment.pool`` in the cache dtype."""
    data = segment_data(cache)
    mem = load_split_arrays(cache, data, SPLITS, LAYERS, stream=False)
    for s, utts in SPLITS.items():
        d = data.subset(np.isin(data.utt, utts))
        assert mem[s].x.dtype == torch.float16
        for j, k in enumerate(LAYERS):
            np.testing.assert_array_equal(mem[s].x[:, j].numpy(), d.features(cache.layer(k), np.float16))


@pytest.mark.parametrize("which", ["train", "test"])
def test_streamed_non_finite_features_name_the_layer(tmp_path, which):
    """An inf in layer 3 (float16 overflow) fails before any metric, naming layer 3, whichever split holds it."""
    g = np.random.default_rng(4)
    layers = [g.normal(size=(U * T, D)).astype(np.float16) for _ in range(4)]
    utt = SPLITS[which][0]
    layers[3][utt * T + 2, 5] = np.inf  # frame 2 of a split's first utterance (an even row: an item)
    acts = Activations(write_cache(tmp_path / "c", layers, np.full(U, T)))
    data = frame_data(acts)
    st = load_split_arrays(acts, data, SPLITS, LAYERS, stream=True)
    for fac, tf in ((functools.partial(RidgeProbe, alphas=[1.0]), None),
                    (functools.partial(LinearProbe), trainer_factory)):  # fmt: skip
        with pytest.raises(ValueError, match="non-finite.*layer 3") as e:
            fit_probe(fac, st, "classification", C, tf, layer_ids=LAYERS)
        assert "layer 1" not in str(e.value)
