"""What build_cache.py does inside its Hydra job: build (or find) the activation cache, nothing else.

The config is train.py's (``conf/build_cache.yaml`` includes ``conf/train.yaml``), so the
cache a probe job asks for with the same ``backbone=... data=... cache.*`` overrides is the
one built here: the first step of a cluster sweep (docs/scale.md).

Conventions
-----------
- The cache is found or built through ``src.run.load_activations``, the same path train.py
  and analyze.py take (lock, resume, DDP extraction under ``cache.trainer``); nothing here
  knows how a cache is laid out beyond the ``meta.json`` it reads for the report.
- ``status`` is ``built`` when the cache's ``meta.json`` was written during this call (by
  this process, or by a concurrent job this one waited for on the cache lock), else
  ``reused``.
- Under DDP (``cache.trainer.strategy=ddp``) every rank takes part in the extraction; only
  global rank 0 prints the report and writes ``cache.json`` into the run directory.
- After a multirun (``python build_cache.py -m backbone=a,b``), ``CacheSummary`` writes
  ``<sweep dir>/caches.csv``: one row per job's ``cache.json`` (hidden directories such as
  submitit's ``.submitit/`` are not jobs).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("speechinterp")


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def cache_report(path: Path, t_start: float, seconds: float) -> dict:
    """Facts about the complete cache at ``path`` for the report (read from its ``meta.json``).

    ``t_start``: wall-clock time (``time.time()``) when this call began, to tell ``built``
    from ``reused``; ``seconds``: how long this call took.
    """
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text())
    files = meta.get("files") or []
    size = sum(int(f.get("bytes", 0)) for f in files)
    index = path / "index.npz"
    size += index.stat().st_size if index.exists() else 0
    size += meta_path.stat().st_size
    return {
        "path": str(path.resolve()),
        "status": "built" if meta_path.stat().st_mtime >= t_start else "reused",
        "backbone": meta.get("backbone"),
        "corpus": meta.get("corpus"),
        "utterances": int(meta.get("num_utterances", 0)),
        "frames": int(meta.get("total_frames", 0)),
        "states": len(files),
        "layer_names": meta.get("layer_names"),
        "hidden_size": int(meta.get("hidden_size", 0)),
        "dtype": meta.get("dtype"),
        "bytes": size,
        "build_seconds": meta.get("build_seconds"),
        "seconds": round(seconds, 3),
    }


def format_report(r: dict) -> str:
    """The lines build_cache.py prints (``key: value``; the first is ``cache: <path>``)."""
    built = f"{r['build_seconds']:.1f} s" if isinstance(r.get("build_seconds"), (int, float)) else "unknown"
    return "\n".join([
        f"cache: {r['path']}",
        f"status: {r['status']}",
        f"backbone: {r['backbone']}  corpus: {r['corpus']}",
        f"frames: {r['frames']} ({r['utterances']} utterances; {r['states']} states x {r['hidden_size']} dims, {r['dtype']})",
        f"size: {human_bytes(r['bytes'])} ({r['bytes']} bytes)",
        f"build time: {built} (when it was built); this call: {r['seconds']:.1f} s",
    ])  # fmt: skip


def cache_job(cfg: DictConfig) -> dict | None:
    """Build or find the activation cache of ``cfg`` (train.py's config); print and save its report.

    Returns the report (``cache_report``) on global rank 0, None on the other DDP ranks.
    """
    from hydra.core.hydra_config import HydraConfig

    from src.distributed import is_global_zero
    from src.run import _quiet_libraries, load_activations

    _quiet_libraries()
    t_wall, t0 = time.time(), time.perf_counter()
    _, acts = load_activations(cfg)
    if not is_global_zero():
        return None
    report = cache_report(Path(acts.path), t_wall, time.perf_counter() - t0)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cache.json").write_text(json.dumps(report, indent=1) + "\n")
    text = format_report(report)
    log.info("activation cache %s: %s (%d frames, %s)", report["status"], report["path"], report["frames"],
             human_bytes(report["bytes"]))  # fmt: skip
    print(text, flush=True)
    return report


SUMMARY_COLUMNS = ["job_dir", "path", "status", "backbone", "corpus", "utterances", "frames", "states",
                   "hidden_size", "dtype", "bytes", "build_seconds", "seconds"]  # fmt: skip


def summarize_caches(sweep_dir: str | Path) -> list[dict]:
    """Rows of every job's ``cache.json`` under ``sweep_dir`` (sorted by job directory), written
    to ``<sweep_dir>/caches.csv``; [] (and nothing written) when no job wrote one."""
    import csv

    sweep = Path(sweep_dir)
    rows = []
    for f in sorted(sweep.rglob("cache.json")):
        rel = f.parent.relative_to(sweep)
        if any(part.startswith(".") for part in rel.parts):
            continue
        r = json.loads(f.read_text())
        rows.append({"job_dir": rel.as_posix(), **{k: r.get(k) for k in SUMMARY_COLUMNS[1:]}})
    if rows:
        tmp = sweep / "caches.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(sweep / "caches.csv")
    return rows


class CacheSummary(Callback):
    """Hydra callback of conf/build_cache.yaml: after a multirun, list the caches in caches.csv."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        try:
            rows = summarize_caches(sweep)
        except Exception:  # noqa: BLE001 - the caches are built; a summary failure must not hide that
            log.exception("summarizing the caches of %s failed", sweep)
            return
        if not rows:
            log.warning("no job of %s wrote cache.json; no caches.csv written", sweep)
        for r in rows:
            log.info("%s: %s %s (%s frames, %s)", r["job_dir"], r["status"], r["path"], r["frames"],
                     human_bytes(r["bytes"] or 0))  # fmt: skip
        if rows:
            log.info("%d caches listed in %s", len(rows), sweep / "caches.csv")
