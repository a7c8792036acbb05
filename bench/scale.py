"""Benchmark: peak memory and throughput of probing and analyses on a cache of millions of frames.

The issue-7 measurement of "memory independent of corpus size". It writes a synthetic
activation cache in the real format (``meta.json`` with per-file checksums, ``index.npz``,
``layer_XX.npy``; ``src.activations.Activations`` opens and verifies it) at ``N`` frames and at
``N / 4``, and then runs, each in a FRESH subprocess so that its peak RSS is its own:

- ``ridge``:  the ridge sweep over every layer through ``src.probes.pipeline.run_probing``
  (``RidgeProbe``, streaming on: moments from one pass of chunks, alpha chosen on validation,
  evaluation with bootstrap intervals);
- ``linear``: one epoch of the Lightning linear probe (``LinearProbe``, ``max_epochs=1``,
  streaming dataset), evaluation included;
- ``pool``:   one pass over every segment's mean-pooled features at every layer
  (``src.probes.data.CacheFeatures.chunks`` over a segment ``ProbeData``);
- ``cka``:    minibatch linear CKA over every pair of layers (``src.analyses.cka.CKA``,
  ``mode=minibatch``, ``batch_size=--cka-batch`` (256), ``compute_dtype=float32``), reading
  rows through ``src.analyses.base.read_rows``.

Threads: one torch thread per measurement by default (``--threads``): on this shared 2-core
machine two threads spin-wait on each other (minibatch CKA at N/4 took 4.0 s with 1 thread,
35.9 s with 2, load average 6).

Content (so that the probes learn something): utterances of 200-400 frames cut into
phone-like segments of 3-15 frames, each labelled with one of 40 classes; frame features of
layer ``k`` are ``snr_k * mu[label] + noise`` (``mu`` one random vector per class, the noise
N(0, 1) rows drawn from a bank, different rows per layer), ``snr_k`` rising with ``k``.

Peak RSS = ``VmHWM`` of the child (``/proc/self/status``); it includes the child's imports
(``import_rss`` = ``VmRSS`` after the imports, before the cache is opened). Pages of a
memory map that a process touches count in its RSS, so every reader here must read without
keeping them (``CacheFeatures``: ``os.preadv``; analyses: ``madvise(MADV_DONTNEED)`` after
each read). Per-item index arrays (rows, labels, utterance of each item: a few int64 per
item) do grow with ``N``; at 2M frames they are about 50-100 MB.

    .venv/bin/python bench/scale.py                      # 2,000,000 frames x 5 layers x 768, float16 (15.4 GB)
    .venv/bin/python bench/scale.py --frames 200000      # quick run
    .venv/bin/python bench/scale.py --dir /big/tmp --keep    # write there, keep the caches (reused next time)

Lines ``size=<N|N/4> measure=<m> frames=.. seconds=.. frames_per_s=.. peak_rss_mb=.. import_rss_mb=..``
and a last line ``rss_ratio=<max over measures of peak(N) / peak(N/4)> ridge=.. linear=.. pool=.. cka=..
frames_per_s_ridge=.. ...`` (frames/s at size N: cache rows processed per second, each row
read at every layer). Goal: ``rss_ratio <= 1.3``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import report  # noqa: E402

MEASURES = ("ridge", "linear", "pool", "cka")
NUM_CLASSES = 40
UTT_LEN = (200, 400)  # frames per utterance (uniform)
SEG_LEN = (3, 15)  # frames per segment (uniform)
WRITE_CHUNK = 1 << 16  # rows generated and written at once
NOISE_BANK = 1 << 16  # rows of N(0, 1) noise reused (random rows per frame)


# ----------------------------------------------------------------------------- memory


def proc_status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (bytes) of this process from ``/proc/self/status``."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


# ----------------------------------------------------------------------------- synthetic cache


def plan_corpus(frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Utterance lengths and segments covering exactly ``frames`` frames, all vectorised (O(N)).

    Returns ``lengths (U,)``, ``offsets (U,)``, ``seg_lo (S,)``, ``seg_hi (S,)`` (half-open cache
    rows, never across an utterance boundary), ``seg_label (S,)`` and ``seg_utt (S,)``."""
    rng = np.random.default_rng(seed)
    n_utt = frames // UTT_LEN[0] + 2
    lengths = rng.integers(UTT_LEN[0], UTT_LEN[1] + 1, size=n_utt)
    cum = np.cumsum(lengths)
    u = int(np.searchsorted(cum, frames)) + 1  # utterances needed to reach `frames`
    lengths = lengths[:u].copy()
    lengths[-1] -= int(cum[u - 1]) - frames  # the last one is cut to hit `frames` exactly
    if lengths[-1] < SEG_LEN[0]:  # too short to be useful: merge into the previous one
        lengths[-2] += lengths[-1]
        lengths = lengths[:-1]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    seg = rng.integers(SEG_LEN[0], SEG_LEN[1] + 1, size=frames // SEG_LEN[0] + 2)
    bounds = np.concatenate([[0], np.cumsum(seg)])
    bounds = bounds[bounds < frames]
    bounds = np.union1d(bounds, offsets)  # segments break at utterance starts
    lo = bounds.astype(np.int64)
    hi = np.concatenate([bounds[1:], [frames]]).astype(np.int64)
    label = rng.integers(0, NUM_CLASSES, size=len(lo))
    utt = np.searchsorted(offsets, lo, side="right") - 1
    return {"lengths": lengths.astype(np.int64), "offsets": offsets, "seg_lo": lo, "seg_hi": hi,
            "seg_label": label.astype(np.int64), "seg_utt": utt.astype(np.int64)}  # fmt: skip


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def write_synthetic_cache(path: Path, frames: int, layers: int, dim: int, seed: int = 0,
                          dtype: str = "float16") -> dict:  # fmt: skip
    """Write a complete cache at ``path`` (``Activations`` opens it with any ``verify``) and the
    items beside it (``<path>.items.npz``). Large sequential writes; the full sha256 is computed
    while writing. Returns a dict of timings and sizes."""
    from src.activations import CACHE_FORMAT, CHECKSUM_BLOCK, CHECKSUM_BLOCKS, full_sha256, sampled_sha256
    from src.layers import LAYER_CONVENTION

    t0 = time.perf_counter()
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    plan = plan_corpus(frames, seed)
    lengths, offsets = plan["lengths"], plan["offsets"]
    frame_label = np.repeat(plan["seg_label"], plan["seg_hi"] - plan["seg_lo"])  # (N,)
    rng = np.random.default_rng(seed + 1)
    mu = rng.standard_normal((NUM_CLASSES, dim), dtype=np.float32)  # (C, D) class means
    bank = rng.standard_normal((NOISE_BANK, dim), dtype=np.float32)  # (B, D) noise rows
    snr = np.linspace(0.02, 0.1, layers).astype(np.float32)  # later layers separate the classes better
    dt = np.dtype(dtype)
    header = _npy_header((frames, dim), dt)
    files, stats = [], []
    for k in range(layers):
        f = tmp / f"layer_{k:02d}.npy"
        h = hashlib.sha256(header)
        lo_v, hi_v = np.inf, -np.inf
        with open(f, "wb", buffering=0) as fh:
            fh.write(header)
            for s in range(0, frames, WRITE_CHUNK):
                e = min(frames, s + WRITE_CHUNK)
                x = bank[rng.integers(0, NOISE_BANK, size=e - s)]  # (c, D) noise
                x += snr[k] * mu[frame_label[s:e]]  # (c, D) + class mean
                lo_v, hi_v = min(lo_v, float(x.min())), max(hi_v, float(x.max()))
                b = memoryview(np.ascontiguousarray(x.astype(dt)).reshape(-1).view(np.uint8))
                h.update(b)
                fh.write(b)
        files.append({"file": f.name, "name": str(k), "shape": [frames, dim], "dtype": dt.str,
                      "bytes": f.stat().st_size, "sha256_sampled": sampled_sha256(f), "sha256": h.hexdigest()})  # fmt: skip
        stats.append({"name": str(k), "min": lo_v, "max": hi_v, "absmax": max(abs(lo_v), abs(hi_v))})
    n_utt = len(lengths)
    ids = np.array([f"u{i:07d}" for i in range(n_utt)])
    np.savez(tmp / "index.npz", ids=ids, speakers=np.array([f"s{i % 50:02d}" for i in range(n_utt)]),
             offsets=offsets, lengths=lengths, num_samples=lengths * 320)  # fmt: skip
    meta = {"format": CACHE_FORMAT, "backbone": "synthetic", "backbone_fingerprint": f"synthetic-{layers}x{dim}",
            "corpus": "synthetic", "corpus_fingerprint": f"synthetic-{frames}-seed{seed}", "num_layers": layers,
            "layer_names": [str(k) for k in range(layers)], "layer_convention": LAYER_CONVENTION, "hidden_size": dim,
            "frame_rate": 50.0, "frame_offset": 0.0, "sample_rate": 16000, "dtype": dt.name,
            "num_utterances": n_utt, "total_frames": frames, "layer_stats": stats, "files": files,
            "index_sha256": full_sha256(tmp / "index.npz"),
            "checksum": {"algorithm": "sha256", "block_bytes": CHECKSUM_BLOCK, "blocks": CHECKSUM_BLOCKS},
            "build_seconds": 0.0, "complete": True}  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last file written
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    np.savez(items_path(path), frame_label=frame_label, **{k: plan[k] for k in ("seg_lo", "seg_hi", "seg_label", "seg_utt")})
    seconds = time.perf_counter() - t0
    size = sum(e["bytes"] for e in files)
    return {"seconds": seconds, "bytes": size, "utterances": n_utt, "segments": len(plan["seg_lo"])}


def items_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".items.npz")


