"""Fail early, fail with words: a cache that does not fit is an error before anything is
allocated, and layer files are reserved up front (no SIGBUS on a full disk mid-build)."""

from __future__ import annotations

import errno
import os
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from src.activations import ActivationCache, CacheError
from src.datamodules.corpus import TextGridCorpus
from tests.helpers import FakeBackbone


@pytest.fixture()
def corpus(tone_corpus_dir):
    return TextGridCorpus(tone_corpus_dir)


def _need(bb, corpus, itemsize):
    total = sum(bb.num_frames(corpus.num_samples(i)) for i in range(len(corpus)))
    return total * bb.hidden_size * itemsize * len(bb.layer_names)


def test_not_enough_free_space_is_an_error_before_allocating(corpus, tmp_path, monkeypatch):
    bb = FakeBackbone(hidden_size=32)
    need = _need(bb, corpus, 4)
    seen = []

    def usage(path):
        seen.append(os.path.abspath(path))
        return SimpleNamespace(total=10**12, used=10**12 - need // 2, free=need // 2)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    cache = ActivationCache(tmp_path / "cache", dtype="float32", progress=False)
    with pytest.raises(CacheError) as err:
        cache.get(bb, corpus)
    msg = str(err.value)
    gb = re.findall(r"([\d.]+) GB", msg)
    assert len(gb) >= 2 and float(gb[0]) >= need / 1e9 - 0.005 and float(gb[1]) == pytest.approx(need / 2e9, abs=0.005)
    assert "needs" in msg and "free" in msg and str(tmp_path / "cache") in msg and "paths.cache_dir" in msg
    assert seen and all(s.startswith(str(tmp_path)) for s in seen)
    assert bb.calls == 0 and not list((tmp_path / "cache").glob("*partial*")) and not list((tmp_path / "cache").glob("*/"))
    # enough space: the same build goes through
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**12, used=0, free=10**12))
    assert cache.get(bb, corpus).total_frames > 0


def test_layer_files_are_reserved_up_front(corpus, tmp_path, monkeypatch):
    bb = FakeBackbone(hidden_size=32)
    calls = []
    real = os.posix_fallocate

    def fallocate(fd, offset, length):
        calls.append((offset, length))
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)

    class Killed(RuntimeError):
        pass

    def boom(*a, **kw):
        raise Killed  # killed before any frame is written

    monkeypatch.setattr(bb, "encode", boom)
    cache = ActivationCache(tmp_path, dtype="float32", progress=False)
    with pytest.raises(Killed):
        cache.get(bb, corpus)
    final = cache.path_for(bb, corpus)
    files = sorted(final.with_name(final.name + ".partial").glob("layer_*.npy"))
    assert len(files) == 4 and len(calls) == 4
    assert sorted(calls) == sorted((0, f.stat().st_size) for f in files)
    for f in files:  # blocks allocated although nothing was written: no sparse holes
        assert f.stat().st_blocks * 512 >= f.stat().st_size


def test_file_systems_without_fallocate_fall_back_silently(corpus, tmp_path, monkeypatch):
    for code in (errno.EOPNOTSUPP, errno.EINVAL):
        def unsupported(fd, offset, length, code=code):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "posix_fallocate", unsupported)
        acts = ActivationCache(tmp_path / str(code), dtype="float32", progress=False).get(FakeBackbone(), corpus)
        assert np.isfinite(np.asarray(acts.layer("final_norm"))).all()


def test_no_space_to_reserve_is_an_error_leaving_nothing(corpus, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    bb = FakeBackbone()
    with pytest.raises(CacheError, match=r"no space left to reserve .* GB for .*layer_00\.npy.*paths\.cache_dir"):
        ActivationCache(tmp_path, dtype="float32", progress=False).get(bb, corpus)
    assert bb.calls == 0 and not list(tmp_path.glob("*partial*")) and not list(tmp_path.glob("*/meta.json"))
