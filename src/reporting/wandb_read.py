"""Read an offline W&B run back from its ``.wandb`` file: history, summary, config, metrics, artifacts, tables.

wandb >= 0.2x writes runs through its Go service and no longer ships a Python reader of its transaction
log (the old ``wandb.sdk.internal.datastore``). The file format is small and stable, so it is read here:

- a 7-byte file header: ident ``b":W&B"``, magic ``0xBEE1`` (uint16, little-endian), version ``0``;
- then LevelDB log blocks of 32768 bytes (the header counts in the first block). Each chunk has a 7-byte
  header ``crc32 (uint32), length (uint16), type (uint8)``, type FULL=1, FIRST=2, MIDDLE=3, LAST=4;
  the checksum is zlib's CRC-32 of the data seeded with the CRC-32 of the type byte. Fewer than 7 bytes
  left in a block are zero padding;
- each reassembled record is a ``wandb.proto.wandb_internal_pb2.Record`` (protobuf).

Values (history items, summary and config updates) are JSON; a key path (``nested_key``) is rebuilt as
nested dicts, so ``run.log({"rsa/x": 1})`` reads back as ``{"rsa/x": 1}`` and a logged table as a dict
with ``_type == "table-file"`` and the ``path`` of its JSON under the run's ``files/`` directory
(:attr:`OfflineRun.tables` loads them).

wandb's service may write the end of the file after ``run.finish()`` returns: :func:`read_offline_run`
can wait (``wait`` seconds) for the run's exit record.

Used by the tests to check what the project logs; also handy to inspect a run before ``wandb sync``::

    python -m src.reporting.wandb_read outputs/.../wandb/offline-run-*
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32768
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbReadError(ValueError):
    """A file that is not a readable W&B transaction log (names the file and the offset)."""


def run_file(path: str | os.PathLike) -> Path:
    """The ``.wandb`` file of ``path``: the file itself, or the one file in a run directory."""
    p = Path(path)
    if p.is_file():
        return p
    found = sorted(p.glob("*.wandb")) if p.is_dir() else []
    if len(found) != 1:
        raise WandbReadError(f"{p}: expected a .wandb file or a run directory holding one, found {len(found)}")
    return found[0]


def iter_records(path: str | os.PathLike) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file, in order (a truncated last record is dropped)."""
    from wandb.proto import wandb_internal_pb2 as pb

    f = run_file(path)
    data = f.read_bytes()
    if len(data) < HEADER.size:
        return
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC or version != VERSION:
        raise WandbReadError(f"{f}: not a W&B transaction log (header {data[:7]!r})")
    pos, pending = HEADER.size, None
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # block trailer
            pos += left
            continue
        crc, n, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and n == 0 and crc == 0:  # zero padding to the end of the block (a preallocated tail)
            pos += left
            continue
        start, end = pos + CHUNK.size, pos + CHUNK.size + n
        if end > len(data):  # still being written
            return
        chunk = data[start:end]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise WandbReadError(f"{f}: checksum mismatch in the record chunk at byte {pos}")
        pos = end
        if kind == FULL:
            payload = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE and pending is not None:
            pending += chunk
            continue
        elif kind == LAST and pending is not None:
            payload, pending = pending + chunk, None
        else:
            raise WandbReadError(f"{f}: chunk of type {kind} out of order at byte {pos - n - CHUNK.size}")
        rec = pb.Record()
        rec.ParseFromString(payload)
        yield rec


