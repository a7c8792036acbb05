"""Benchmark: the all-layer regression probe sweep, tutorial way vs one solve per layer.

Reference (the tutorial's way): for every layer and every target, one scikit-learn
``LinearRegression`` fitted on the training frames, predictions on held-out frames, and
``scipy.stats.pearsonr``. Ours: per layer, one `RidgeStats` pass (float16 cache rows
converted to float32, rows shifted by the first chunk's mean, products accumulated into
float64), one multi-output solve at alpha = 0 for all targets, and Pearson r of the
held-out predictions. Both run in this process on the same float16 layers, interleaved layer by
layer (so both see the same machine load); both are timed from the float16 arrays to the
table of r values.

Two variants of ours are timed: float32 chunk products (fast) and float64 products. The
ratio line uses the faster variant whose max |delta r| against scikit-learn is <= 1e-3.

The floor: in the same loop, for every layer, the bare Gram product ``X^T X`` of its training
rows (already converted from float16 to the variant's dtype, in memory, one ``torch`` matmul:
the product every least-squares fit of the layer needs and the bulk of our flops).
``floor_ratio = our time / floor time`` for the chosen variant: 1.0 would mean that reading,
converting, shifting, the other moments, the solve and the held-out r cost nothing. Then one
layer of ours is run under ``torch.profiler`` and the shares of its time by operator are printed
(where the rest goes).

    .venv/bin/python bench/probe_sweep.py                       # 13 layers x 12 targets, 12k+3k frames x 768
    .venv/bin/python bench/probe_sweep.py --layers 3 --targets 4  # a quick look
    .venv/bin/python bench/probe_sweep.py --cache DIR [--targets-file Y.npy]

Default input: synthetic layers with a realistic structure: targets are a linear
function of a 32-d latent plus noise; each layer is its own noisy linear map of the
latent (layer-dependent signal-to-noise, a low-rank nuisance shared by dimensions,
log-normal per-dimension scales, offsets, a few outlier dimensions) rounded to float16
like a cache. With ``--cache DIR`` layers come from an activation cache
(``src.activations.Activations.open(DIR)``); targets from ``--targets-file`` (an .npy of
shape (N, K) aligned with the cache rows) or else synthetic targets derived from the
middle layer.

Last line: ``ratio=<sklearn time / our time> max_abs_delta=<max |r_ours - r_sklearn|>
floor_ratio=<our time / X^T X time>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr
from sklearn.linear_model import LinearRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import report
from src.functional.ridge import RidgeStats, pearson_r

TOLERANCE = 1e-3


def synthetic(
    num_layers: int, num_targets: int, n: int, dim: int, seed: int = 0, latent: int = 32
) -> tuple[list[np.ndarray], np.ndarray]:
    """Layers (n, dim) float16 and targets (n, K) float32 sharing a latent."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent), dtype=np.float32)  # (n, q)
    a = rng.standard_normal((latent, num_targets), dtype=np.float32) / np.sqrt(latent)  # (q, K)
    y = z @ a + 0.6 * rng.standard_normal((n, num_targets), dtype=np.float32)  # (n, K)
    nuisance = rng.standard_normal((n, 16), dtype=np.float32)  # (n, 16) speaker/channel-like
    layers = []
    for i in range(num_layers):
        snr = 0.3 + np.sin(np.pi * (i + 0.5) / num_layers)  # peaks in the middle layers
        b = rng.standard_normal((latent, dim), dtype=np.float32) * snr / np.sqrt(latent)  # (q, D)
        c = rng.standard_normal((16, dim), dtype=np.float32) / 4  # (16, D)
        x = z @ b + nuisance @ c + rng.standard_normal((n, dim), dtype=np.float32)  # (n, D)
        scale = np.exp(0.5 * rng.standard_normal(dim)).astype(np.float32)
        scale[rng.choice(dim, 4, replace=False)] *= 20.0  # outlier dimensions
        x = x * scale + rng.normal(0, 2.0, dim).astype(np.float32)
        layers.append(x.astype(np.float16))
    return layers, y


