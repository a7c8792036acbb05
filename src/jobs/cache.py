"""What build_cache.py does inside its Hydra job: build (or find) the activation cache, nothing else.

The config is train.py's (``conf/build_cache.yaml`` includes ``conf/train.yaml``), so the
cache a probe job asks for with the same ``backbone=... data=... cache.*`` overrides is the
one built here: the first step of a cluster sweep (docs/scale.md).

Conventions
-----------
- The cache is found or built through ``src.jobs.common.load_activations``, the same path train.py
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

Listing and pruning (``python -m src.jobs.cache list|prune``; a plain CLI, no Hydra job)
-------------------------------------------------------------------------------------
::

    python -m src.jobs.cache list [--root cache]                  # key, status, backbone, corpus, dtype, size, last use
    python -m src.jobs.cache prune KEY [KEY ...] [--root cache]   # a key, or a full directory name
    python -m src.jobs.cache prune --partial [--root cache]       # every orphan .partial build
    python -m src.jobs.cache prune ... --dry-run                  # say what would go, remove nothing

- ``--root`` defaults to ``$SPEECHINTERP_CACHE_DIR`` or ``cache``, as ``paths.cache_dir``.
- A cache directory is ``<backbone>__<corpus>__<key>``; ``key`` is the 12-hex cache key.
  Status: ``complete``, ``building`` (a ``.partial`` whose lock a live build holds),
  ``orphan`` (a ``.partial`` left by a killed or failed build; the next build of the same
  key resumes it), ``incomplete`` (a final name without ``meta.json``: ``get`` refuses it).
- Size is the disk usage (allocated blocks).  Last use is the access time of ``meta.json``,
  read on every open (on ``relatime`` mounts it moves at most once a day; on ``noatime``
  mounts it stays at the build time); for a partial, its newest write.
- Pruning takes the build lock ``<dir>.lock`` without waiting: a cache whose build is
  running is refused (named caches) or skipped (``--partial``), and no build can start
  while the directories are removed.  The empty ``.lock`` file stays (removing a lock file
  others may have opened could let two builds run at once).  Jobs that are *reading* a
  cache hold no lock: prune only caches no running job uses.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.fileutil import atomic_path

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
    from src.jobs.common import load_activations, quiet_libraries

    quiet_libraries()
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
        with atomic_path(sweep / "caches.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
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


# ----------------------------------------------------------------------------- list / prune

PARTIAL_SUFFIXES = (".partial", ".partial-new")  # src/activations/builder.py: the build and its being-created stage


class PruneError(RuntimeError):
    """A prune request that cannot be honoured (unknown name, cache locked by a running build)."""


def default_cache_root() -> Path:
    """``paths.cache_dir``'s default: ``$SPEECHINTERP_CACHE_DIR`` or ``cache``."""
    return Path(os.environ.get("SPEECHINTERP_CACHE_DIR", "cache")).expanduser()


