"""DDP on CPU (gloo, 2 processes): extraction byte-identical to one process, probe metrics equal
to one process, results / figures / W&B written once by global rank 0, external launches
(torchrun-style environment) and a killed distributed build that resumes.

Every run is a subprocess (Lightning's launcher re-runs the script for rank 1); the children
get ``OMP_NUM_THREADS=1`` so one and two processes compute with the same thread count (the
precondition of byte-identical caches).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT, make_tone_corpus
from tests.helpers import run_cli

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_SILENT": "true"}
DDP2 = "{accelerator:cpu,devices:2,strategy:ddp}"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus12(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("c12ddp"), num_utterances=12, with_tracks=True, vocabulary=6)


def args(tmp: Path, corpus: Path, model: Path, cache: Path) -> list[str]:
    return [
        "data=textgrid", f"data.root={corpus}", f"paths.cache_dir={cache}", f"paths.output_dir={tmp / 'outputs'}",
        "cache.progress=false", "n_boot=20", "split.by=utterance", "split.test_fraction=0.25",
        "split.val_fraction=0.25", "backbone=local", f"backbone.model_id={model}", "backbone.name=tiny",
        "+trainer.enable_progress_bar=false",
    ]  # fmt: skip


def only_cache(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1 and (dirs[0] / "meta.json").exists(), sorted(p.name for p in root.iterdir())
    return dirs[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_cache(a: Path, b: Path) -> None:
    """Every layer file, index.npz and the per-layer stats of two caches are identical."""
    ma, mb = json.loads((a / "meta.json").read_text()), json.loads((b / "meta.json").read_text())
    assert [f["file"] for f in ma["files"]] == [f["file"] for f in mb["files"]]
    for fa, fb in zip(ma["files"], mb["files"]):
        assert sha256(a / fa["file"]) == sha256(b / fb["file"]) == fa["sha256"] == fb["sha256"], fa["file"]
    assert sha256(a / "index.npz") == sha256(b / "index.npz") == ma["index_sha256"] == mb["index_sha256"]
    assert ma["layer_stats"] == mb["layer_stats"]
    assert ma["total_frames"] == mb["total_frames"] > 0
    leftovers = [p.name for p in b.parent.iterdir() if p.name.endswith((".partial", ".ddp.json", ".partial-new"))]
    assert leftovers == []


def wandb_runs(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*"))


def test_ddp_extraction_and_probe_training_match_one_process(tmp_path, corpus12, tiny_w2v2_dir):
    """cache.trainer=DDP x2 and trainer=ddp x2 vs one process: same cache bytes, same metrics;
    rank 1 trains its half of every batch and writes nothing."""
    common = [*args(tmp_path, corpus12, tiny_w2v2_dir, tmp_path / "c1"), "task=ema", "batch_size=33",
              "trainer.max_epochs=4", "probe.min_steps=0", "probe.patience=0"]  # fmt: skip
    one = tmp_path / "one"
    run_cli("train.py", [*common, "logger=none"], one, env_extra=CHILD_ENV)
    two = tmp_path / "two"
    two_args = [a.replace(str(tmp_path / "c1"), str(tmp_path / "c2")) for a in common]
    run_cli("train.py", [*two_args, "trainer=ddp", "trainer.max_epochs=4", f"cache.trainer={DDP2}", "logger=wandb"],
            two, env_extra=CHILD_ENV)  # fmt: skip
    assert_same_cache(only_cache(tmp_path / "c1"), only_cache(tmp_path / "c2"))

    # probe metrics: batches of 33 split 17/16 over 2 ranks; the per-item loss weights W/B of each
    # rank's share (RankShare) make DDP's averaged gradient the one-process batch-mean gradient up to
    # float32 summation order (without them Pearson r differed by up to 3.4e-3 here)
    counts = json.loads((one / "results.json").read_text())["meta"]["counts"]
    assert counts["train_items"] > 33, counts
    a, b = pd.read_csv(one / "results.csv"), pd.read_csv(two / "results.csv")
    key = ["layer", "target", "metric", "split"]
    m = a.merge(b, on=key, suffixes=("_1", "_2"), validate="one_to_one")
    assert len(m) == len(a) == len(b) and len(a) >= 40
    r = m[m.metric == "pearson_r"]
    assert len(r) >= 24 and r.value_1.abs().max() > 0.1  # real numbers, not a degenerate run
    np.testing.assert_allclose(m.value_2, m.value_1, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(m[m.metric == "best_epoch"].value_2, m[m.metric == "best_epoch"].value_1)

    # written once, by rank 0: one W&B run, rank 1 says it wrote nothing, no file of its own but its log
    assert len(wandb_runs(two)) == 1
    child_log = (two / "train_ddp_process_1.log").read_text()
    assert "rank 1 of 2" in child_log and "rank 1: probing done, results are written by rank 0" in child_log
    assert "results in" not in child_log and "results in" in (two / "train.log").read_text()
    produced = {p.name for p in two.iterdir()}
    assert {"results.csv", "results.json", "config_resolved.yaml", "train.log", "train_ddp_process_1.log"} <= produced
    assert not [n for n in produced if "rank1" in n or "rank_1" in n]


@pytest.mark.slow  # about 40 s: two processes importing the stack
def test_child_of_a_ddp_extraction_stops_when_training_is_single_process(tmp_path, corpus12, tiny_w2v2_dir):
    """cache.trainer=DDP x2, trainer=default: rank 1 helps extract, then returns; rank 0 alone trains and writes."""
    run = tmp_path / "run"
    run_cli("train.py", [*args(tmp_path, corpus12, tiny_w2v2_dir, tmp_path / "cache"), "task=ema", "probe=ridge",
                         f"cache.trainer={DDP2}", "logger=wandb"], run, env_extra=CHILD_ENV)  # fmt: skip
    child_log = (run / "train_ddp_process_1.log").read_text()
    assert "rank 1 of 2" in child_log  # it did take part in the extraction
    assert "this rank stops here" in child_log and "probing" not in child_log and "results in" not in child_log
    assert len(wandb_runs(run)) == 1
    df = pd.read_csv(run / "results.csv")
    assert len(df[(df.metric == "pearson_r") & (df.split == "test")]) > 0
    meta = json.loads((only_cache(tmp_path / "cache") / "meta.json").read_text())
    assert meta["num_utterances"] == 12 and meta["complete"]


# ----------------------------------------------------------------------------- protocol units


def test_rank_zero_failure_is_reported_and_stale_handshakes_are_ignored(tmp_path):
    from src.activations import ActivationCache, CacheError

    cache = ActivationCache(tmp_path, progress=False, wait_timeout=0.6)
    final = tmp_path / "bb__corpus__0123"
    hs = cache._handshake(final)
    hs.write_text(json.dumps({"token": "old-launch", "state": "failed", "error": "CacheError: disk full"}))
    with pytest.raises(CacheError, match=r"rank 1 waited 1 s for rank 0's plan .*cache.wait_timeout"):
        cache._wait(final, "this-launch", 1, "rank 0's plan", lambda m: m is not None)  # stale: ignored
    hs.write_text(json.dumps({"token": "this-launch", "state": "failed", "error": "CacheError: disk full"}))
    with pytest.raises(CacheError, match="failed on rank 0: CacheError: disk full"):
        cache._wait(final, "this-launch", 1, "rank 0's plan", lambda m: m is not None)
    hs.write_text(json.dumps({"token": "this-launch", "state": "predict", "batches": [[0, 1], [2]]}))
    msg = cache._wait(final, "this-launch", 1, "rank 0's plan", lambda m: m is not None)
    assert msg["batches"] == [[0, 1], [2]]


def test_env_rank_reads_every_launcher(monkeypatch):
    from src import distributed as D

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert D.env_rank() == 0 and D.is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's subprocess launcher, node 0
    assert D.env_rank() == 1 and not D.is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # node 1's first process is not global rank 0
    assert D.env_rank() > 0
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert D.env_rank() == 3
    monkeypatch.setenv("RANK", "2")  # torchrun's word wins
    assert D.env_rank() == 2
    monkeypatch.setenv("RANK", "0")
    assert D.is_global_zero()


def test_only_rank_zero_stays_for_single_process_work(monkeypatch):
    from functools import partial

    import lightning as L

    from src.jobs.common import stays_after_cache

    for var in ("RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    single = partial(L.Trainer, accelerator="cpu", devices=1, enable_checkpointing=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert stays_after_cache(single) and stays_after_cache(None)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not stays_after_cache(single) and not stays_after_cache(None)
    ddp = partial(L.Trainer, accelerator="cpu", devices=2, strategy="ddp", enable_checkpointing=False)
    assert stays_after_cache(ddp)  # a rank of a DDP probe trainer trains (and writes nothing)


# ----------------------------------------------------------------------------- external launches

BUILD_SCRIPT = """
import logging, os, sys
sys.path.insert(0, {root!r})
logging.basicConfig(level=logging.INFO)
from src.activations import ActivationCache
from src.backbones.hf import HFBackbone
from src.datamodules.corpus import TextGridCorpus

