"""bench/sae.py: a tiny run prints one line per measurement and the parseable last line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # four subprocesses importing lightning: about 30-60 s on the shared 2 cores


def test_tiny_bench_prints_ratios(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "bench" / "sae.py"), "--frames", "6000", "--dim", "32", "--expansion", "2",
           "--k", "4", "--batch", "256", "--dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    m = re.fullmatch(r"ratio=([0-9.]+) rss_ratio=([0-9.]+)", lines[-1])
    assert m, lines[-1]
    assert 0.2 < float(m.group(1)) < 10 and 0.5 < float(m.group(2)) < 2
    got = {(re.search(r"measure=(\S+)", x).group(1), re.search(r"size=(\S+)", x).group(1)) for x in lines
           if x.startswith("measure=")}  # fmt: skip
    assert {("stream", "N"), ("memory", "N"), ("stream", "N/4")} <= got
    steps = [
        int(re.search(r"steps=(\d+)", x).group(1))
        for x in lines
        if x.startswith("measure=") and "size=N " in x
    ]
    assert len(set(steps)) == 1 and steps[0] == 24  # the same number of steps for every N-sized measurement
    assert list(tmp_path.iterdir()) == []  # the caches are removed afterwards
