"""Benchmark: SAE training throughput streaming from a float16 cache on disk vs from an in-memory tensor,
and peak RSS of streaming at N vs N/4 frames.

It writes synthetic float16 caches in the real format (src/sae/synthetic.py: frames built from a known
sparse dictionary) at N and N/4 frames, then runs each measurement in a FRESH subprocess (its peak RSS is
its own, ``VmHWM``), one torch thread each:

- ``stream``:  `fit_saes` reading batches from the cache (shuffle buffer, preadv reads, statistics pass);
- ``memory``:  the same `fit_saes`, same batch order, rows from a tensor holding every frame (np.load);
- ``saelens``: sae-lens's own trainer (``SAETrainer`` + ``TopKTrainingSAE``) fed the same in-memory
  frames in batches of the same size, as many steps (when sae_lens is importable).

All train TopK SAEs of the same width, k, batch size and number of steps. Time = wall time of the
whole training call (statistics pass and b_dec init included for ours).

    .venv/bin/python bench/sae.py                 # 60,000 frames x 256 dims, expansion 4, k 32 (about 1-2 min)
    .venv/bin/python bench/sae.py --frames 1000000 --dim 384 --dir /big/tmp

Lines ``measure=<m> size=<N|N/4> frames=.. steps=.. seconds=.. frames_per_s=.. peak_rss_mb=..`` and, last,
``ratio=<streaming time / in-memory time> rss_ratio=<peak RSS streaming at N / at N/4>`` (goals: <= 1.25, <= 1.3).

First, the TopK training step itself (``--step-shape B,D,F,k``, default the command's 1024,384,1536,32; one
fresh subprocess, one thread): `SAEModule.layer_losses` and its backward on one layer, the same random
frames and weights, with ``--step-dead`` latents dead (aux-k on, k_aux = D/2), through the dense path
(every product (B, D) x (D, F)) and the sparse one (the selected latents only): lines
``train_step=<dense|sparse> ... seconds_per_step_layer=..`` and
``step_ratio=<dense / sparse>``. Then the top-k selection on that step's pre-activations, torch.topk (the
selection before `topk_indices`) against `topk_indices`'s block prefilter, and the sparse step (forward,
backward) with each, interleaved in the same process: lines ``topk=<torch.topk|prefilter> ... seconds=..``
and ``topk_ratio=<torch.topk / prefilter> step_selection_ratio=<step with torch.topk / with prefilter>``.
``--step-only`` stops there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not in /proc/self/status (Linux only)")


def train_step(a: dict) -> dict:
    """Seconds of one training step of one layer (forward, backward), dense and sparse TopK paths, best of
    ``a["repeats"]`` on the same inputs; the firing record is reset before each so every repeat sees the
    same ``a["dead"]`` dead latents."""
    import torch

    from bench._common import best_of
    from src.sae.train import SAEModule, SAETrainConfig

    n, d, f, k = a["shape"]
    cfg = SAETrainConfig(
        architecture="topk", d_sae=f, k=k, batch_size=n, dead_after_frames=n, standardize=False
    )
    m = SAEModule(cfg, d, ["0"], total_steps=10).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, d, generator=g)
    w = torch.full((n,), 1.0 / n)
    dead = torch.randperm(f, generator=g)[: a["dead"]]
    out = {}
    for path in ("dense", "sparse"):
        m._sparse_topk = path == "sparse"

        def step():
            m.since_fired.zero_()
            m.since_fired[0, dead] = n + 1
            m.zero_grad(set_to_none=True)
            ((loss, _),) = m.layer_losses(x, w, n)
            loss.backward()

        step()  # warm-up
        out[path], _ = best_of(step, a["repeats"])
    # the top-k selection: torch.topk (the old selection) against `topk_indices` (block prefilter) on this
    # step's pre-activations, and the sparse step with each, interleaved, best of a["repeats"] each
    import src.sae.train as train_mod
    from src.sae.model import topk_indices

    m._sparse_topk = True
    with torch.no_grad():
        pre = m.saes[0].pre_acts(x[:, 0])

    def old_select(p, kk):
        return torch.topk(p, kk, dim=-1).indices

    def step_with(select):
        def run():
            train_mod.topk_indices = select
            try:
                m.since_fired.zero_()
                m.since_fired[0, dead] = n + 1
                m.zero_grad(set_to_none=True)
                ((loss, _),) = m.layer_losses(x, w, n)
                loss.backward()
            finally:
                train_mod.topk_indices = topk_indices

        return run

    timed = {"topk_torch": lambda: old_select(pre, k), "topk_prefilter": lambda: topk_indices(pre, k),
             "step_torch_topk": step_with(old_select), "step_prefilter": step_with(topk_indices)}  # fmt: skip
    for fn in timed.values():
        fn()  # warm-up
    for key in timed:
        out[key] = float("inf")
    for _ in range(a["repeats"]):
        for key, fn in timed.items():
            t0 = time.perf_counter()
            fn()
            out[key] = min(out[key], time.perf_counter() - t0)
    return out


def child(measure: str, cache: str, a: dict) -> dict:
    import functools
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    if measure == "step":
        return train_step(a)
    import lightning as L
    import numpy as np

    from src.activations import Activations
    from src.sae.data import FrameSource, FrameStream, InMemoryFrames
    from src.sae.train import SAETrainConfig, fit_saes

    acts = Activations(cache)
    stream = FrameStream([FrameSource.from_cache(acts, "all", silence="keep")], val_fraction=0.0,
                         buffer_frames=a["buffer"])  # fmt: skip
    steps = stream.num_batches(a["batch"])
    d_sae = a["expansion"] * acts.hidden_size
    if measure == "saelens":
        from sae_lens import SAETrainer
        from sae_lens.config import SAETrainerConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        x = torch.from_numpy(
            np.load(Path(cache) / acts.meta["files"][0]["file"]).astype(np.float32)
        )  # (N, D)
        order = np.concatenate(list(stream.epoch_batches(0, a["batch"])))  # the same frames, the same order
        t0 = time.perf_counter()
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.hidden_size, d_sae=d_sae, k=a["k"]))

        def batches():
            while True:
                for i in range(0, len(order), a["batch"]):
                    yield x[torch.from_numpy(order[i : i + a["batch"]])]

        cfg = SAETrainerConfig(total_training_samples=steps * a["batch"], train_batch_size_samples=a["batch"], lr=1e-3,
                               lr_end=1e-3, logger=__import__("sae_lens.config", fromlist=["LoggingConfig"]).LoggingConfig(
                                   log_to_wandb=False))  # fmt: skip
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):
            SAETrainer(cfg, sae, batches()).fit()
        seconds = time.perf_counter() - t0
        return {"frames": int(len(order)), "steps": steps, "seconds": seconds, "peak_rss": peak_rss()}
    reader = None
    if measure == "memory":
        x = np.load(Path(cache) / acts.meta["files"][0]["file"]).astype(np.float32)  # (N, D)
        reader = InMemoryFrames(torch.from_numpy(x)[:, None, :])  # (N, 1, D)
    tf = functools.partial(L.Trainer, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    cfg = SAETrainConfig(architecture="topk", k=a["k"], d_sae=d_sae, batch_size=a["batch"], epochs=1, lr=1e-3,
                         warmup_steps=10, standardize=True, init_frames=4096)  # fmt: skip
    t0 = time.perf_counter()
    fit_saes(stream, cfg, tf, reader=reader)
    seconds = time.perf_counter() - t0
    return {"frames": int(stream.train_frames), "steps": steps, "seconds": seconds, "peak_rss": peak_rss()}


def run_child(measure: str, cache: Path, a: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--child", measure, "--cache", str(cache), "--args", json.dumps(a)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{measure} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--buffer", type=int, default=1 << 15, help="shuffle buffer (frames)")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--no-saelens", action="store_true")
    ap.add_argument(
        "--step-shape", default="1024,384,1536,32", help="B,D,F,k of the training-step comparison"
    )
    ap.add_argument("--step-dead", type=int, default=384, help="dead latents in the training-step comparison")
    ap.add_argument("--step-repeats", type=int, default=5)
    ap.add_argument("--step-only", action="store_true", help="only the training-step comparison")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--args", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.cache, json.loads(args.args))))
        return 0
    from bench._common import report

    shape = [int(v) for v in args.step_shape.split(",")]
    st = run_child("step", Path("."), {"shape": shape, "dead": args.step_dead, "repeats": args.step_repeats})
    n, d, f, k = shape
    for path in ("dense", "sparse"):
        report(train_step=path, batch=n, d_in=d, d_sae=f, k=k, dead=args.step_dead,
               k_aux=d // 2, seconds_per_step_layer=st[path])  # fmt: skip
    report(step_ratio=st["dense"] / st["sparse"])
    report(topk="torch.topk", rows=n, d_sae=f, k=k, seconds=st["topk_torch"])
    report(topk="prefilter", rows=n, d_sae=f, k=k, seconds=st["topk_prefilter"])
    report(topk_ratio=st["topk_torch"] / st["topk_prefilter"],
           step_selection_ratio=st["step_torch_topk"] / st["step_prefilter"])  # fmt: skip
    if args.step_only:
        return 0
    from src.sae.synthetic import write_dictionary_cache

    a = {"expansion": args.expansion, "k": args.k, "batch": args.batch, "buffer": args.buffer}
    root = Path(tempfile.mkdtemp(prefix="saebench_", dir=args.dir))
    try:
        caches = {}
        for label, n in (("N", args.frames), ("N/4", args.frames // 4)):
            t0 = time.perf_counter()
            caches[label], _ = write_dictionary_cache(root / f"c{n}", n, args.dim, 2 * args.dim, 8, noise=0.05,
                                                      dtype="float16", utt_len=300, distinct=False)  # fmt: skip
            mb = sum(p.stat().st_size for p in caches[label].iterdir()) / 1e6
            print(f"cache size={label} frames={n} dim={args.dim} float16 mb={mb:.1f} write_seconds={time.perf_counter() - t0:.1f}",
                  flush=True)  # fmt: skip
        measures = [("stream", "N"), ("memory", "N"), ("stream", "N/4")]
        try:
            import sae_lens  # noqa: F401

            if not args.no_saelens:
                measures.append(("saelens", "N"))
        except ImportError:
            print("sae_lens not importable: its trainer is not timed")
        out = {}
        for m, label in measures:
            r = run_child(m, caches[label], a)
            out[(m, label)] = r
            print(f"measure={m} size={label} frames={r['frames']} steps={r['steps']} seconds={r['seconds']:.2f} "
                  f"frames_per_s={r['frames'] / r['seconds']:.0f} peak_rss_mb={r['peak_rss'] / 1e6:.0f}", flush=True)  # fmt: skip
        ratio = out[("stream", "N")]["seconds"] / out[("memory", "N")]["seconds"]
        rss = out[("stream", "N")]["peak_rss"] / out[("stream", "N/4")]["peak_rss"]
        if ("saelens", "N") in out:
            print(
                f"saelens_ratio={out[('stream', 'N')]['seconds'] / out[('saelens', 'N')]['seconds']:.3f} "
                "(our streaming time / sae-lens trainer time on in-memory frames)"
            )
        print(f"ratio={ratio:.3f} rss_ratio={rss:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
