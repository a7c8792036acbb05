"""Merge the results of a Hydra multirun into one summary table and overlay figures.

Use as a Hydra callback (``conf/hydra/callbacks`` or in the primary config)::

    hydra:
      callbacks:
        merge_results:
          _target_: src.reporting.multirun.MergeResults

or call ``merge_results(sweep_dir)`` on a finished sweep, or from the shell (e.g. after a
cluster sweep in which a job failed, or whose submitting process was killed: Hydra calls the
callback only when every job succeeded)::

    python -m src.reporting.multirun outputs/train_multirun/2026-12-02_10-00-00_phones

Conventions
-----------
- A job directory is a directory under the sweep dir holding ``.hydra/`` or
  ``results.csv`` (not nested inside another job directory, and not inside a hidden
  directory such as submitit's ``.submitit/`` logs and pickles). Jobs may run anywhere
  (joblib workers, submitit local or SLURM processes): only the files count. Its ``job`` label is
  Hydra's ``override_dirname`` (from ``.hydra/hydra.yaml``; else built from
  ``.hydra/overrides.yaml`` as Hydra does by default, sorted ``key=value`` joined by
  ","); else the job's path relative to the sweep dir.
- Labels name what differs: Hydra's ``override_dirname`` leaves out ``exclude_keys``
  (``seed`` and path-valued keys in conf/train.yaml), so an override of
  ``.hydra/overrides.yaml`` whose value differs between jobs and that the label lacks is
  appended (``...,seed=1``; a path value by its last component). Jobs whose labels still
  collide get their backbone name(s) from the results table appended when those differ
  (e.g. ``whisper_tiny_en-random`` for ``backbone.pretrained=false``), then their path.
- Writes ``<sweep>/summary.csv`` (every row of every job, a ``job`` column first, and
  ``job_dir``), ``<sweep>/summary.png`` (the main metric over layers, one line per job)
  and, when there are several metrics, ``summary_<metric>.png`` for each.
- The main metric is the first of ``MAIN_METRICS`` present, else the first metric in
  the table; split "test" when present.
- A job that wrote nothing (crashed, or writes no table) is skipped with a warning
  naming it; the callback never fails the multirun (errors are logged).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

MAIN_METRICS = (
    "accuracy",
    "pearson_r",
    "r2",
    "f1",
    "macro_f1",
    "selectivity",
    "cka",
    "rsa",
    "cca",
    "svcca",
    "pwcca",
    "abx_error",
    "mutual_information",
    "mdl",
)


class MergeResultsWarning(UserWarning):
    """A job of the sweep has no results table."""


def _yaml(path: Path) -> Any:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def job_label(job_dir: Path, sweep_dir: Path) -> str:
    """The job's ``override_dirname`` (see module docstring), or its relative path."""
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            name = _yaml(hydra_yaml)["hydra"]["job"]["override_dirname"]
            if isinstance(name, str) and name and "${" not in name:
                return name
        except Exception as e:  # noqa: BLE001 - unreadable metadata: fall back below
            log.debug("cannot read %s: %s", hydra_yaml, e)
    overrides = job_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        try:
            items = _yaml(overrides) or []
            if items:
                return ",".join(sorted(str(o) for o in items))
        except Exception as e:  # noqa: BLE001
            log.debug("cannot read %s: %s", overrides, e)
    return job_dir.relative_to(sweep_dir).as_posix() if job_dir != sweep_dir else job_dir.name


