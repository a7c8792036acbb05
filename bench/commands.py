"""Time to first result: every README default command, timed as a user runs it, beside its floor.

    .venv/bin/python bench/commands.py                         # every command below, one after another
    .venv/bin/python bench/commands.py --only phones,commands  # some of them (names from the table below)
    .venv/bin/python bench/commands.py --quick                 # train, stress, commands (a few minutes; make bench)
    .venv/bin/python bench/commands.py --only train --repeat 3 --out /tmp/bench_commands

The commands (README.md's code blocks that run offline with no extra path, on the default corpora; the
variants that only change a config value of one of these, the multiruns, the ones that need a path, the
network or the optional VocalTractLab extra, and the helper benches are left out):

    train          train.py
    phones         train.py experiment=phones
    stress         train.py experiment=stress
    commands       train.py experiment=commands
    cka rsa cca dimred abx mutual_info speaker_gram
                   analyze.py analysis=<name>
    decoder_lens logit_lens
                   analyze.py analysis=<name>
    context_mixing analyze.py experiment=context_mixing
    attribution    analyze.py experiment=attribution (selects analysis=attribution itself)
    faithfulness   analyze.py analysis=faithfulness data=commands
    patching_homophones hallucination_heads
                   analyze.py experiment=<name>
    sae            train.py experiment=sae

Each runs as a subprocess of this script (``sys.executable``, the repository as working directory,
this process's environment; ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` default to 1, ``WANDB_MODE`` to
offline, ``HF_HUB_OFFLINE`` to 1), one after another, with ``paths.output_dir=<out>/<name>/<repeat>``: a
fresh outputs directory each time, so a command that trains what it needs when missing (the
attribution and faithfulness classifier) trains it in its own time. The corpora and activation caches
are the repository's defaults (``data/``, ``cache/``), shared with the user's runs: before the first
timed run of a command that reads a cache, ``build_cache.py`` with the same backbone/data builds it or
finds it (untimed), so a cache command is timed warm. Live-model commands (lenses, context mixing,
attribution, interventions) read no cache. The seconds are wall time of the whole subprocess (Python
start-up and imports included, a few seconds), the minimum over ``--repeat``; beside each the 1-minute
load average (``os.getloadavg``) when it started, since this machine is shared.

The floor (what the command cannot avoid doing; a lower bound, not an estimate of a good time):
- ``forward``: the backbone's encoder forward once per utterance the command analyses (each Whisper
  input is one 30 s window whatever its length): ``n x`` the per-utterance time of ``backbone.encode``
  on the command's corpus, timed here once per backbone and corpus (4 utterances, best of 2);
- ``cache``: reading the layers the command uses from its activation cache into float32, plus ``m``
  Gram products ``X_l^T X_l`` per layer over all frames (one torch matmul each, the product every
  least-squares / CKA / CCA computation of a layer needs), timed here on the real cache; ``m`` is the
  number of full-data fits the command makes (e.g. phones: task probe, control probe and the MDL
  prefixes, whose sizes sum to about one training set: 3).
``ratio = seconds / floor``. Python start-up (importing torch, lightning, hydra: several seconds) is
not in the floor, so a command near its floor shows a ratio well above 1 when the floor is small.

Measured (2026-12-07, this 2-core machine shared with ~9 agents, 1 thread; load in brackets): phones 184.5 s
(5.5; 365.8 s before), train 50.9 s (5.9; 192.8 s), stress 41.5 s (4.6; 292.2 s), commands 16.3 s (5.3;
83.4 s). The five slowest in one run (``--only phones,stress,mutual_info,decoder_lens,attribution
--no-floor``, 19:10-19:19 UTC, load 5.2-7.1): phones 151.5 s (2.41x), stress 47.9 s (6.11x), mutual_info
88.3 s (2.63x), decoder_lens 143.7 s (1.91x), attribution 140.2 s (4.68x): ``slowest5_min_speedup=1.911``. The floors (measured in this process after the runs, so under the same sharing): reading the 5
states and 3 Gram products each takes 3-12 s when the machine is calm (69 s in that loaded run), so
phones is ~15x its floor on a calm machine: 2 Lightning-style probe trainings of 2025 steps (~4 ms of
matrix products a step), 30 L-BFGS fits of 100 iterations for MDL, and ~50 s of start-up (imports,
config checks, cache open, W&B) that no floor counts.

Last lines: ``slowest5=<names>`` and ``slowest5_min_speedup=<x>``: the minimum, over the five commands
with the largest ``BEFORE_SECONDS`` (measured at ``BEFORE_COMMIT``), of before / now. Commands of
the five not run in this call are listed as missing and left out of the minimum (nan if none ran).

Tolerance of the speed-ups (what "same numbers" means): the probes of ``train.py`` (task probe and
control probe: every accuracy, F1, selectivity, best_epoch row) are identical, parameters bit for bit
(the plain training loop, tests/probes/test_loop.py); ``mdl_codelength_kbits`` / ``mdl_compression`` within
1e-3 relative (the MDL probe's L-BFGS rewritten; measured <= 2e-4, about what 1 vs 2 threads change in the
old one; tests/probes/test_mdl_fast.py, bench/phones_stages.py). ``experiment=commands``: no change.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import report  # noqa: E402

# Wall seconds at BEFORE_COMMIT (before the speed-ups), with the 1-minute load average at the start
# (2 CPU cores shared by ~9 agents, 1 thread). train, phones, commands, stress, cka: this script,
# `--repo <git archive of BEFORE_COMMIT> --no-floor` (2026-12-07 18:29-18:53 UTC). attribution,
# decoder_lens, mutual_info: the other speed helper's runs of the same commands at the same commit
# (subprocess, warm cache, 17:52-18:10 UTC; decoder_lens under py-spy; mutual_info: its job's 222 s plus
# ~10 s start-up). Not measured here: the rest (not among the five slowest in the measurements).
BEFORE_COMMIT = "5825df54934bce2f31b8de28a5c2a9a3ce108c58"
BEFORE_DATE = "2026-12-07"
BEFORE_SECONDS: dict[str, float] = {
    "train": 192.8, "phones": 365.8, "commands": 83.4, "stress": 292.2, "cka": 224.6,
    "attribution": 656.5, "decoder_lens": 274.5, "mutual_info": 232.0,
}  # fmt: skip
BEFORE_LOAD: dict[str, float] = {
    "train": 8.7, "phones": 9.1, "commands": 9.3, "stress": 10.3, "cka": 8.6,
    "attribution": 7.5, "decoder_lens": 5.6, "mutual_info": 3.7,
}  # fmt: skip


@dataclass(frozen=True)
class Command:
    name: str
    script: str  # train.py | analyze.py
    overrides: tuple[str, ...]
    cache: tuple[str, ...] | None  # build_cache.py overrides of the cache it reads (None: reads none)
    floor: str  # forward | cache
    n: int = 0  # forward: utterances through the encoder
    layers: int | None = None  # cache: how many states it reads (None: every stored state)
    m: int = 1  # cache: Gram products per layer
    corpus: tuple[str, ...] = ()  # forward: data/backbone overrides of the corpus it analyses
    quick: bool = False


SYNTH: tuple[str, ...] = ()
CMDS = ("data=commands",)
COMMANDS = [
    Command("train", "train.py", (), SYNTH, "cache", layers=5, m=1, quick=True),
    Command("phones", "train.py", ("experiment=phones",), SYNTH, "cache", layers=5, m=3),
    Command("stress", "train.py", ("experiment=stress",), SYNTH, "cache", layers=5, m=2, quick=True),
    Command("commands", "train.py", ("experiment=commands",), CMDS, "cache", layers=1, m=0, quick=True),
    Command("cka", "analyze.py", ("analysis=cka",), SYNTH, "cache", m=1),
    Command("rsa", "analyze.py", ("analysis=rsa",), SYNTH, "cache", m=1),
    Command("cca", "analyze.py", ("analysis=cca",), SYNTH, "cache", m=1),
    Command("dimred", "analyze.py", ("analysis=dimred",), SYNTH, "cache", m=1),
    Command("abx", "analyze.py", ("analysis=abx",), SYNTH, "cache", m=1),
    Command("mutual_info", "analyze.py", ("analysis=mutual_info",), SYNTH, "cache", m=1),
    Command("speaker_gram", "analyze.py", ("analysis=speaker_gram",), SYNTH, "cache", m=1),
    Command("decoder_lens", "analyze.py", ("analysis=decoder_lens",), None, "forward", n=36),
    Command("logit_lens", "analyze.py", ("analysis=logit_lens",), None, "forward", n=36),
    Command("context_mixing", "analyze.py", ("experiment=context_mixing",), None, "forward", n=8,
            corpus=("data=homophones",)),  # fmt: skip
    Command("attribution", "analyze.py", ("experiment=attribution",), CMDS, "forward", n=4,
            corpus=CMDS),  # fmt: skip
    Command("faithfulness", "analyze.py", ("analysis=faithfulness", "data=commands"), CMDS, "forward", n=20,
            corpus=CMDS),  # fmt: skip
    Command("patching_homophones", "analyze.py", ("experiment=patching_homophones",), None, "forward", n=10,
            corpus=("data=homophones",)),  # fmt: skip
    Command("hallucination_heads", "analyze.py", ("experiment=hallucination_heads",), None, "forward", n=20),
    Command("sae", "train.py", ("experiment=sae",), SYNTH, "cache", m=1),
]
BY_NAME = {c.name: c for c in COMMANDS}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for k, v in (("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("WANDB_MODE", "offline"), ("HF_HUB_OFFLINE", "1")):
        env.setdefault(k, v)
    return env


def load1() -> float:
    return os.getloadavg()[0]


RUN = {"repo": REPO, "extra": []}  # where the commands run (--repo) and the path overrides that go with it


def warm_cache(overrides: tuple[str, ...], out: Path, log) -> Path:
    """build_cache.py with ``overrides`` (untimed); returns the cache directory (from its cache.json)."""
    import json

    run_dir = out / "_warm" / ("_".join(o.replace("=", "-") for o in overrides) or "default")
    cmd = [sys.executable, "build_cache.py", *overrides, *RUN["extra"], f"paths.output_dir={run_dir}"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as fh:
        subprocess.run(cmd, cwd=RUN["repo"], env=child_env(), stdout=fh, stderr=subprocess.STDOUT, check=True)
    found = sorted(run_dir.rglob("cache.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"build_cache.py {' '.join(overrides)} wrote no cache.json under {run_dir}")
    path = Path(RUN["repo"]) / json.loads(found[-1].read_text())["path"]  # relative paths are the repo's
    log(f"cache warm: {' '.join(overrides) or '(defaults)'} -> {path}")
    return path


def time_command(c: Command, out: Path, k: int) -> tuple[float, float, int]:
    """(seconds, load at start, return code) of one run of ``c``; its log in ``<out>/<name>/<k>.log``."""
    run_out = out / c.name / str(k)
    run_out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, c.script, *c.overrides, *RUN["extra"], f"paths.output_dir={run_out}"]
    ld = load1()
    with open(out / c.name / f"{k}.log", "w") as fh:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=RUN["repo"], env=child_env(), stdout=fh, stderr=subprocess.STDOUT).returncode
        sec = time.perf_counter() - t0
    return sec, ld, rc


# ------------------------------------------------------------------------------------------ floors


def cache_floor(path: Path, layers: int | None, m: int) -> float:
    """Seconds to read ``layers`` states of the cache at ``path`` into float32 plus ``m`` Gram products per state."""
    import numpy as np
    import torch

    from src.activations import Activations

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    acts = Activations.open(path, verify="off")
    n_states = len(acts.layer_names) if layers is None else layers
    total = 0.0
    for s in range(n_states):
        t0 = time.perf_counter()
        x = torch.from_numpy(np.asarray(acts.layer(s), dtype=np.float32))  # (N, D)
        for _ in range(m):
            g = x.T @ x  # (D, D)
        total += time.perf_counter() - t0
        del x
        if m:
            del g
    return total


def forward_seconds_per_utterance(corpus_overrides: tuple[str, ...], n: int = 4) -> float:
    """Encoder forward seconds per utterance of the default backbone on the corpus (``n`` utterances, best of 2)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from src.jobs.common import register_resolvers

    register_resolvers()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*corpus_overrides])
    cwd = os.getcwd()
    os.chdir(REPO)  # relative data/ and cache/ paths
    try:
        corpus = instantiate(cfg.data)
        backbone = instantiate(cfg.backbone)
        waves = [torch.as_tensor(corpus[i].audio, dtype=torch.float32) for i in range(min(n, len(corpus)))]
        best = math.inf
        with torch.no_grad():
            for _ in range(2):
                t0 = time.perf_counter()
                backbone.encode(waves)
                best = min(best, time.perf_counter() - t0)
    finally:
        os.chdir(cwd)
    return best / len(waves)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated names (see the module docstring)")
    ap.add_argument("--quick", action="store_true", help="only train, stress and commands (a few minutes)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per command; the minimum is reported")
    ap.add_argument("--out", default=f"/tmp/bench_commands/{time.strftime('%Y%m%d-%H%M%S')}", help="output dir")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor measurements")
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    ap.add_argument("--repo", default=None, help="run the commands of another checkout (e.g. `git archive` of the "
                    "before commit), with this repository's data/ and cache/ (how BEFORE_SECONDS were measured)")
    args = ap.parse_args(argv)
    if args.list:
        for c in COMMANDS:
            print(f"{c.name:22s} {c.script} {' '.join(c.overrides)}")
        return
    names = [c.name for c in COMMANDS if c.quick or not args.quick]
    if args.only:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in names if s not in BY_NAME]
        if unknown:
            ap.error(f"--only: unknown command(s) {unknown}; choose from {list(BY_NAME)}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    out = Path(args.out)
    if out.resolve().is_relative_to(REPO):
        ap.error(f"--out {out} is inside the repository; give a directory under /tmp")
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(f"[bench/commands] {s}", flush=True)  # noqa: E731
    if args.repo:
        RUN["repo"] = Path(args.repo).resolve()
        RUN["extra"] = [f"paths.data_dir={REPO / 'data'}", f"paths.cache_dir={REPO / 'cache'}"]
        log(f"commands of {RUN['repo']} (data and caches of {REPO})")
    env = child_env()
    log(f"out={out} OMP_NUM_THREADS={env['OMP_NUM_THREADS']} cores={os.cpu_count()} load={os.getloadavg()}")
    caches: dict[tuple[str, ...], Path] = {}
    rows = []
    for name in names:
        c = BY_NAME[name]
        if c.cache is not None and c.cache not in caches:
            caches[c.cache] = warm_cache(c.cache, out, log)
        times, loads, rcs = [], [], []
        for k in range(args.repeat):
            sec, ld, rc = time_command(c, out, k)
            times.append(sec)
            loads.append(ld)
            rcs.append(rc)
            log(f"{name} run {k}: {sec:.1f} s (load {ld:.1f}, exit {rc})")
        rows.append({"name": name, "cmd": f"{c.script} {' '.join(c.overrides)}".strip(), "seconds": min(times),
                     "load": loads[times.index(min(times))], "rc": max(rcs, key=abs)})  # fmt: skip
    # floors, after the timed runs (so they do not load the machine during them)
    fwd: dict[tuple[str, ...], float] = {}
    for r in rows:
        c = BY_NAME[r["name"]]
        r["floor"], r["how"] = math.nan, ""
        if args.no_floor:
            continue
        try:
            if c.floor == "cache":
                r["floor"] = cache_floor(caches[c.cache], c.layers, c.m)
                r["how"] = f"read {c.layers or 'all'} states + {c.m} X^T X/state"
            else:
                if c.corpus not in fwd:
                    fwd[c.corpus] = forward_seconds_per_utterance(c.corpus)
                r["floor"] = c.n * fwd[c.corpus]
                r["how"] = f"{c.n} x encoder forward ({fwd[c.corpus]:.2f} s)"
        except Exception as e:  # a floor that cannot be measured is reported, not fatal
            r["how"] = f"floor failed: {type(e).__name__}: {e}"[:80]
    print()
    print(f"{'command':52s} {'seconds':>9s} {'load':>5s} {'exit':>4s} {'floor_s':>8s} {'ratio':>7s} {'before':>8s}  floor")
    for r in rows:
        ratio = r["seconds"] / r["floor"] if r["floor"] and r["floor"] == r["floor"] else math.nan
        before = BEFORE_SECONDS.get(r["name"])
        print(f"{r['cmd'][:52]:52s} {r['seconds']:9.1f} {r['load']:5.1f} {r['rc']:4d} {r['floor']:8.2f} {ratio:7.1f} "
              f"{before if before is not None else float('nan'):8.1f}  {r['how']}")  # fmt: skip
    slowest = sorted(BEFORE_SECONDS, key=BEFORE_SECONDS.get, reverse=True)[:5]
    now = {r["name"]: r["seconds"] for r in rows if r["rc"] == 0}
    speedups = {n: BEFORE_SECONDS[n] / now[n] for n in slowest if n in now}
    missing = [n for n in slowest if n not in now]
    print()
    print(f"before: commit {BEFORE_COMMIT[:10]} ({BEFORE_DATE}); " +
          ", ".join(f"{n} {BEFORE_SECONDS[n]:.0f} s (load {BEFORE_LOAD.get(n, math.nan):.1f})" for n in slowest))  # fmt: skip
    if speedups:
        print("speed-ups: " + ", ".join(f"{n} {v:.2f}x" for n, v in speedups.items()))
    report(slowest5=",".join(slowest) or "none", missing=",".join(missing) or "none")
    report(slowest5_min_speedup=min(speedups.values()) if speedups else math.nan)


if __name__ == "__main__":
    main()
