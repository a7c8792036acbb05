"""Merge the results of a Hydra multirun into one summary table, a table of curves over layers and their figures.

Use as a Hydra callback (``conf/hydra/callbacks`` or in the primary config)::

    hydra:
      callbacks:
        merge_results:
          _target_: src.reporting.multirun.MergeResults
          # pool_seeds: false   (one curve per seed; on the command line
          #                      +hydra.callbacks.merge_results.pool_seeds=false)
          # spread: sd          (band of pooled seeds: mean +- 1 sd instead of min-max)

or call ``merge_results(sweep_dir)`` on a finished sweep, or from the shell (e.g. after a
cluster sweep in which a job failed, or whose submitting process was killed: Hydra calls the
callback only when every job succeeded)::

    python -m src.reporting.multirun outputs/train_multirun/2026-12-02_10-00-00_phones [--seeds-separate] [--spread sd]

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
- Each job also gets a ``curve`` label (``src.reporting.sweep.curve_labels``): the values of
  the swept keys other than the layer keys and (pooled by default) the seed, so the jobs
  of a layer sweep share one curve and ``backbone=whisper_tiny_en,mfcc`` gives the curves
  ``whisper_tiny_en`` and ``mfcc``. A key a job does not override takes the job's own value
  (its config-group choice in ``.hydra/hydra.yaml``, else ``.hydra/config.yaml``).
- Writes ``<sweep>/summary.csv`` (every row of every job, the ``job`` label first, then
  ``curve``, the job's columns, a ``corpus`` column from its ``results.json`` meta when the
  rows lack one, and ``job_dir`` last), ``<sweep>/summary_curves.csv``
  (``src.reporting.sweep.sweep_curves``: per metric, curve and layer the value pooled over
  seeds, its interval or seed spread, ``n_seeds``; baselines as rows of kind
  ``baseline``), ``<sweep>/summary.png`` (the main metric, ``src.reporting.sweep.plot_sweep``:
  one curve per ``curve`` over layers, bands, baselines as horizontal lines) and, when
  there are several metrics, ``summary_<metric>.png`` for each (``*_baseline`` metrics
  are drawn in their metric's figure, not on their own).
- The main metric is the first of ``MAIN_METRICS`` present, else the first metric in
  the table; split "test" when present, else the metric's first split.
- A job that wrote nothing (crashed, or writes no table) is skipped with a warning
  naming it; the callback never fails the multirun (errors are logged).
- The callback, when the sweep's ``logger`` is W&B, then logs the sweep directory's CSVs and
  PNGs to a run of the sweep's group (``job_type=sweep-summary``).
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


def job_settings(job_dir: Path, keys: list[str]) -> tuple[dict[str, str], list[str]]:
    """The job's own values of ``keys`` (config-group choices from ``.hydra/hydra.yaml``, other
    keys from ``.hydra/config.yaml``; unresolvable ones left out) and the names of its config groups."""
    values: dict[str, str] = {}
    choices: dict = {}
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            choices = dict(_yaml(hydra_yaml)["hydra"]["runtime"]["choices"] or {})
        except Exception as e:  # noqa: BLE001 - metadata only labels curves
            log.debug("cannot read the choices of %s: %s", hydra_yaml, e)
    rest = [k for k in keys if k not in choices]
    for k in keys:
        if k in choices:
            values[k] = "null" if choices[k] is None else str(choices[k])
    config = job_dir / ".hydra" / "config.yaml"
    if rest and config.is_file():
        try:
            from omegaconf import OmegaConf

            cfg = OmegaConf.load(config)
            missing = object()
            for k in rest:
                try:
                    v = OmegaConf.select(cfg, k, default=missing, throw_on_resolution_failure=False)
                except Exception:  # noqa: BLE001 - an interpolation that needs Hydra's resolvers
                    continue
                if v is not missing and v is not None and not hasattr(v, "keys"):
                    values[k] = str(v)
        except Exception as e:  # noqa: BLE001
            log.debug("cannot read %s: %s", config, e)
    return values, [str(g) for g in choices]


def _layers(t: pd.DataFrame) -> set[float]:
    """Layers a job measured (baselines at layer -1 and layer x layer matrices aside)."""
    import pandas as pd

    if "layer" not in t.columns:
        return set()
    if "layer_b" in t.columns:
        t = t[t["layer_b"].isna()]
    layer = pd.to_numeric(t["layer"], errors="coerce")
    return set(layer[layer >= 0].tolist())


def _job_corpus(job_dir: Path, name: str) -> str | None:
    """The corpus name in ``<name>.json``'s meta (probing and analysis jobs write it), else None."""
    import json

    path = job_dir / f"{name}.json"
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            corpus = (json.load(fh).get("meta") or {}).get("corpus")
        return str(corpus) if corpus else None
    except Exception as e:  # noqa: BLE001
        log.debug("cannot read the meta of %s: %s", path, e)
        return None


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
        extra = [
            f"{k}={_short(j['overrides'][k])}" for k in varying if k in j["overrides"] and k not in present
        ]
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
    if "metric" not in df.columns:
        return None
    present = [str(m) for m in df["metric"].dropna().unique()]
    for m in MAIN_METRICS:
        if m in present:
            return m
    return present[0] if present else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "metric"


