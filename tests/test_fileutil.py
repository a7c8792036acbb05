"""Atomic single-file writes (src/fileutil.py): a complete write replaces the file, a crash
mid-write leaves the old file byte for byte and no temporary file beside it."""

from __future__ import annotations

import os

import pytest

from src.fileutil import atomic_path, atomic_write, temp_path


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_text_and_bytes(tmp_path):
    f = tmp_path / "a.csv"
    assert atomic_write(f, "x,y\n1,é\n") == f
    assert f.read_bytes() == b"x,y\n1,\xc3\xa9\n"  # utf-8, no newline translation
    atomic_write(f, b"\x00\x01", fsync=True)
    assert f.read_bytes() == b"\x00\x01"
    assert _listing(tmp_path) == ["a.csv"]


def test_crash_mid_write_keeps_old_file_and_no_temp(tmp_path):
    f = tmp_path / "results.csv"
    f.write_bytes(b"old\n")

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), atomic_path(f) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half a ")
            fh.flush()
        assert tmp.parent == tmp_path and tmp.name.startswith(".results.csv.") and tmp.exists()
        raise Boom
    assert f.read_bytes() == b"old\n"
    assert _listing(tmp_path) == ["results.csv"]

    class BadBytes:  # bytes() fails before anything is written
        def __bytes__(self):
            raise Boom

    with pytest.raises(Boom):
        atomic_write(f, BadBytes())  # type: ignore[arg-type]
    assert f.read_bytes() == b"old\n"
    assert _listing(tmp_path) == ["results.csv"]


def test_atomic_path_replaces_and_keeps_umask_mode(tmp_path):
    f = tmp_path / "head.pt"
    f.write_bytes(b"old")
    with atomic_path(f, fsync=True) as tmp:
        tmp.write_bytes(b"new")
        assert f.read_bytes() == b"old"  # nothing visible before the block ends
    assert f.read_bytes() == b"new"
    assert _listing(tmp_path) == ["head.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~umask


def test_writer_that_wrote_nothing_is_an_error_and_keeps_the_old_file(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("{}")
    with pytest.raises(FileNotFoundError), atomic_path(f):
        pass
    assert f.read_text() == "{}"


def test_temp_names_are_unique_and_hidden(tmp_path):
    a, b = temp_path(tmp_path / "r.csv"), temp_path(tmp_path / "r.csv")
    assert a != b and a.parent == tmp_path and a.name.startswith(".r.csv.") and a.name.endswith(".tmp")