def cache_matches(path: Path, frames: int, layers: int, dim: int) -> bool:
    """A complete cache of this shape from an earlier ``--keep`` run (reused, not rewritten)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("complete") and meta.get("total_frames") == frames and meta.get("num_layers") == layers
            and meta.get("hidden_size") == dim and items_path(path).exists())  # fmt: skip


# ----------------------------------------------------------------------------- the measured runs (children)


class _Corpus:
    """The few corpus facts the probing pipeline reads (ids, speakers), from the cache index."""

    name = "synthetic"

    def __init__(self, acts) -> None:
        self.ids = list(acts.ids)
        self._speakers = list(acts.speakers)

    def __len__(self) -> int:
        return len(self.ids)

    def speaker(self, i: int) -> str:
        return self._speakers[int(i)]


class _Task:
    """Frame-level classification of the synthetic labels (a ``ProbeData`` built from the items file)."""

    name = "synthetic_phones"
    kind = "classification"

    def __init__(self, items: Path) -> None:
        self.items = items

    def build(self, acts, corpus, **_):
        from src.datamodules.tasks import ProbeData

        with np.load(self.items) as z:
            y = z["frame_label"].astype(np.int64)
        n = len(y)
        utt = np.repeat(np.arange(len(acts.lengths)), acts.lengths)  # (N,)
        return ProbeData(task=self.name, kind="classification", y=y, utt=utt, target_names=["phone"],
                         classes=[f"p{c:02d}" for c in range(NUM_CLASSES)], rows=np.arange(n, dtype=np.int64),
                         counts={"items": n})  # fmt: skip


def _run_probing(acts, probe_factory, trainer_factory, n_boot: int):
    import inspect

    from src.probes.pipeline import run_probing

    if "stream" not in inspect.signature(run_probing).parameters:
        raise SystemExit("src.probes.pipeline.run_probing has no `stream` keyword: the streaming pipeline is not "
                         "there, the ridge/linear measurements need it")  # fmt: skip
    task = _Task(items_path(acts.path))
    return run_probing(acts, _Corpus(acts), task, probe_factory, trainer_factory,
                       split_cfg={"by": "utterance", "val_fraction": 0.1, "test_fraction": 0.1}, controls={},
                       batch_size=256, n_boot=n_boot, seed=0, stream=True)  # fmt: skip


def _accuracy(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        if r.get("split") == "test" and r.get("metric") == "accuracy" and int(r.get("layer", -1)) >= 0:
            out[f"acc_layer{int(r['layer'])}"] = round(float(r["value"]), 4)
    return out


def child(measure: str, cache: Path, cka_batch: int, n_boot: int, threads: int = 1) -> dict:
    """One measurement in this (fresh) process: returns frames, seconds, RSS figures, check values."""
    import torch

    torch.set_num_threads(threads)
    from src.activations import Activations

    if measure in ("ridge", "linear"):
        import lightning  # noqa: F401  (imported before the baseline, as a real run does)

        import src.probes.pipeline  # noqa: F401
    if measure == "cka":
        import src.analyses.cka  # noqa: F401
    if measure == "pool":
        import src.probes.data  # noqa: F401
    import_rss = proc_status_bytes("VmRSS")
    acts = Activations(cache, verify="sampled")
    layers = list(range(acts.num_layers))
    info: dict = {}
    t0 = time.perf_counter()
    if measure == "ridge":
        from functools import partial

        from src.probes.ridge import RidgeProbe

        out = _run_probing(acts, partial(RidgeProbe, alphas=[0.1, 10.0, 1000.0]), None, n_boot)
        frames = acts.total_frames
        info = _accuracy(out.rows)
    elif measure == "linear":
        from functools import partial

        import lightning as L

        from src.probes.linear import LinearProbe

        def trainer_factory(**kw):
            kw.setdefault("logger", False)
            return L.Trainer(accelerator="cpu", devices=1, max_epochs=1, enable_checkpointing=False,
                             enable_model_summary=False, enable_progress_bar=False, **kw)  # fmt: skip

        out = _run_probing(acts, partial(LinearProbe, optimizer=partial(torch.optim.AdamW, lr=2e-3)), trainer_factory,
                           n_boot)  # fmt: skip
        frames = acts.total_frames
        info = _accuracy(out.rows)
    elif measure == "pool":
        from src.datamodules.tasks import ProbeData
        from src.probes.data import CacheFeatures

        with np.load(items_path(cache)) as z:
            lo, hi, lab, utt = z["seg_lo"], z["seg_hi"], z["seg_label"], z["seg_utt"]
        data = ProbeData(task="segments", kind="classification", y=lab, utt=utt, target_names=["phone"], lo=lo, hi=hi)
        feats = CacheFeatures.from_data(acts, data, layers)
        total = torch.zeros(len(layers), acts.hidden_size, dtype=torch.float64)  # (L, D) sum of pooled features
        for _a, _b, x in feats.chunks():  # x: (n, L, D) float32
            total += x.sum(0, dtype=torch.float64)
        frames = int((hi - lo).sum())
        info = {"segments": len(lo), "mean_abs_pooled": round(float(total.abs().mean() / len(lo)), 6)}
    elif measure == "cka":
        from src.analyses.base import AnalysisContext
        from src.analyses.cka import CKA

        res = CKA(mode="minibatch", batch_size=cka_batch, seed=0, compute_dtype="float32").run(AnalysisContext(acts=acts, corpus=None, seed=0))
        frames = acts.total_frames
        m = {(r["layer"], r["layer_b"]): r["value"] for r in res.rows}
        info = {"cka_0_1": round(m[(0, 1)], 4), "cka_0_last": round(m[(0, layers[-1])], 4),
                "batches": res.meta["references"]["self"]["batches"]}  # fmt: skip
    else:
        raise SystemExit(f"unknown measure {measure!r}; one of {', '.join(MEASURES)}")
    seconds = time.perf_counter() - t0
    return {"measure": measure, "frames": int(frames), "seconds": seconds, "frames_per_s": frames / seconds,
            "peak_rss": proc_status_bytes("VmHWM"), "import_rss": import_rss, **info}  # fmt: skip


def run_child(measure: str, cache: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", measure, "--cache", str(cache), "--cka-batch", str(args.cka_batch),
           "--n-boot", str(args.n_boot), "--threads", str(args.threads)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {measure} on {cache} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"measurement {measure} printed no RESULT line:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2_000_000, help="frames of the large cache (the small one: / 4)")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the caches (default: a temp dir in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the caches (a later run with --dir reuses them)")
    ap.add_argument("--measures", default=",".join(MEASURES), help=f"comma-separated subset of {','.join(MEASURES)}")
    ap.add_argument("--cka-batch", type=int, default=256, help="CKA minibatch size (analysis.batch_size)")
    ap.add_argument("--n-boot", type=int, default=100, help="bootstrap resamples of the probing runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measurement (1: see the docstring)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.cache, args.cka_batch, args.n_boot, args.threads)), flush=True)
        return 0
    measures = [m for m in args.measures.split(",") if m]
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        ap.error(f"unknown measures {unknown}; choose from {', '.join(MEASURES)}")
    if args.frames < 4 * 2 * UTT_LEN[1]:
        ap.error(f"--frames must be at least {4 * 2 * UTT_LEN[1]} (a few utterances at N / 4)")
    base = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="scale_bench_", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    sizes = {"N": args.frames, "N/4": args.frames // 4}
    caches = {}
    try:
        need = sum(n * args.layers * args.dim * 2 for n in sizes.values())
        free = shutil.disk_usage(base).free
        if need > free and not all(cache_matches(base / f"cache_{n}", n, args.layers, args.dim) for n in sizes.values()):
            raise SystemExit(f"the caches need {need / 1e9:.1f} GB in {base}, {free / 1e9:.1f} GB are free; use --dir")
        for tag, n in sizes.items():
            path = base / f"cache_{n}"
            caches[tag] = path
            if cache_matches(path, n, args.layers, args.dim):
                print(f"size={tag} reusing {path}", flush=True)
                continue
            w = write_synthetic_cache(path, n, args.layers, args.dim, seed=0)
            report(size=tag, wrote=str(path), frames=n, layers=args.layers, dim=args.dim, gb=w["bytes"] / 1e9,
                   utterances=w["utterances"], segments=w["segments"], write_seconds=w["seconds"],
                   write_mb_per_s=w["bytes"] / 1e6 / w["seconds"])  # fmt: skip
        results: dict[str, dict[str, dict]] = {}
        for tag in ("N/4", "N"):
            for m in measures:
                r = run_child(m, caches[tag], args)
                results.setdefault(m, {})[tag] = r
                extra = {k: v for k, v in r.items() if k not in {"measure", "frames", "seconds", "frames_per_s",
                                                                  "peak_rss", "import_rss"}}  # fmt: skip
                report(size=tag, measure=m, frames=r["frames"], seconds=r["seconds"], frames_per_s=r["frames_per_s"],
                       peak_rss_mb=r["peak_rss"] / 2**20, import_rss_mb=r["import_rss"] / 2**20,
                       above_import_mb=(r["peak_rss"] - r["import_rss"]) / 2**20, **extra)  # fmt: skip
        ratios = {m: results[m]["N"]["peak_rss"] / results[m]["N/4"]["peak_rss"] for m in measures}
        above = {f"above_import_ratio_{m}": (results[m]["N"]["peak_rss"] - results[m]["N"]["import_rss"])
                 / max(1, results[m]["N/4"]["peak_rss"] - results[m]["N/4"]["import_rss"]) for m in measures}  # fmt: skip
        fps = {f"frames_per_s_{m}": results[m]["N"]["frames_per_s"] for m in measures}
        report(rss_ratio=max(ratios.values()), **ratios, **fps, **above, frames=args.frames)
    finally:
        if not args.keep:
            for path in caches.values():
                shutil.rmtree(path, ignore_errors=True)
                items_path(path).unlink(missing_ok=True)
            if args.dir is None:
                shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