def _set(d: dict, item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    value = json.loads(item.value_json) if item.value_json else None
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def _remove(d: dict, item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        d = d.get(k, {})
    d.pop(keys[-1], None)


@dataclass
class OfflineRun:
    """What one offline run recorded.

    ``history``: one dict per ``run.log`` call (W&B's ``_step``, ``_runtime``, ``_timestamp`` included);
    ``summary``: the final summary; ``config``: the run config (wandb's ``_wandb`` entry left out);
    ``metrics``: ``define_metric`` name -> ``{"step_metric": ..., "hidden": ...}``; ``artifacts``: one dict
    per logged artifact (``name``, ``type``, ``metadata``, ``aliases``, ``files``: manifest paths);
    ``info``: run id, project, group, job type, display name; ``finished``: the exit record was read.
    """

    path: Path
    info: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)
    finished: bool = False

    @property
    def files_dir(self) -> Path:
        return self.path / "files"

    def series(self, key: str, step: str | None = None) -> dict:
        """``{step value: value}`` of ``key`` over the history rows that hold it; ``step`` defaults to the
        key's declared step metric (else ``_step``)."""
        step = step or self.metrics.get(key, {}).get("step_metric") or "_step"
        return {row[step]: row[key] for row in self.history if key in row and step in row}

    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row if not k.startswith("_")}

    def table(self, key: str):
        """The ``wandb.Table`` logged under ``key`` (its last logging) as a pandas DataFrame, under the current
        result column names (:func:`src.reporting.results.normalise_columns`: runs logged before the one schema
        read as new ones)."""
        import pandas as pd

        from src.reporting.results import normalise_columns

        ref = None
        for row in self.history:
            if isinstance(row.get(key), dict) and str(row[key].get("_type", "")).endswith("table-file"):
                ref = row[key]
        if ref is None:
            raise KeyError(f"no table logged under {key!r} in {self.path}")
        data = json.loads((self.files_dir / ref["path"]).read_text(encoding="utf-8"))
        return normalise_columns(pd.DataFrame(data["data"], columns=data["columns"]))

    def table_keys(self) -> set[str]:
        return {k for row in self.history for k, v in row.items()
                if isinstance(v, dict) and str(v.get("_type", "")).endswith("table-file")}  # fmt: skip

    def image_keys(self) -> set[str]:
        return {k for row in self.history for k, v in row.items()
                if isinstance(v, dict) and v.get("_type") in ("image-file", "images/separated")}  # fmt: skip


def read_offline_run(path: str | os.PathLike, wait: float = 0.0) -> OfflineRun:
    """Decode the run at ``path`` (a run directory or its ``.wandb`` file). ``wait``: seconds to keep
    re-reading until the exit record is there (wandb's service flushes the file after ``finish()``)."""
    f = run_file(path)
    deadline = time.monotonic() + wait
    while True:
        run = _decode(f)
        if run.finished or time.monotonic() >= deadline:
            return run
        time.sleep(0.1)


def _decode(f: Path) -> OfflineRun:
    run = OfflineRun(path=f.parent)
    for rec in iter_records(f):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.info = {"id": r.run_id, "project": r.project, "entity": r.entity, "group": r.run_group,
                        "job_type": r.job_type, "name": r.display_name, "tags": list(r.tags)}  # fmt: skip
            for item in r.config.update:
                _set(run.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _set(run.config, item)
            for item in rec.config.remove:
                _remove(run.config, item)
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _set(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _set(run.summary, item)
            for item in rec.summary.remove:
                _remove(run.summary, item)
        elif kind == "metric":
            m = rec.metric
            name = m.name or m.glob_name
            run.metrics[name] = {"step_metric": m.step_metric or None, "hidden": bool(m.options.hidden)}
        elif kind == "artifact":
            a = rec.artifact
            run.artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                  "metadata": json.loads(a.metadata) if a.metadata else {},
                                  "files": [c.path for c in a.manifest.contents], "digest": a.digest})  # fmt: skip
        elif kind == "exit":
            run.finished = True
    run.config.pop("_wandb", None)
    return run


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m src.reporting.wandb_read",
                                description="Print what an offline W&B run recorded (summary, series, tables, artifacts).")  # fmt: skip
    p.add_argument("run_dir", help="an offline-run-* directory or its .wandb file")
    a = p.parse_args(argv)
    run = read_offline_run(a.run_dir)
    summary = {k: v for k, v in run.summary.items() if not k.startswith("_") and not (isinstance(v, dict) and "_type" in v)}
    print(json.dumps({"info": run.info, "summary": summary,
                      "series": sorted(run.history_keys() - run.table_keys() - run.image_keys()),
                      "tables": sorted(run.table_keys()), "images": sorted(run.image_keys()),
                      "artifacts": [{k: a[k] for k in ("name", "type", "files")} for a in run.artifacts],
                      "finished": run.finished}, indent=1, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