def _final_name(name: str) -> str:
    for suf in PARTIAL_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def _disk_bytes(path: Path) -> int:
    """Allocated bytes of every file under ``path`` (what removing it frees)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def _newest_write(path: Path) -> float:
    times = [path.stat().st_mtime]
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                times.append(os.lstat(os.path.join(dirpath, f)).st_mtime)
            except FileNotFoundError:
                pass
    return max(times)


def _read_without_atime(path: Path) -> str:
    """The text of ``path``, leaving its access time (the cache's "last use") as it was:
    ``O_NOATIME`` where allowed (the file's owner), else a plain read and the old atime put back
    when permitted."""
    st = path.stat()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    except PermissionError:  # O_NOATIME needs ownership
        text = path.read_text()
        try:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            pass
        return text
    with os.fdopen(fd, "r") as fh:
        return fh.read()


def lock_is_held(lock: Path) -> bool:
    """Whether a live process holds the build lock ``lock`` (fcntl, as `src.fileutil.file_lock`)."""
    import fcntl

    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def list_caches(root: str | Path | None = None) -> list[dict]:
    """One row per cache directory under ``root`` (complete, building, orphan or incomplete),
    sorted by name: ``name, key, status, backbone, corpus, dtype, frames, bytes, last_use``
    (``last_use``: POSIX seconds).  Files (locks, handshakes) are not caches."""
    root = default_cache_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        final = _final_name(d.name)
        parts = final.split("__")
        row = {"name": d.name, "key": parts[-1] if len(parts) >= 3 else "", "status": "",
               "backbone": parts[0] if len(parts) >= 3 else "", "corpus": "__".join(parts[1:-1]) if len(parts) >= 3 else "",
               "dtype": "", "frames": None, "bytes": _disk_bytes(d), "last_use": None}  # fmt: skip
        meta_path = d / "meta.json"
        if d.name != final:  # a build in progress, or left behind
            row["status"] = "building" if lock_is_held(root / f"{final}.lock") else "orphan"
            row["last_use"] = _newest_write(d)
            try:
                plan = json.loads((d / "plan.json").read_text())
                row["dtype"], row["frames"] = plan.get("dtype", ""), plan.get("total_frames")
            except (OSError, ValueError):
                pass
        elif meta_path.is_file():
            row["last_use"] = meta_path.stat().st_atime  # before reading it: listing is not a use
            try:
                meta = json.loads(_read_without_atime(meta_path))
            except (OSError, ValueError):
                meta = {}
            row["status"] = "complete" if meta.get("complete") else "incomplete"
            row["backbone"], row["corpus"] = (
                meta.get("backbone", row["backbone"]),
                meta.get("corpus", row["corpus"]),
            )
            row["dtype"], row["frames"] = meta.get("dtype", ""), meta.get("total_frames")
        else:
            row["status"] = "incomplete"
            row["last_use"] = _newest_write(d)
        rows.append(row)
    return rows


def format_cache_table(rows: list[dict], root: Path) -> str:
    """The table ``list`` prints (one line per cache, then the total)."""
    head = f"{'key':<12}  {'status':<10}  {'backbone':<20}  {'corpus':<16}  {'dtype':<7}  {'size':>10}  {'last use':<16}  name"
    lines = [f"caches in {root.resolve()}:", head]
    for r in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_use"])) if r["last_use"] else "-"
        lines.append(f"{r['key']:<12}  {r['status']:<10}  {r['backbone']:<20}  {r['corpus']:<16}  {r['dtype'] or '-':<7}  "
                     f"{human_bytes(r['bytes']):>10}  {used:<16}  {r['name']}")  # fmt: skip
    total = sum(r["bytes"] for r in rows)
    lines.append(f"{len(rows)} cache directories, {human_bytes(total)}")
    return "\n".join(lines)


def prune_caches(names: list[str], root: str | Path | None = None, partial: bool = False,
                 dry_run: bool = False) -> list[dict]:  # fmt: skip
    """Remove the caches ``names`` (keys or directory names: the complete cache and any partial
    build of it) and, with ``partial``, every orphan partial build.  Returns the rows removed
    (as :func:`list_caches`; ``dry_run``: the rows that would be).

    Each cache is removed while holding its build lock, taken without waiting: a named cache
    whose build is running is a PruneError (nothing removed for any name); with ``partial`` a
    partial build whose lock is held is skipped (logged).  An unknown or ambiguous name is a
    PruneError listing the keys present."""
    import fcntl

    root = default_cache_root() if root is None else Path(root)
    rows = list_caches(root)
    by_final: dict[str, list[dict]] = {}
    for r in rows:
        by_final.setdefault(_final_name(r["name"]), []).append(r)
    targets: dict[str, list[dict]] = {}
    for name in names:
        hits = [
            f for f, rs in by_final.items() if name in (f, *(r["name"] for r in rs)) or rs[0]["key"] == name
        ]
        if not hits:
            keys = ", ".join(sorted({r["key"] or r["name"] for r in rows})) or "none"
            raise PruneError(
                f"no cache {name!r} under {root} (keys there: {keys}); see python -m src.jobs.cache list"
            )
        if len(hits) > 1:
            raise PruneError(
                f"{name!r} names {len(hits)} caches under {root} ({', '.join(hits)}); give the full name"
            )
        targets[hits[0]] = by_final[hits[0]]
    busy = [f for f in targets if lock_is_held(root / f"{f}.lock")]
    if busy:
        raise PruneError(f"not pruning: a running build holds the lock of {', '.join(busy)} ({root}/<name>.lock); "
                         "wait for it to finish (nothing was removed)")  # fmt: skip
    if partial:
        for f, rs in by_final.items():
            orphans = [r for r in rs if r["status"] == "orphan"]
            if f not in targets and orphans:
                targets[f] = orphans
            for r in rs:
                if r["status"] == "building":
                    log.warning("skipping %s: a running build holds %s.lock", r["name"], f)
    removed = []
    for f, rs in targets.items():
        lock = root / f"{f}.lock"
        if dry_run:
            removed += [r for r in rs if r["status"] != "building"]
            continue
        with open(lock, "a+") as fh:  # the lock builds take (src.fileutil.file_lock), without waiting
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if any(r["status"] != "orphan" for r in rs):
                    raise PruneError(f"not pruning {f}: a build took its lock just now") from None
                log.warning("skipping %s: a build took its lock just now", f)
                continue
            try:
                for r in rs:
                    shutil.rmtree(root / r["name"])
                    removed.append(r)
                (root / f"{f}.ddp.json").unlink(missing_ok=True)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    return removed


def main(argv: list[str] | None = None) -> int:
    """``python -m src.jobs.cache list|prune``: see the module docstring."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m src.jobs.cache", description="List or prune activation caches."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser(
        "list", help="every cache directory: key, status, backbone, corpus, dtype, size, last use"
    )
    pr = sub.add_parser("prune", help="remove the named caches (keys or directory names)")
    pr.add_argument("names", nargs="*", metavar="KEY", help="cache keys (12 hex) or directory names")
    pr.add_argument(
        "--partial",
        action="store_true",
        help="also every orphan .partial build (no live build holds its lock)",
    )
    pr.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    for q in (ls, pr):
        q.add_argument(
            "--root", default=None, help="cache folder (default: $SPEECHINTERP_CACHE_DIR or cache)"
        )
    a = p.parse_args(argv)
    root = default_cache_root() if a.root is None else Path(a.root)
    if a.cmd == "list":
        print(format_cache_table(list_caches(root), root))
        return 0
    if not a.names and not a.partial:
        p.error("prune needs cache keys (see: python -m src.jobs.cache list) or --partial")
    try:
        removed = prune_caches(a.names, root, partial=a.partial, dry_run=a.dry_run)
    except PruneError as e:
        print(f"error: {e}", flush=True)
        return 1
    verb = "would remove" if a.dry_run else "removed"
    for r in removed:
        print(f"{verb} {root / r['name']} ({r['status']}, {human_bytes(r['bytes'])})")
    print(f"{verb} {len(removed)} cache directories, {human_bytes(sum(r['bytes'] for r in removed))}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