cache_root, corpus_dir, model_dir, crash = sys.argv[1:5]
bb = HFBackbone(model_dir, name="tiny")
if crash == "1":  # every rank dies at its second batch (after flushing the first: flush_every=1)
    encode, calls = bb.encode, []
    def dying(waves):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return encode(waves)
    bb.encode = dying
cache = ActivationCache(cache_root, dtype="float32", batch_size=2, flush_every=1, progress=False,
                        trainer={{"accelerator": "cpu", "devices": 2, "strategy": "ddp"}}, wait_timeout=300)
acts = cache.get(bb, TextGridCorpus(corpus_dir))
print("OPENED", os.environ["RANK"], acts.path, len(acts), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(script: Path, argv: list[str], tmp: Path) -> list[subprocess.CompletedProcess]:
    """Two ranks started together with torchrun's environment (Lightning: TorchElasticEnvironment)."""
    port = str(_free_port())
    procs = []
    for r in (0, 1):
        env = {**os.environ, **CHILD_ENV, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "RANK": str(r), "LOCAL_RANK": str(r), "GROUP_RANK": "0", "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": f"test-{port}"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(script), *argv], env=env, cwd=tmp, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    out = []
    for p in procs:
        so, se = p.communicate(timeout=400)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    return out


@pytest.mark.slow  # about 75 s: four processes
def test_externally_launched_ranks_build_resume_after_a_kill_and_match_one_process(tmp_path, corpus12, tiny_w2v2_dir):
    from src.activations import ActivationCache
    from src.backbones.hf import HFBackbone
    from src.datamodules.corpus import TextGridCorpus

    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT.format(root=str(ROOT)))
    root = tmp_path / "ddp"
    first = launch_two(script, [str(root), str(corpus12), str(tiny_w2v2_dir), "1"], tmp_path)
    assert all(p.returncode != 0 for p in first), [p.stdout for p in first]
    partial = [p for p in root.iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and not [p for p in root.iterdir() if (p / "meta.json").exists()]  # never readable
    done = np.load(partial[0] / "done.npy") | np.load(partial[0] / "done_rank1.npy")
    assert 0 < done.sum() < 12  # each rank flushed its first batch

    second = launch_two(script, [str(root), str(corpus12), str(tiny_w2v2_dir), "0"], tmp_path)
    for p in second:
        assert p.returncode == 0, p.stderr[-4000:]
        assert "OPENED" in p.stdout
    assert f"{12 - int(done.sum())} of 12 utterances left" in second[0].stderr  # resumed, not restarted

    ref_root = tmp_path / "one"
    ActivationCache(ref_root, dtype="float32", batch_size=2, progress=False).get(
        HFBackbone(str(tiny_w2v2_dir), name="tiny"), TextGridCorpus(str(corpus12))
    )
    assert_same_cache(only_cache(ref_root), only_cache(root))


def test_fewer_batches_than_ranks_every_rank_gets_one(monkeypatch):
    """Lightning refuses an empty loader on any rank: a rank without a batch of its own re-runs
    the last one (its writer is told not to write, see ActivationCache._extract)."""
    from src.activations import builder as A

    batches = [[0, 1], [2], [3, 4]]
    got = {}
    for rank in range(5):
        monkeypatch.setattr(A, "_rank_and_world", lambda r=rank: (r, 5))
        got[rank] = list(A._FixedBatches(batches))
    assert got == {0: [[0, 1]], 1: [[2]], 2: [[3, 4]], 3: [[3, 4]], 4: [[3, 4]]}
    monkeypatch.setattr(A, "_rank_and_world", lambda: (1, 2))
    assert list(A._FixedBatches(batches)) == [[2]] and len(A._FixedBatches(batches)) == 1


@pytest.mark.slow  # about 40 s
def test_one_utterance_two_ranks_builds_the_single_process_bytes(tmp_path, tiny_w2v2_dir):
    from src.activations import ActivationCache
    from src.backbones.hf import HFBackbone
    from src.datamodules.corpus import TextGridCorpus

    corpus = make_tone_corpus(tmp_path / "c1", num_utterances=1)
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT.format(root=str(ROOT)))
    for p in launch_two(script, [str(tmp_path / "ddp"), str(corpus), str(tiny_w2v2_dir), "0"], tmp_path):
        assert p.returncode == 0 and "OPENED" in p.stdout, p.stderr[-4000:]
    ActivationCache(tmp_path / "one", dtype="float32", batch_size=2, progress=False).get(
        HFBackbone(str(tiny_w2v2_dir), name="tiny"), TextGridCorpus(str(corpus))
    )
    assert_same_cache(only_cache(tmp_path / "one"), only_cache(tmp_path / "ddp"))


