"""Tiny helpers shared by the benchmark scripts: timing and the final ``key=value`` line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def best_of(fn: Callable[[], T], repeats: int = 3) -> tuple[float, T]:
    """Run ``fn`` ``repeats`` times; return (best wall time in seconds, result of the last run)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result  # type: ignore[return-value]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def report(**kv: Any) -> str:
    """Print (and return) one line ``k1=v1 k2=v2 ...`` in argument order; floats to 4 significant digits."""
    line = " ".join(f"{k}={_fmt(v)}" for k, v in kv.items())
    print(line, flush=True)
    return line
