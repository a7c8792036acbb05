"""The entry points' garbage-collector setting (src/jobs/common.py gc_for_jobs, gc_before_exit)."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

from src.jobs.common import GC_GEN0_THRESHOLD, gc_for_jobs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved_threshold():
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_raises_generation0_only(saved_threshold):
    gc.set_threshold(700, 10, 10)
    gc_for_jobs()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
    assert gc.isenabled()


def test_never_lowers_a_higher_threshold(saved_threshold):
    gc.set_threshold(GC_GEN0_THRESHOLD * 5, 3, 4)
    gc_for_jobs()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 5, 3, 4)


def test_cycles_are_still_collected(saved_threshold):
    """After gc_for_jobs a reference cycle is freed once enough allocations happened (not only at exit)."""
    import weakref

    gc_for_jobs()

    class Node:
        pass

    gc.collect()  # generation 0 empty, its count 0: the cycle below is young when the first collection runs

    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    junk = [[i] for i in range(3 * GC_GEN0_THRESHOLD)]  # container allocations drive gen-0 collections
    del junk
    assert alive() is None


@pytest.mark.parametrize("entry", ["train.py", "analyze.py", "build_cache.py"])
def test_each_entry_point_sets_it_before_main_and_freezes_after(entry):
    tree = ast.parse((ROOT / entry).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    calls = [ast.unparse(s.value.func) for s in block.body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)]
    assert calls.index("gc_for_jobs") < calls.index("main") < calls.index("gc_before_exit"), calls
