"""python -m src.jobs.cache list|prune: real caches (built with a fake backbone), a real orphan
.partial (a build killed mid-way), a live build (its lock held by another process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from src.activations import ActivationCache, Activations
from src.datamodules.corpus import TextGridCorpus
from src.jobs.cache import PruneError, list_caches, main, prune_caches
from tests.helpers import FakeBackbone

ROOT = Path(__file__).resolve().parents[1]


class _Killed(RuntimeError):
    pass


@pytest.fixture()
def corpus(tone_corpus_dir):
    return TextGridCorpus(tone_corpus_dir)


@pytest.fixture()
def caches(corpus, tmp_path, monkeypatch):
    """Two complete caches (float32 and float16 of one backbone) and one orphan partial (another backbone)."""
    root = tmp_path / "cache"
    a = ActivationCache(root, dtype="float32", progress=False).get(
        FakeBackbone(hidden_size=8, name="fa"), corpus
    )
    b = ActivationCache(root, dtype="float16", progress=False).get(
        FakeBackbone(hidden_size=8, name="fa"), corpus
    )
    bb = FakeBackbone(hidden_size=8, name="fc")
    cache = ActivationCache(root, dtype="float32", batch_size=1, flush_every=1, progress=False)
    real, calls = bb.encode, {"n": 0}

    def dying(waves, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Killed("killed")
        return real(waves, **kw)

    monkeypatch.setattr(bb, "encode", dying)
    with pytest.raises(_Killed):
        cache.get(bb, corpus)
    monkeypatch.undo()
    orphan = cache.path_for(bb, corpus).with_name(cache.path_for(bb, corpus).name + ".partial")
    assert orphan.is_dir()
    return root, a.path, b.path, orphan


def _du(path: Path) -> int:
    """Allocated bytes as du(1) counts them (the independent reference for the listed size)."""
    out = subprocess.run(
        ["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[0]) - os.stat(path).st_blocks * 512  # du counts the directory itself too


def _hold_lock(lock: Path):
    """Another process holding a build lock (as a running build does), until terminated."""
    code = ("import fcntl, sys, time; fh = open(sys.argv[1], 'a+'); fcntl.flock(fh, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(60)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_list_shows_key_backbone_corpus_size_and_last_use(caches):
    root, a, b, orphan = caches
    os.utime(a / "meta.json", (1_700_000_000, (a / "meta.json").stat().st_mtime))  # a literal last use
    rows = {r["name"]: r for r in list_caches(root)}
    assert sorted(rows) == sorted([a.name, b.name, orphan.name])  # lock files are not caches
    ra = rows[a.name]
    assert (ra["key"], ra["status"], ra["backbone"], ra["corpus"], ra["dtype"]) == (
        a.name.split("__")[-1], "complete", "fa", "tones0", "float32")  # fmt: skip
    assert ra["last_use"] == 1_700_000_000 and ra["bytes"] == _du(a)
    assert {r["name"]: r for r in list_caches(root)}[a.name]["last_use"] == 1_700_000_000  # listing is no use
    assert rows[b.name]["dtype"] == "float16" and rows[b.name]["key"] != ra["key"]
    ro = rows[orphan.name]
    assert (ro["status"], ro["backbone"], ro["key"], ro["bytes"]) == (
        "orphan",
        "fc",
        orphan.name.split("__")[-1][:12],
        _du(orphan),
    )


def test_list_cli_prints_a_table(caches, capsys):
    root, a, b, orphan = caches
    assert main(["list", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    key = a.name.split("__")[-1]
    line = next(ln for ln in out.splitlines() if ln.startswith(key))
    assert (
        "complete" in line
        and "fa" in line
        and "tones0" in line
        and "float32" in line
        and line.endswith(a.name)
    )
    assert any(ln.split()[1] == "orphan" and ln.endswith(orphan.name) for ln in out.splitlines()[2:-1])
    assert out.splitlines()[-1].startswith("3 cache directories, ")


def test_prune_by_key_removes_only_that_cache(caches, corpus):
    root, a, b, orphan = caches
    freed = list_caches(root)
    removed = prune_caches([a.name.split("__")[-1]], root)
    assert [r["name"] for r in removed] == [a.name] and not a.exists()
    assert b.is_dir() and orphan.is_dir()
    np.testing.assert_array_equal(np.asarray(Activations(b).layer(0)).shape, (Activations(b).total_frames, 8))
    assert sum(r["bytes"] for r in freed if r["name"] == a.name) == removed[0]["bytes"] > 0
    with pytest.raises(PruneError, match=r"no cache 'ffffffffffff' under .*keys there: "):
        prune_caches(["ffffffffffff"], root)


def test_prune_refuses_a_cache_whose_build_is_running(caches):
    root, a, b, orphan = caches
    final = orphan.name[: -len(".partial")]
    proc = _hold_lock(root / f"{final}.lock")
    try:
        assert {r["name"]: r["status"] for r in list_caches(root)}[orphan.name] == "building"
        with pytest.raises(
            PruneError, match=rf"a running build holds the lock of {final}.*nothing was removed"
        ):
            prune_caches([a.name, final], root)
        assert a.is_dir() and orphan.is_dir()  # nothing removed, not even the free one
        removed = prune_caches([], root, partial=True)  # --partial skips a partial a live build holds
        assert removed == [] and orphan.is_dir()
        assert main(["prune", final, "--root", str(root)]) == 1
    finally:
        proc.terminate()
        proc.wait()
    assert {r["name"]: r["status"] for r in list_caches(root)}[orphan.name] == "orphan"  # the build died
    removed = prune_caches([], root, partial=True)
    assert [r["name"] for r in removed] == [orphan.name] and not orphan.exists()
    assert a.is_dir() and b.is_dir()  # complete caches are never pruned by --partial


def test_prune_cli_dry_run_then_prune(caches, capsys):
    root, a, b, orphan = caches
    assert main(["prune", b.name, "--partial", "--dry-run", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert (
        f"would remove {b}" in out
        and f"would remove {orphan}" in out
        and "would remove 2 cache directories" in out
    )
    assert b.is_dir() and orphan.is_dir()
    assert main(["prune", b.name, "--partial", "--root", str(root)]) == 0
    assert "removed 2 cache directories" in capsys.readouterr().out
    assert not b.exists() and not orphan.exists() and a.is_dir()


def test_a_pruned_cache_is_rebuilt_on_the_next_get(caches, corpus):
    root, a, _, _ = caches
    prune_caches([a.name], root)
    bb = FakeBackbone(hidden_size=8, name="fa")
    acts = ActivationCache(root, dtype="float32", progress=False).get(bb, corpus)
    assert acts.path == a and bb.calls > 0


def test_module_cli_runs_without_hydra_overrides(caches):
    root, a, _, _ = caches
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "src.jobs.cache", "list", "--root", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert a.name in proc.stdout and time.perf_counter() - t0 < 60


def test_opening_a_cache_is_its_last_use(caches, tmp_path):
    root, a, _, _ = caches
    probe = tmp_path / "atime_probe"
    probe.write_text("x")
    os.utime(probe, (1_600_000_000, probe.stat().st_mtime))
    probe.read_text()
    if probe.stat().st_atime == 1_600_000_000:
        pytest.skip("this file system does not record access times (noatime)")
    os.utime(a / "meta.json", (1_700_000_000, (a / "meta.json").stat().st_mtime))
    Activations(a)
    used = {r["name"]: r for r in list_caches(root)}[a.name]["last_use"]
    assert used > time.time() - 600