def test_single_process_jobs_still_wait_on_the_lock_and_open_what_another_built(tmp_path, corpus12, tiny_w2v2_dir):
    """Non-DDP jobs (multirun): one holds the lock while building; a second one blocks on it, then
    opens the finished cache without encoding anything."""
    import shutil
    import threading

    from src.activations import ActivationCache
    from src.backbones.hf import HFBackbone
    from src.datamodules.corpus import TextGridCorpus
    from src.fileutil import file_lock

    corpus, bb = TextGridCorpus(str(corpus12)), HFBackbone(str(tiny_w2v2_dir), name="tiny")
    waiter = ActivationCache(tmp_path / "shared", dtype="float32", progress=False)
    final = waiter.path_for(bb, corpus)
    calls, out = [], {}
    encode = bb.encode
    bb.encode = lambda w: (calls.append(len(w)), encode(w))[1]
    with file_lock(final.with_name(final.name + ".lock")):  # "the other job" holds the lock
        t = threading.Thread(target=lambda: out.setdefault("acts", waiter.get(bb, corpus)))
        t.start()
        t.join(timeout=3.0)
        assert t.is_alive() and "acts" not in out  # blocked on the lock, not building
        built = ActivationCache(tmp_path / "elsewhere", dtype="float32", progress=False).get(bb, corpus)
        n_built = len(calls)
        shutil.copytree(built.path, final)  # the other job's build lands under the shared name
    t.join(timeout=60)
    assert not t.is_alive() and out["acts"].path == final and len(out["acts"]) == 12
    assert len(calls) == n_built > 0  # the waiting job encoded nothing