def job_overrides(job_dir: Path) -> dict[str, str]:
    """``{key: value}`` of the job's ``.hydra/overrides.yaml`` (``+``/``~`` prefixes dropped)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        items = _yaml(path) or []
    except Exception as e:  # noqa: BLE001
        log.debug("cannot read %s: %s", path, e)
        return {}
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        out[key.lstrip("+~")] = value if sep else ""
    return out


def _short(value: str) -> str:
    v = value.strip().strip("'\"").rstrip("/")
    return v.rsplit("/", 1)[-1] if "/" in v else v


def distinct_labels(jobs: list[dict]) -> list[str]:
    """One label per job that names what differs between the jobs (see the module docstring).

    ``jobs``: dicts with ``label`` (the base label), ``overrides`` (``{key: value}``),
    ``backbones`` (names in the job's results) and ``rel`` (the job's path).
    """
    all_keys = sorted({k for j in jobs for k in j["overrides"]})
    varying = [k for k in all_keys if len({j["overrides"].get(k) for j in jobs}) > 1]
    labels = []
    for j in jobs:
        present = {part.partition("=")[0].lstrip("+~") for part in j["label"].split(",")}
        extra = [f"{k}={_short(j['overrides'][k])}" for k in varying if k in j["overrides"] and k not in present]
        labels.append(",".join([j["label"], *extra]) if extra else j["label"])
    for pass_ in ("backbone", "path"):
        groups: dict[str, list[int]] = {}
        for i, lab in enumerate(labels):
            groups.setdefault(lab, []).append(i)
        for lab, idx in groups.items():
            if len(idx) < 2:
                continue
            if pass_ == "backbone":
                names = ["+".join(jobs[i]["backbones"]) for i in idx]
                if len(set(names)) > 1:
                    for i, n in zip(idx, names):
                        labels[i] = f"{lab} ({n})" if n else lab
            else:
                for i in idx[1:]:
                    labels[i] = f"{lab} [{jobs[i]['rel']}]"
    return labels


def find_job_dirs(sweep_dir: str | os.PathLike, name: str = "results") -> list[Path]:
    """Job directories of a sweep, sorted by their path (numerically where numbered)."""
    sweep = Path(sweep_dir)
    cands = {p.parent for p in sweep.rglob(".hydra") if p.is_dir()}
    cands |= {p.parent for p in sweep.rglob(f"{name}.csv")}
    cands.discard(sweep)
    cands = {d for d in cands if not any(part.startswith(".") for part in d.relative_to(sweep).parts)}
    jobs = [d for d in cands if not any(a in cands for a in d.parents if a != sweep and sweep in a.parents)]

    def key(p: Path) -> tuple:
        return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(sweep).parts)

    return sorted(jobs, key=key)


def main_metric(df: pd.DataFrame) -> str | None:
    """The metric a summary figure shows first (see ``MAIN_METRICS``)."""
    col = "metric" if "metric" in df.columns else "measure" if "measure" in df.columns else None
    if col is None:
        return None
    present = [str(m) for m in df[col].dropna().unique()]
    for m in MAIN_METRICS:
        if m in present:
            return m
    return present[0] if present else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "metric"


def merge_results(
    sweep_dir: str | os.PathLike, name: str = "results", write: bool = True, figures: bool = True
) -> pd.DataFrame:
    """Concatenate every job's ``<name>.csv`` under ``sweep_dir`` with a ``job`` column.

    With ``write``, saves ``summary.csv`` and (with ``figures``) the summary PNGs in
    ``sweep_dir``. Returns the merged table (empty if no job wrote one).
    """
    import pandas as pd

    from src.reporting.figures import FigureError, metric_column, plot_overlay
    from src.reporting.results import _atomic_writers, read_results

    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep directory does not exist: {sweep}")
    tables, jobs, missing = [], [], []
    for job_dir in find_job_dirs(sweep, name):
        csv = job_dir / f"{name}.csv"
        rel = job_dir.relative_to(sweep).as_posix()
        if not csv.is_file():
            missing.append(rel)
            continue
        try:
            t = read_results(csv)
        except Exception as e:  # noqa: BLE001 - one bad job must not lose the others
            warnings.warn(f"job {rel}: cannot read {csv}: {e}; skipped", MergeResultsWarning, stacklevel=2)
            continue
        if t.empty:
            missing.append(rel)
            continue
        backbones = sorted(str(b) for b in t["backbone"].dropna().unique()) if "backbone" in t.columns else []
        jobs.append({"label": job_label(job_dir, sweep), "overrides": job_overrides(job_dir),
                     "backbones": backbones, "rel": rel})  # fmt: skip
        tables.append(t)
    if missing:
        warnings.warn(
            f"{len(missing)} job(s) under {sweep} wrote no {name}.csv and are left out of the summary: {missing}",
            MergeResultsWarning,
            stacklevel=2,
        )
    if not tables:
        warnings.warn(
            f"no {name}.csv found under {sweep}; no summary written", MergeResultsWarning, stacklevel=2
        )
        return pd.DataFrame()
    labels = distinct_labels(jobs)
    tables = [t.assign(job=lab, job_dir=j["rel"]) for t, lab, j in zip(tables, labels, jobs)]
    df = pd.concat(tables, ignore_index=True)
    df = df[["job"] + [c for c in df.columns if c not in ("job", "job_dir")] + ["job_dir"]]
    if not write:
        return df
    _atomic_writers({sweep / "summary.csv": lambda fh: df.to_csv(fh, index=False, lineterminator="\n")})
    if figures:
        main = main_metric(df)
        mcol = metric_column(df) if main else None
        metrics = [main] + [str(m) for m in df[mcol].dropna().unique() if m != main] if main else []
        has_test = "split" in df.columns and (df["split"] == "test").any()
        for i, metric in enumerate(metrics):
            rows = df[df[mcol] == metric]
            split = "test" if has_test and (rows["split"] == "test").any() else None
            if split is None and "split" in rows.columns and rows["split"].notna().any():
                split = str(rows["split"].dropna().iloc[0])
            outs = ([sweep / "summary.png"] if i == 0 else []) + (
                [sweep / f"summary_{_safe(metric)}.png"] if len(metrics) > 1 else []
            )
            for out in outs:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # jobs without this metric are expected
                        plot_overlay(
                            df, out, metric, split=split, title=f"{metric} over layers: {sweep.name}"
                        )
                except FigureError as e:
                    log.warning("summary figure for %s not drawn: %s", metric, e)
    return df


class MergeResults(Callback):
    """Hydra callback: after a multirun, merge every job's results into the sweep dir."""

    def __init__(self, name: str = "results", figures: bool = True) -> None:
        self.name = name
        self.figures = figures

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from src.distributed import env_rank

        if env_rank() != 0:  # a DDP child re-runs the sweep script: only global rank 0 writes the summary
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                df = merge_results(sweep_dir, name=self.name, write=True, figures=self.figures)
            for w in caught:
                log.warning("%s", w.message)
            if len(df):
                log.info(
                    "merged %d rows of %d jobs into %s",
                    len(df),
                    df["job"].nunique(),
                    sweep_dir / "summary.csv",
                )
        except Exception:
            log.exception("merging the results of %s failed", sweep_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m src.reporting.multirun SWEEP_DIR [--name results] [--no-figures]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m src.reporting.multirun",
        description="Merge the results.csv of every job of a finished (or partly failed) Hydra sweep into "
        "SWEEP_DIR/summary.csv and summary PNGs.",
    )
    parser.add_argument("sweep_dir", help="the sweep directory (hydra.sweep.dir)")
    parser.add_argument("--name", default="results", help="table name of each job (default: results)")
    parser.add_argument("--no-figures", action="store_true", help="write summary.csv only")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = merge_results(args.sweep_dir, name=args.name, write=True, figures=not args.no_figures)
        except FileNotFoundError as e:
            parser.error(str(e))
    for w in caught:
        print(f"warning: {w.message}")
    if not len(df):
        return 1
    print(f"merged {len(df)} rows of {df['job'].nunique()} jobs into {Path(args.sweep_dir) / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
