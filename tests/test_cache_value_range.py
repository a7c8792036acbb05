"""verify=sampled also checks every value of a layer against the min/max meta.json recorded at
build time, on first open: damage between the sampled checksum blocks is a CacheError that
says "damaged" (naming file, row, utterance), never a float16-overflow hint at probe time."""

from __future__ import annotations

import json
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


def _build(corpus, root, monkeypatch, dtype):
    monkeypatch.setattr(A, "CHECKSUM_BLOCK", BLOCK)
    acts = ActivationCache(root, dtype=dtype, progress=False).get(FakeBackbone(hidden_size=64), corpus)
    monkeypatch.setattr(A, "CHECKSUM_BLOCK", 1 << 16)
    return acts.path


def _gap_value_offset(f, itemsize):
    """Byte offset of one value strictly between sampled blocks 3 and 4 (aligned to a value)."""
    (a, n), (b, _) = sampled_blocks(f.stat().st_size, BLOCK, 16)[3:5]
    header = int(np.load(f, mmap_mode="r").offset)
    off = a + n + 2 * itemsize
    off += (header - off) % itemsize  # values start at the header's end
    assert off + itemsize <= b
    return off, header


def _poke(f, offset, data):
    with open(f, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _expect(path, f, off, header, d, itemsize):
    """The row, utterance and frame of byte ``off``, from the index file (np.load, not the reader)."""
    row, col = divmod((off - header) // itemsize, d)
    with np.load(path / "index.npz") as idx:
        offsets, ids = idx["offsets"], [str(x) for x in idx["ids"]]
    u = max(k for k in range(len(ids)) if offsets[k] <= row)
    return row, col, ids[u], row - int(offsets[u])


@pytest.mark.parametrize("dtype, value, shown", [
    ("float32", np.float32(1e30), "1e+30"),
    ("float32", np.float32(np.nan), "nan"),
    ("float16", np.float16(np.inf), "inf"),
    ("float16", np.float16(np.nan), "nan"),
    ("float16", np.float16(60000.0), "60000"),  # finite, beyond the layer's recorded max
])  # fmt: skip
def test_damage_between_sampled_blocks_is_damaged_not_overflow(
    corpus, tmp_path, monkeypatch, dtype, value, shown
):
    path = _build(corpus, tmp_path / "c", monkeypatch, dtype)
    f = path / "layer_01.npy"
    itemsize = np.dtype(dtype).itemsize
    off, header = _gap_value_offset(f, itemsize)
    _poke(f, off, np.array([value]).tobytes())
    row, col, utt, frame = _expect(path, f, off, header, 64, itemsize)
    acts = Activations(path)  # opening checks sizes only
    acts.layer(0)  # an undamaged layer opens
    with pytest.raises(CacheError) as e:
        acts.layer(1)
    msg = str(e.value)
    assert re.search(rf"{re.escape(str(f))} is damaged: row {row} \(utterance '{utt}' frame {frame}\), column "
                     rf"{col} holds {re.escape(shown)}, outside the range", msg), msg  # fmt: skip
    assert f"Delete the directory {path}" in msg and "overflow" not in msg
    with pytest.raises(CacheError, match="damaged"):
        Activations(path, verify="full").layer(1)  # the whole-file hash sees it too
    Activations(path, verify="off").layer(1)  # off: header and size only


def test_damage_reaches_probe_features_as_damaged(corpus, tmp_path, monkeypatch):
    from src.probes.data import CacheFeatures

    path = _build(corpus, tmp_path / "c", monkeypatch, "float16")
    f = path / "layer_02.npy"
    off, _ = _gap_value_offset(f, 2)
    _poke(f, off, np.array([np.float16(np.nan)]).tobytes())
    with pytest.raises(CacheError, match=r"layer_02\.npy is damaged: .* holds nan"):
        CacheFeatures(Activations(path), [2], np.arange(10))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_clean_caches_pass_and_extremes_stay_in_range(corpus, tmp_path, monkeypatch, dtype):
    path = _build(corpus, tmp_path / "c", monkeypatch, dtype)
    meta = json.loads((path / "meta.json").read_text())
    acts = Activations(path)
    for k, st in enumerate(meta["layer_stats"]):
        x = np.asarray(acts.layer(k), dtype=np.float64)
        # the stored extremes are the recorded float32 extremes rounded to the stored dtype
        assert x.min() == float(np.dtype(dtype).type(st["min"])) and x.max() == float(
            np.dtype(dtype).type(st["max"])
        )


def test_in_range_overwrite_between_blocks_needs_full(corpus, tmp_path, monkeypatch):
    path = _build(corpus, tmp_path / "c", monkeypatch, "float32")
    f = path / "layer_01.npy"
    off, header = _gap_value_offset(f, 4)
    x = np.load(f)
    inside = np.float32((float(x.min()) + float(x.max())) / 2)
    assert x.reshape(-1)[(off - header) // 4] != inside
    _poke(f, off, np.array([inside]).tobytes())
    Activations(path).layer(1)  # documented limit: an in-range value between sampled blocks
    with pytest.raises(CacheError, match=rf"{re.escape(str(f))} is damaged: checksum mismatch"):
        Activations(path, verify="full").layer(1)
