"""Benchmark: full L x L linear CKA with `cka_matrix` vs a pairwise numpy reference.

The reference is what a tutorial notebook does: for every pair of layers (i, j) of the
L x L matrix, convert both to float64, centre them, and compute
``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` from scratch. Both run in this process on the
same inputs: layers are noisy linear maps of a latent that drifts from layer to layer, so
CKA values spread between about 0.3 and 0.85 off the diagonal. Neither side forms an N x N matrix.

    .venv/bin/python bench/cka.py            # 50,000 frames x 384 dims x 5 layers
    .venv/bin/python bench/cka.py --large    # also 13 layers x 768 dims (reference takes minutes)
    .venv/bin/python bench/cka.py --memmap   # inputs as float16 np.memmap files (the cache layout)

The floor: in the same run, the one symmetric product that bounds every linear CKA matrix,
``Z^T Z`` with ``Z = [X_1 .. X_L]`` the concatenated layers (N, L*d), already in
``cka_matrix``'s compute dtype (float32) and in memory, as one ``torch`` matmul (a full
GEMM: ``cka_matrix`` itself computes only the upper triangle of blocks, ``(L + 1) / 2L`` of
those flops, so ``floor_ratio`` below 1 is possible). Then ``cka_matrix`` is run once under
``torch.profiler`` and the shares of its time by operator are printed (where the rest goes).

Last line: ``ratio=<reference time / cka_matrix time> max_abs_delta=<max |CKA difference|>
floor_ratio=<cka_matrix time / Z^T Z time>`` (for the last case run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import best_of, report
from src.functional.cka import cka_matrix


def make_layers(n: int, d: int, num_layers: int, seed: int = 0, latent: int = 64) -> list[np.ndarray]:
    """Layers (n, d) float32: a latent and a mixing matrix that both drift from layer to layer."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent, generator=g)  # (n, r)
    w = torch.randn(latent, d, generator=g) * torch.linspace(2.0, 0.1, latent)[:, None]  # (r, d)
    step = 0.8 if num_layers < 8 else 0.5
    layers = []
    for i in range(num_layers):
        z = z + step * torch.randn(n, latent, generator=g)  # far layers share less
        w = w + 0.3 * torch.randn(latent, d, generator=g)
        noise = (0.5 + 0.25 * i) * torch.randn(n, d, generator=g)
        layers.append((z @ w + noise + 3.0 * torch.randn(1, d, generator=g)).numpy())  # (n, d), off-centre
    return layers


def reference_pairwise(layers: list[np.ndarray]) -> np.ndarray:
    """Tutorial-style linear CKA: every (i, j) pair from scratch in numpy float64."""
    num = len(layers)
    out = np.empty((num, num))
    for i in range(num):
        for j in range(num):
            x = np.asarray(layers[i], dtype=np.float64)
            x = x - x.mean(0)
            y = np.asarray(layers[j], dtype=np.float64)
            y = y - y.mean(0)
            out[i, j] = np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    return out


def to_memmap(layers: list[np.ndarray], root: Path) -> list[np.memmap]:
    maps = []
    for i, a in enumerate(layers):
        m = np.lib.format.open_memmap(root / f"layer{i}.npy", mode="w+", dtype=np.float16, shape=a.shape)
        m[:] = a
        m.flush()
        maps.append(np.load(root / f"layer{i}.npy", mmap_mode="r"))
    return maps


def gram_floor(layers, compute_dtype: torch.dtype = torch.float32) -> float:
    """Seconds of ``Z^T Z`` for the concatenated layers (built and converted before the clock starts)."""
    z = torch.cat([torch.from_numpy(np.asarray(a)).to(compute_dtype) for a in layers], dim=1)  # (N, L*d)
    t0 = time.perf_counter()
    g = z.mT @ z  # (L*d, L*d)
    elapsed = time.perf_counter() - t0
    del g, z
    return elapsed


def profile_shares(layers, top: int = 8) -> None:
    """Run ``cka_matrix`` once under ``torch.profiler``; print each operator's share of the time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        cka_matrix(layers)
        wall = time.perf_counter() - t0
    events = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                    key=lambda e: e.self_cpu_time_total, reverse=True)  # fmt: skip
    total = sum(e.self_cpu_time_total for e in events)  # microseconds
    print(f"profile of cka_matrix (wall {wall:.3f} s under the profiler; shares of operator self time "
          f"{total / 1e6:.3f} s; the rest of the wall time is Python):", flush=True)  # fmt: skip
    for e in events[:top]:
        print(f"  {e.key:<28s} {100 * e.self_cpu_time_total / total:5.1f}%  ({e.count} calls)", flush=True)
    print(f"  {'(other operators)':<28s} {100 * sum(e.self_cpu_time_total for e in events[top:]) / total:5.1f}%")


def run_case(n: int, d: int, num_layers: int, repeats: int, memmap: bool) -> tuple[float, float, float]:
    layers = make_layers(n, d, num_layers)
    with tempfile.TemporaryDirectory() as tmp:
        if memmap:
            layers = to_memmap(layers, Path(tmp))
        t_floor = t_ours = float("inf")
        for _ in range(repeats):  # interleaved: both see the same machine load
            t_floor = min(t_floor, gram_floor(layers))
            t, ours = best_of(lambda: cka_matrix(layers).numpy(), 1)
            t_ours = min(t_ours, t)
        t_ref, ref = best_of(lambda: reference_pairwise(layers), repeats)
        profile_shares(layers)
    delta = float(np.abs(ours - ref).max())
    off = ref[~np.eye(num_layers, dtype=bool)]
    print(
        f"N={n} D={d} L={num_layers} {'float16 memmap' if memmap else 'float32 in memory'}: "
        f"cka_matrix {t_ours:.2f} s, pairwise numpy {t_ref:.2f} s, Z^T Z floor {t_floor:.2f} s, "
        f"off-diagonal CKA in [{off.min():.3f}, {off.max():.3f}]",
        flush=True,
    )
    return t_ref / t_ours, delta, t_ours / t_floor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=50_000)
    p.add_argument("--large", action="store_true", help="also run 13 layers x 768 dims (slow reference)")
    p.add_argument("--memmap", action="store_true", help="read float16 np.memmap inputs")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    print(f"torch threads={torch.get_num_threads()}", flush=True)
    cases = [(384, 5)] + ([(768, 13)] if args.large else [])
    for d, num_layers in cases:
        ratio, delta, floor_ratio = run_case(args.frames, d, num_layers, args.repeats, args.memmap)
    report(ratio=ratio, max_abs_delta=f"{delta:.2e}", floor_ratio=floor_ratio)


if __name__ == "__main__":
    main()