def merge_results(
    sweep_dir: str | os.PathLike,
    name: str = "results",
    write: bool = True,
    figures: bool = True,
    pool_seeds: bool = True,
    spread: str = "minmax",
) -> pd.DataFrame:
    """Concatenate every job's ``<name>.csv`` under ``sweep_dir`` with ``job`` and ``curve`` columns.

    With ``write``, saves ``summary.csv``, ``summary_curves.csv`` and (with ``figures``) the
    summary PNGs in ``sweep_dir``. ``pool_seeds``: jobs that differ only in a seed share a
    curve (mean with a ``spread`` band: "minmax" or "sd"); False gives each seed its own
    curve. Returns the merged table (empty if no job wrote one).
    """
    import pandas as pd

    from src.reporting import sweep as sw
    from src.reporting.results import _atomic_writers, read_results

    if spread not in sw.SPREADS:
        raise ValueError(f"spread={spread!r}: choose one of {sw.SPREADS}")
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
        layers = _layers(t)
        jobs.append({"label": job_label(job_dir, sweep), "overrides": job_overrides(job_dir), "dir": job_dir,
                     "backbones": backbones, "layers": layers, "rel": rel, "corpus": _job_corpus(job_dir, name)})  # fmt: skip
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
    all_keys = sorted({k for j in jobs for k in j["overrides"]})
    for j in jobs:  # the job's own value of a key that only other jobs override
        j["defaults"], j["groups"] = job_settings(j["dir"], [k for k in all_keys if k not in j["overrides"]])
    labels = distinct_labels(jobs)
    curves = sw.curve_labels(jobs, pool_seeds=pool_seeds)
    add_corpus = not any("corpus" in t.columns for t in tables) and any(j["corpus"] for j in jobs)
    tables = [
        t.assign(job=lab, curve=curve, job_dir=j["rel"], **({"corpus": j["corpus"]} if add_corpus else {}))
        for t, lab, curve, j in zip(tables, labels, curves, jobs)
    ]
    df = pd.concat(tables, ignore_index=True)
    df = df[["job", "curve"] + [c for c in df.columns if c not in ("job", "curve", "job_dir")] + ["job_dir"]]
    if not write:
        return df
    writers = {sweep / "summary.csv": lambda fh: df.to_csv(fh, index=False, lineterminator="\n")}
    table = None
    try:
        table = sw.sweep_curves(df, pool_seeds=pool_seeds, spread=spread)
        writers[sweep / "summary_curves.csv"] = lambda fh: table.to_csv(fh, index=False, lineterminator="\n")
    except Exception as e:  # noqa: BLE001 - the merged table is written whatever the curves do
        log.warning("summary_curves.csv not written: %s", e)
    _atomic_writers(writers)
    if figures:  # a figure of an earlier merge whose metric is gone must not stay (nor be logged to W&B)
        for old in [sweep / "summary.png", *sweep.glob("summary_*.png")]:
            old.unlink(missing_ok=True)
    if figures and table is not None and len(table):
        main = main_metric(df)
        metrics = list(dict.fromkeys(str(m) for m in table["metric"]))
        if main in metrics:
            metrics = [main] + [m for m in metrics if m != main]
        for i, metric in enumerate(metrics):
            outs = ([sweep / "summary.png"] if i == 0 else []) + (
                [sweep / f"summary_{_safe(metric)}.png"] if len(metrics) > 1 else []
            )
            for out in outs:
                try:
                    sw.plot_sweep(table, out, metric=metric, spread=spread)
                except Exception as e:  # noqa: BLE001 - one figure must not lose the others
                    log.warning("summary figure for %s not drawn: %s", metric, e)
    return df


class MergeResults(Callback):
    """Hydra callback: after a multirun, merge every job's results into the sweep dir; when the
    jobs log to W&B (``logger=wandb``), log the summary files to a run of the sweep's group
    (``src.reporting.wandb_utils.log_sweep_summary_from_config``)."""

    def __init__(self, name: str = "results", figures: bool = True, pool_seeds: bool = True,
                 spread: str = "minmax") -> None:  # fmt: skip
        self.name = name
        self.figures = figures
        self.pool_seeds = pool_seeds
        self.spread = spread

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from src.distributed import env_rank

        if env_rank() != 0:  # a DDP child re-runs the sweep script: only global rank 0 writes the summary
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                df = merge_results(sweep_dir, name=self.name, write=True, figures=self.figures,
                                   pool_seeds=self.pool_seeds, spread=self.spread)  # fmt: skip
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
            return
        if not len(df):
            return
        try:  # the sweep's summary files to a W&B run of the sweep's group, when the jobs log to W&B
            from src.reporting.wandb_utils import log_sweep_summary_from_config

            if log_sweep_summary_from_config(sweep_dir, config) is not None:
                log.info("sweep summary of %s logged to W&B (group %s)", sweep_dir, sweep_dir.name)
        except Exception:
            log.exception("logging the sweep summary of %s to W&B failed", sweep_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m src.reporting.multirun SWEEP_DIR [--name results] [--no-figures] [--seeds-separate] [--spread sd]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m src.reporting.multirun",
        description="Merge the results.csv of every job of a finished (or partly failed) Hydra sweep into "
        "SWEEP_DIR/summary.csv, summary_curves.csv (one curve per swept setting over layers) and summary PNGs.",
    )
    parser.add_argument("sweep_dir", help="the sweep directory (hydra.sweep.dir)")
    parser.add_argument("--name", default="results", help="table name of each job (default: results)")
    parser.add_argument(
        "--no-figures", action="store_true", help="write summary.csv and summary_curves.csv only"
    )
    parser.add_argument(
        "--seeds-separate",
        action="store_true",
        help="one curve per seed (default: jobs that differ only in the seed are pooled)",
    )
    parser.add_argument(
        "--spread",
        choices=("minmax", "sd"),
        default="minmax",
        help="band of pooled seeds: min-max (default) or mean +- 1 sd",
    )
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = merge_results(args.sweep_dir, name=args.name, write=True, figures=not args.no_figures,
                               pool_seeds=not args.seeds_separate, spread=args.spread)  # fmt: skip
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
