"""bench/scale.py: the synthetic cache opens and verifies, and a tiny run prints parseable numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402  (bench/scale.py)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_plan_covers_every_frame_once():
    p = scale.plan_corpus(5000, seed=1)
    assert int(p["lengths"].sum()) == 5000
    np.testing.assert_array_equal(p["offsets"], np.concatenate([[0], np.cumsum(p["lengths"])[:-1]]))
    assert p["seg_lo"][0] == 0 and p["seg_hi"][-1] == 5000
    np.testing.assert_array_equal(p["seg_lo"][1:], p["seg_hi"][:-1])  # contiguous, no gap, no overlap
    assert set(p["offsets"].tolist()) <= set(p["seg_lo"].tolist())  # a segment never crosses an utterance
    np.testing.assert_array_equal(p["seg_utt"], np.searchsorted(p["offsets"], p["seg_lo"], side="right") - 1)
    assert (p["seg_hi"] - p["seg_lo"]).max() <= scale.SEG_LEN[1]


def test_synthetic_cache_opens_with_full_verification(tmp_path):
    from src.activations import Activations

    w = scale.write_synthetic_cache(tmp_path / "c", frames=3000, layers=3, dim=16, seed=0)
    acts = Activations(tmp_path / "c", verify="full")  # checksums computed while writing match the files
    assert (acts.total_frames, acts.num_layers, acts.hidden_size, acts.meta["dtype"]) == (3000, 3, 16, "float16")
    assert w["bytes"] == sum((tmp_path / "c" / f"layer_{k:02d}.npy").stat().st_size for k in range(3))
    with np.load(scale.items_path(tmp_path / "c")) as z:
        lab, lo, hi, seg_lab = z["frame_label"], z["seg_lo"], z["seg_hi"], z["seg_label"]
    assert len(lab) == 3000 and len(lo) == w["segments"]
    np.testing.assert_array_equal(lab, np.repeat(seg_lab, hi - lo))  # frame labels = their segment's label
    # the class signal is there and grows with the layer: class means differ by more at the last layer
    spread = []
    for k in range(3):
        x = np.asarray(acts.layer(k), dtype=np.float64)
        means = np.stack([x[lab == c].mean(0) for c in np.unique(seg_lab)])
        spread.append(float(means.std(0).mean()))
    assert spread[0] < spread[2]


def test_tiny_run_prints_parseable_fields(tmp_path):
    """pool and cka at 3,200 / 800 frames in subprocesses (ridge and linear are the same harness; the
    full run measures them)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--frames", "3200", "--dim", "32", "--layers", "3",
         "--measures", "pool,cka", "--cka-batch", "64", "--dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    rows = [dict(kv.split("=", 1) for kv in ln.split()) for ln in lines if " measure=" in ln]
    assert {(r["size"], r["measure"]) for r in rows} == {(s, m) for s in ("N", "N/4") for m in ("pool", "cka")}
    for r in rows:
        assert float(r["peak_rss_mb"]) >= float(r["import_rss_mb"]) > 0
        assert float(r["frames_per_s"]) > 0 and int(r["frames"]) > 0
    last = dict(kv.split("=", 1) for kv in lines[-1].split())
    assert re.fullmatch(r"[0-9.]+", last["rss_ratio"]) and float(last["rss_ratio"]) > 0
    assert float(last["rss_ratio"]) == pytest.approx(max(float(last["pool"]), float(last["cka"])), rel=1e-3)
    assert int(last["frames"]) == 3200
    assert not list(tmp_path.glob("cache_*"))  # removed without --keep
