"""A damaged cache is never read as data: every mismatch is a CacheError naming the file and
saying to delete and rebuild; a read-only complete cache opens without any write."""

from __future__ import annotations

import builtins
import io
import json
import os
import re

import numpy as np
import pytest

import src.activations.reader as A
from src.activations import ActivationCache, Activations, CacheError, sampled_blocks
from src.datamodules.corpus import TextGridCorpus
from tests.helpers import FakeBackbone

BLOCK = 512  # small sampled blocks, so that these small files are sampled, not hashed whole


@pytest.fixture()
def corpus(tone_corpus_dir):
    return TextGridCorpus(tone_corpus_dir)


@pytest.fixture()
def built(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(A, "CHECKSUM_BLOCK", BLOCK)
    cache = ActivationCache(tmp_path / "cache", dtype="float32", progress=False)
    bb = FakeBackbone(hidden_size=64)
    acts = cache.get(bb, corpus)
    monkeypatch.setattr(A, "CHECKSUM_BLOCK", 1 << 16)  # readers use the block size recorded in meta.json
    return cache, bb, acts.path


def _blocks(f):
    return sampled_blocks(f.stat().st_size, BLOCK, 16)


def _poke(f, offset, data):
    with open(f, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _assert_damaged(path, file, **kw):
    with pytest.raises(CacheError, match=rf"{re.escape(str(file))}.*damaged.*Delete the directory {re.escape(str(path))}"):
        acts = Activations(path, **kw)
        for k in range(acts.num_states):
            acts.layer(k)


def test_meta_records_each_file(built):
    _, _, path = built
    meta = json.loads((path / "meta.json").read_text())
    assert meta["checksum"] == {"algorithm": "sha256", "block_bytes": BLOCK, "blocks": 16}
    for entry in meta["files"]:
        f = path / entry["file"]
        arr = np.load(f, mmap_mode="r")
        assert entry["shape"] == list(arr.shape) and entry["dtype"] == arr.dtype.str == "<f4"
        assert entry["bytes"] == f.stat().st_size > 16 * BLOCK
        assert entry["sha256_sampled"] == A.sampled_sha256(f, BLOCK, 16) and entry["sha256"] == A.full_sha256(f)
    assert len(_blocks(path / "layer_00.npy")) == 16


@pytest.mark.parametrize("damage", ["random_in_block", "zeros_in_block", "header", "truncate", "extend",
                                    "reshape", "missing", "other_dtype"])  # fmt: skip
def test_damage_is_a_clear_error(built, corpus, damage):
    _, _, path = built
    f = path / "layer_02.npy"
    blocks = _blocks(f)
    if damage == "random_in_block":
        off, n = blocks[7]
        _poke(f, off + n // 2, np.random.default_rng(0).bytes(8))
    elif damage == "zeros_in_block":
        off, n = blocks[-1]
        _poke(f, off, bytes(n))
    elif damage == "header":
        _poke(f, 0, bytes(64))
    elif damage == "truncate":
        os.truncate(f, f.stat().st_size - 100)
    elif damage == "extend":
        os.truncate(f, f.stat().st_size + 4096)
    elif damage == "reshape":  # same bytes, other shape: the size is unchanged, the header is not
        arr = np.load(f)
        np.save(f, arr.reshape(arr.shape[0] // 2, -1) if arr.shape[0] % 2 == 0 else arr.reshape(-1))
        assert f.stat().st_size == json.loads((path / "meta.json").read_text())["files"][2]["bytes"]
    elif damage == "missing":
        f.unlink()
    elif damage == "other_dtype":
        np.save(f, np.load(f).astype(np.float16))
    _assert_damaged(path, f)
    if damage != "missing":
        _assert_damaged(path, f, verify="full")
    cache, bb, _ = built
    with pytest.raises(CacheError, match="damaged"):  # through the cache too: never rebuilt silently, never raw numpy
        cache.get(bb, corpus).layer(2)


def test_overwrite_between_sampled_blocks_needs_full_verify(built):
    _, _, path = built
    f = path / "layer_01.npy"
    (a, n), (b, _) = _blocks(f)[3:5]
    assert b - (a + n) > 16
    x = np.load(f, mmap_mode="r")
    inside = np.full(2, (float(x.min()) + float(x.max())) / 2, np.float32).tobytes()
    off = a + n + 8 - (a + n + 8 - int(x.offset)) % 4  # on a value boundary
    _poke(f, off, inside)  # between two sampled blocks, values inside the layer's recorded min/max
    acts = Activations(path)
    acts.layer(1)  # documented limit of the sampled check (out-of-range values: tests/test_cache_value_range.py)
    _assert_damaged(path, f, verify="full")


def test_verify_off_still_checks_size_and_header(built):
    _, _, path = built
    f = path / "layer_00.npy"
    off, n = _blocks(f)[5]
    _poke(f, off, b"\x01" * 8)
    Activations(path, verify="off").layer(0)  # off: no checksum
    os.truncate(f, f.stat().st_size - 8)
    _assert_damaged(path, f, verify="off")
    with pytest.raises(ValueError, match="verify"):
        Activations(path, verify="some")


def test_final_directory_without_meta_is_not_overwritten(built, corpus):
    cache, bb, path = built
    (path / "meta.json").unlink()
    with pytest.raises(CacheError, match=rf"{re.escape(str(path))} exists but is not a complete.*delete"):
        cache.get(bb, corpus)
    assert (path / "layer_00.npy").exists() and bb.calls == 1


def test_damaged_index_or_meta(built):
    _, _, path = built
    idx = path / "index.npz"
    _poke(idx, idx.stat().st_size // 2, b"\x00\xff" * 8)
    _assert_damaged(path, idx)
    (path / "meta.json").write_text('{"complete": tru')
    _assert_damaged(path, path / "meta.json")


def test_read_only_complete_cache_opens_without_writing(built, corpus, monkeypatch):
    cache, bb, path = built
    root = cache.root.resolve()
    before = {p: p.stat().st_mtime_ns for p in [root, *root.rglob("*")]}
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    writes = []

    def guarded(real):
        def opener(file, mode="r", *a, **kw):
            if isinstance(file, (str, os.PathLike)) and str(os.path.abspath(file)).startswith(str(root)):
                if any(c in mode for c in "wax+"):
                    writes.append(file)
                    raise PermissionError(f"read-only: {file}")
            return real(file, mode, *a, **kw)

        return opener

    def guarded_os_open(file, flags, *a, **kw):
        if str(os.path.abspath(file)).startswith(str(root)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(file)
            raise PermissionError(f"read-only: {file}")
        return real_os_open(file, flags, *a, **kw)

    real_os_open, real_access = os.open, os.access
    monkeypatch.setattr(builtins, "open", guarded(builtins.open))
    monkeypatch.setattr(io, "open", guarded(io.open))
    monkeypatch.setattr(os, "open", guarded_os_open)
    # tests run as root, which bypasses permissions: say so explicitly for the cache root
    monkeypatch.setattr(os, "access", lambda p, m, *a, **kw: False if (m & os.W_OK and str(os.path.abspath(p)).startswith(str(root)))
                        else real_access(p, m, *a, **kw))  # fmt: skip
    try:
        for verify in ("sampled", "full"):
            acts = ActivationCache(cache.root, dtype="float32", progress=False, verify=verify).get(bb, corpus)
            assert acts.path == path
            for k in range(acts.num_states):
                assert np.isfinite(np.asarray(acts.layer(k))).all()
    finally:
        monkeypatch.undo()
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert writes == []
    assert {p: p.stat().st_mtime_ns for p in [root, *root.rglob("*")]} == before


def test_missing_cache_under_read_only_root_says_where_to_build(corpus, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **kw: False if (m & os.W_OK and str(os.path.abspath(p)).startswith(str(ro)))
                        else real_access(p, m, *a, **kw))  # fmt: skip
    bb = FakeBackbone()
    for root in (ro, ro / "not" / "yet"):
        with pytest.raises(CacheError, match=rf"{re.escape(str(ro))} is read-only.*paths\.cache_dir=.*cache\.root="):
            ActivationCache(root, dtype="float32", progress=False).get(bb, corpus)
    assert list(ro.iterdir()) == [] and bb.calls == 0  # no lock file, no directory, no model run