def from_cache(path: str, targets_file: str | None, num_targets: int, seed: int):
    """Layers as the cache's memmaps; targets from a file or synthetic (minimal, guarded)."""
    try:
        from src.activations import Activations
    except ImportError as err:  # pragma: no cover - depends on the rest of the project
        sys.exit(f"--cache needs src/activations/ with Activations.open(DIR): {err}")
    acts = Activations.open(path)
    layers = [acts.layer(i) for i in range(acts.num_layers)]
    n = layers[0].shape[0]
    if targets_file:
        y = np.load(targets_file).astype(np.float32)
        if y.ndim != 2 or y.shape[0] != n:
            sys.exit(f"{targets_file}: expected ({n}, K) targets aligned with the cache, got {y.shape}")
    else:
        rng = np.random.default_rng(seed)
        mid = np.asarray(layers[len(layers) // 2], dtype=np.float32)
        mid = (mid - mid.mean(0)) / (mid.std(0) + 1e-6)
        proj = rng.standard_normal((mid.shape[1], num_targets)).astype(np.float32) / np.sqrt(mid.shape[1])
        y = mid @ proj
        y = y + rng.standard_normal(y.shape).astype(np.float32) * y.std(0)
    return layers, y


def sklearn_way(layers, y, n_train: int, n_test: int) -> np.ndarray:
    """One LinearRegression per layer per target (the tutorial's loop)."""
    r = np.empty((len(layers), y.shape[1]))
    for i, layer in enumerate(layers):
        x_tr = np.asarray(layer[:n_train], dtype=np.float32)
        x_te = np.asarray(layer[n_train : n_train + n_test], dtype=np.float32)
        for j in range(y.shape[1]):
            model = LinearRegression().fit(x_tr, y[:n_train, j])
            r[i, j] = pearsonr(model.predict(x_te), y[n_train : n_train + n_test, j])[0]
    return r


def ours(layers, y, n_train: int, n_test: int, compute_dtype: torch.dtype, chunk: int) -> np.ndarray:
    """One RidgeStats pass and one multi-output solve per layer; r of held-out predictions."""
    y_tr = torch.from_numpy(np.ascontiguousarray(y[:n_train]))
    y_te = torch.from_numpy(np.ascontiguousarray(y[n_train : n_train + n_test]))
    r = np.empty((len(layers), y.shape[1]))
    for i, layer in enumerate(layers):
        stats = RidgeStats(compute_dtype=compute_dtype)
        for start in range(0, n_train, chunk):
            stop = min(start + chunk, n_train)
            stats.update(torch.from_numpy(np.asarray(layer[start:stop])), y_tr[start:stop])
        w, b = stats.solve(0.0)  # (D, K), (K,) float64
        x_te = torch.from_numpy(np.asarray(layer[n_train : n_train + n_test])).to(compute_dtype)  # (n_te, D)
        pred = x_te @ w.to(compute_dtype) + b.to(compute_dtype)  # (n_te, K)
        r[i] = pearson_r(pred, y_te).numpy()
    return r


def gram_floor(layer, n_train: int, compute_dtype: torch.dtype) -> float:
    """Seconds of the bare ``X^T X`` of the training rows (converted before the clock starts)."""
    x = torch.from_numpy(np.asarray(layer[:n_train])).to(compute_dtype)  # (n_train, D), not timed
    t0 = time.perf_counter()
    g = x.mT @ x  # (D, D)
    elapsed = time.perf_counter() - t0
    del g
    return elapsed


def profile_shares(layer, y, n_train: int, n_test: int, compute_dtype: torch.dtype, chunk: int, top: int = 8) -> None:
    """Run ours on one layer under ``torch.profiler``; print each operator's share of the time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        ours([layer], y, n_train, n_test, compute_dtype, chunk)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)  # microseconds, every operator
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    print(f"profile of one layer ({compute_dtype}, wall {wall:.3f} s under the profiler; shares of operator "
          f"self time {total / 1e6:.3f} s; the rest of the wall time is Python):", flush=True)  # fmt: skip
    for e in events[:top]:
        print(f"  {e.key:<28s} {100 * e.self_cpu_time_total / total:5.1f}%  ({e.count} calls)", flush=True)
    rest = total - sum(e.self_cpu_time_total for e in events[:top])
    print(f"  {'(other operators)':<28s} {100 * rest / total:5.1f}%", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--targets", type=int, default=12)
    ap.add_argument("--train", type=int, default=12_000)
    ap.add_argument("--test", type=int, default=3_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument(
        "--chunk", type=int, default=4096, help="rows per RidgeStats.update (as read from a cache)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="activation cache directory instead of synthetic layers")
    ap.add_argument("--targets-file", default=None, help="with --cache: (N, K) .npy targets")
    args = ap.parse_args()

    if args.cache:
        layers, y = from_cache(args.cache, args.targets_file, args.targets, args.seed)
        n = layers[0].shape[0]
        n_train, n_test = (
            (args.train, args.test) if n >= args.train + args.test else (int(0.8 * n), n - int(0.8 * n))
        )
    else:
        layers, y = synthetic(args.layers, args.targets, args.train + args.test, args.dim, args.seed)
        n_train, n_test = args.train, args.test
    dim = layers[0].shape[1]
    print(
        f"{len(layers)} layers x {y.shape[1]} targets, {n_train} train + {n_test} held-out frames x {dim} dims, "
        f"{layers[0].dtype}; torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    # warm-up (first-call overheads of torch and LAPACK), not timed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 500 rows x 768 dims is singular: fine for a warm-up
        for dt in (torch.float32, torch.float64):
            ours([layer[:600] for layer in layers[:1]], y[:600], 500, 100, dt, args.chunk)
        sklearn_way([layer[:600] for layer in layers[:1]], y[:600, :1], 500, 100)

    # Interleaved per layer, so that both sides see the same machine load.
    variants = {"ours_float32": torch.float32, "ours_float64": torch.float64}
    timings = dict.fromkeys([*variants, "sklearn"], 0.0)
    floors = dict.fromkeys(variants, 0.0)  # X^T X per layer in the variant's dtype
    results = {name: np.empty((len(layers), y.shape[1])) for name in timings}
    for i, layer in enumerate(layers):
        for name, dt in variants.items():
            floors[name] += gram_floor(layer, n_train, dt)
            t0 = time.perf_counter()
            results[name][i] = ours([layer], y, n_train, n_test, dt, args.chunk)[0]
            timings[name] += time.perf_counter() - t0
        t0 = time.perf_counter()
        results["sklearn"][i] = sklearn_way([layer], y, n_train, n_test)[0]
        timings["sklearn"] += time.perf_counter() - t0
        print(
            f"layer {i}: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()) + " (cumulative)",
            flush=True,
        )
    t_ref, r_ref = timings.pop("sklearn"), results.pop("sklearn")
    print(f"sklearn LinearRegression x {len(layers) * y.shape[1]}: {t_ref:.2f} s", flush=True)
    for name in variants:
        print(f"{name}: {timings[name]:.2f} s; floor (X^T X per layer) {floors[name]:.2f} s, "
              f"floor_ratio {timings[name] / floors[name]:.2f}", flush=True)  # fmt: skip
    print(f"held-out r (sklearn): min {r_ref.min():.3f} median {np.median(r_ref):.3f} max {r_ref.max():.3f}")

    chosen = None
    for name in sorted(timings, key=timings.get):
        delta = float(np.abs(results[name] - r_ref).max())
        print(f"{name}: ratio {t_ref / timings[name]:.1f}x, max |delta r| {delta:.2e}", flush=True)
        if chosen is None and delta <= TOLERANCE:
            chosen = name
    if chosen is None:
        chosen = min(timings, key=timings.get)
        print(f"no variant within {TOLERANCE}: reporting the fastest", flush=True)
    print(f"chosen: {chosen}", flush=True)
    profile_shares(layers[len(layers) // 2], y, n_train, n_test, variants[chosen], args.chunk)
    report(ratio=t_ref / timings[chosen], max_abs_delta=float(np.abs(results[chosen] - r_ref).max()),
           floor_ratio=timings[chosen] / floors[chosen])  # fmt: skip


if __name__ == "__main__":
    main()
