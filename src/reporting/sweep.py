"""Sweep summaries: the jobs of a Hydra multirun drawn as curves over layers.

``train.py -m probe.layer=0,1,2`` runs one job per layer; ``-m backbone=whisper_tiny_en,mfcc
seed=0,1`` runs four jobs over all layers. What a reader wants from either is one curve
per thing compared, over layers, with its intervals and the baselines.
``src.reporting.multirun.merge_results`` calls this module for ``summary.png`` and
``summary_curves.csv``; W&B logging (or a notebook) can call ``sweep_curves(df)`` on a
merged table (``summary.csv``) and ``plot_sweep`` / ``draw_sweep`` for the figure.

Conventions
-----------
- A job's *curve* is named by the overridden keys whose value differs between the jobs,
  except the layer keys (any key whose last part is ``layer`` or ``layers``:
  ``probe.layer``, ``layers``, ``analysis.layers``) and, when seeds are pooled (the
  default), the seed keys (``seed``, ``*.seed``). Jobs that differ only in those keys share
  a curve, so a layer sweep is one curve over layers. A job that does not override a key
  another job overrides takes its own value of it (``curve_labels``' ``defaults``: the
  config-group choice or the value in the job's ``.hydra/config.yaml``).
- Labels show values, not override strings (``readable_value``): a config group's choice
  as it is (``whisper_tiny_en``, ``mfcc``, ``ridge``, ``phones``), ``backbone.pretrained``
  as ``pretrained`` / ``random init``, a seed as ``seed 1``, path values by their last
  component, anything else as ``<last part of the key>=<value>``; parts joined by ", " in
  the order backbone, pretrained, task, probe, then by key. Jobs whose labels still
  collide get the backbone names of their results (so do labels that show only a seed);
  jobs of one label and seed that measured the same layer twice get their path appended
  (they are not pooled). A label with nothing to show is the backbone name(s) of the
  results.
- ``sweep_curves`` gives one row per (metric, curve, layer): the mean over the pooled
  jobs (``n_seeds`` of them: distinct seeds, or jobs where no seed is known), their spread
  (``spread_low``/``spread_high``: min-max, or mean +- one sample sd with
  ``spread="sd"``), and the row's own interval (``ci_low``/``ci_high``) only when one job
  and one row give the point (columns: ``CURVE_COLUMNS``). Within a job, rows of one
  layer that differ in a text column (a reference, a method) or in ``k`` become separate
  curves (``<curve>, <value>``); with
  ``target == "mean"`` rows present the other targets are left out; more than
  ``MAX_SERIES`` series are averaged (the label says "mean of N <column>").
- Baselines are rows of kind ``baseline`` with an empty layer: ``<metric>_<name>_baseline``
  rows (``accuracy_majority_baseline`` -> "majority" for ``accuracy``) and rows of the
  metric at a negative layer (the weighted-sum probe: "weighted sum of layers").
  Metrics named ``*_baseline`` get no curves of their own.
- ``plot_sweep`` draws each curve with markers (a gap where another curve measured a layer
  this one lacks) and its band (shaded: the seed spread when ``n_seeds > 1``, else the
  interval, the title says which; an error bar when the whole sweep has one layer). A
  one-layer curve beside multi-layer ones (an MFCC baseline job) is a dashed level line
  with its band; baselines are dotted horizontal lines, one per distinct value (unless one
  value holds for every curve, the legend names the curves of each). The title names the
  task, the corpus and the metric; the y label the split and, where one is obvious, the
  direction ("higher is better", "lower is better").
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

MAX_SERIES = 4  # more series of one job at one layer (targets, references) are averaged into one curve
SPREADS = ("minmax", "sd")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CURVE_COLUMNS = [
    "metric", "split", "curve", "kind", "baseline", "layer", "layer_name", "value", "ci_low", "ci_high",
    "n_seeds", "spread_low", "spread_high", "task", "corpus",
]  # fmt: skip

_LAYER_KEY = re.compile(r"(^|\.)layers?$")
_SEED_KEY = re.compile(r"(^|\.)seed$")
_KEY_ORDER = ("backbone", "backbone.name", "backbone.model_id", "backbone.pretrained", "task", "probe")
_FALSE = ("false", "0", "no", "off")
# columns that never split a job's rows into several curves
_NOT_SERIES = {
    "job", "job_dir", "curve", "corpus", "backbone", "task", "probe", "analysis", "metric", "split",
    "unit", "note", "fit_warning", "layer", "layer_name", "layer_b", "value", "ci_low", "ci_high", "n_units",
}  # fmt: skip
_HIGHER = ("accuracy", "f1", "pearson_r", "r2", "selectivity", "compression", "auc", "precision", "recall")
_LOWER = ("error", "loss", "wer", "cer", "per", "mse", "rmse", "mae", "codelength", "perplexity", "abx")


class SweepError(ValueError):
    """A sweep table cannot be summarised as asked (no such metric, bad option)."""


# ------------------------------------------------------------------------------ labels


def is_layer_key(key: str) -> bool:
    """``probe.layer``, ``layers``, ``analysis.layers``: keys that only choose the layer(s) a job measures."""
    return bool(_LAYER_KEY.search(key.lstrip("+~")))


def is_seed_key(key: str) -> bool:
    """``seed`` or ``<anything>.seed``."""
    return bool(_SEED_KEY.search(key.lstrip("+~")))


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    v = str(value).strip().strip("'\"")
    return v.lower() if v.lower() in ("true", "false", "null", "none") else v


def _short(value: str) -> str:
    v = value.rstrip("/")
    return v.rsplit("/", 1)[-1] if "/" in v else v


def _is_group(key: str, groups: Iterable[str] = ()) -> bool:
    return key in set(groups) or ("." not in key and (CONF_DIR / key).is_dir())


def readable_value(key: str, value: Any, groups: Iterable[str] = ()) -> str:
    """One label part for ``key=value`` (see the module docstring).

    >>> readable_value("backbone", "whisper_tiny_en"), readable_value("backbone.pretrained", "False")
    ('whisper_tiny_en', 'random init')
    >>> readable_value("probe.lr", "0.01"), readable_value("seed", 2), readable_value("data.root", "/d/corpus_b/")
    ('lr=0.01', 'seed 2', 'root=corpus_b')
    """
    key = key.lstrip("+~")
    last = key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    v = _clean(value)
    if last == "pretrained":
        return "random init" if v is not None and v.lower() in _FALSE else "pretrained"
    if is_seed_key(key):
        return f"seed {v}" if key == "seed" else f"{key} {v}"
    if v is None:
        return f"{last}=none"
    v = _short(v)
    if _is_group(key, groups) or "/" in key or last in ("name", "model_id"):
        return v
    return f"{last}={v}"


def _order(key: str) -> tuple:
    k = key.lstrip("+~")
    return (_KEY_ORDER.index(k), "") if k in _KEY_ORDER else (len(_KEY_ORDER), k)


def curve_labels(jobs: Sequence[Mapping[str, Any]], pool_seeds: bool = True) -> list[str]:
    """The curve label of each job (see the module docstring).

    ``jobs``: dicts with ``overrides`` (``{key: value}``), and optionally ``defaults``
    (``{key: value}`` the job uses for keys it does not override), ``groups`` (names of
    config groups), ``backbones`` (names in its results), ``layers`` (layers in its
    results), ``rel`` (its path).
    """

    def val(j: Mapping, k: str) -> str | None:
        if k in j["overrides"]:
            return _clean(j["overrides"][k])
        return _clean((j.get("defaults") or {}).get(k))

    groups = {g for j in jobs for g in (j.get("groups") or ())}
    keys = sorted({k for j in jobs for k in j["overrides"]}, key=_order)
    varying = [k for k in keys if len({val(j, k) for j in jobs}) > 1]
    seed_keys = [k for k in varying if is_seed_key(k)]
    shown = [k for k in varying if not is_layer_key(k) and not (pool_seeds and is_seed_key(k))]
    labels = [", ".join(readable_value(k, val(j, k), groups) for k in shown) for j in jobs]
    names = ["+".join(j.get("backbones") or ()) for j in jobs]
    if shown and all(is_seed_key(k) for k in shown):  # "seed 1" alone does not say what was measured
        labels = [", ".join(p for p in (n, lab) if p) for n, lab in zip(names, labels)]

    def collisions() -> list[list[int]]:
        by: dict[str, list[int]] = {}
        for i, lab in enumerate(labels):
            by.setdefault(lab, []).append(i)
        return [idx for idx in by.values() if len(idx) > 1]

    for idx in collisions():  # nothing overridden tells them apart: the results' backbone names may
        if len({names[i] for i in idx}) > 1:
            for i in idx:
                labels[i] = ", ".join(p for p in (names[i], labels[i]) if p)
    for idx in collisions():  # one label and one seed measuring a layer twice: separate runs, not seeds
        seen: dict[tuple, set] = {}
        clash = False
        for i in idx:
            seed = tuple(val(jobs[i], k) for k in seed_keys)
            layers = set(jobs[i].get("layers") or ())
            if seen.get(seed, set()) & layers:
                clash = True
            seen.setdefault(seed, set()).update(layers)
        if clash:
            for i in idx:
                labels[i] = f"{labels[i] or names[i]} [{jobs[i].get('rel', i)}]"
    return [lab or names[i] or "all jobs" for i, lab in enumerate(labels)]


_LABEL_SPLIT = re.compile(r",(?=[+~]?[A-Za-z_][\w./-]*=)")


def parse_job_label(label: str) -> dict[str, str]:
    """``{key: value}`` of a ``job`` label such as ``backbone=mfcc,probe.layer=[0,1],seed=1``.

    >>> parse_job_label("backbone=mfcc,probe.layer=[0,1],seed=1")
    {'backbone': 'mfcc', 'probe.layer': '[0,1]', 'seed': '1'}
    """
    out = {}
    for part in _LABEL_SPLIT.split(str(label)):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lstrip("+~")] = value
    return out


# ------------------------------------------------------------------------------ curves


def _metric_col(df: pd.DataFrame) -> str:
    if "metric" in df.columns:
        return "metric"
    raise SweepError(f"the table has no 'metric' column (tables written before the one schema: read them with "
                     f"src.reporting.results.read_results): {list(df.columns)}")


def _first(values: Iterable) -> Any:
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != "nan":
            return v
    return None


def _job_seed(label: Any) -> str | None:
    seeds = {k: v for k, v in parse_job_label(str(label)).items() if is_seed_key(k)}
    return ",".join(f"{k}={v}" for k, v in sorted(seeds.items())) if seeds else None


def _with_curves(df: pd.DataFrame, pool_seeds: bool) -> pd.DataFrame:
    """``df`` with a ``curve`` column (from the ``job`` labels when missing), ``_seed`` (the job's
    seed overrides as found in its label, "" when none) and ``_rep`` (the replicate: the seed, else the job)."""
    if "job" not in df.columns:
        df = df.assign(job="all")
    job = df["job"].astype(str)
    jobs = list(dict.fromkeys(job))
    if "curve" not in df.columns or df["curve"].isna().all():
        specs = []
        for j in jobs:
            rows = df[job == j]
            layer = (
                _numeric(rows["layer"]) if "layer" in rows.columns else _numeric(rows["value"]) * float("nan")
            )
            layers = set(layer[layer >= 0].tolist())
            bb = (
                sorted(str(b) for b in rows["backbone"].dropna().unique())
                if "backbone" in rows.columns
                else []
            )
            specs.append({"overrides": parse_job_label(j), "backbones": bb, "layers": layers, "rel": j})
        curve = dict(zip(jobs, curve_labels(specs, pool_seeds=pool_seeds)))
        df = df.assign(curve=job.map(curve))
    seed = {j: _job_seed(j) or "" for j in jobs}
    where = df["job_dir"].astype(str) if "job_dir" in df.columns else job
    df = df.assign(curve=df["curve"].astype(str), _seed=job.map(seed))
    df = df.assign(_rep=df["_seed"].where(df["_seed"] != "", "job " + where))
    if not pool_seeds:  # one curve per seed where a curve still holds several
        many = df.groupby("curve")["_seed"].transform("nunique") > 1
        shown = df["_seed"].str.replace("seed=", "seed ", regex=False)
        df = df.assign(curve=df["curve"].where(~many, df["curve"] + ", " + shown))
    return df


def _numeric(s: Any) -> Any:
    import pandas as pd

    return pd.to_numeric(s, errors="coerce")


def _series_columns(d: pd.DataFrame) -> list[str]:
    """Text columns (and ``k``) whose value differs between rows of one job at one layer."""
    cands = [c for c in d.columns if c not in _NOT_SERIES and not c.startswith("_")
             and (c == "k" or d[c].dtype == object or str(d[c].dtype).startswith("str"))]  # fmt: skip
    out = []
    for c in cands:
        n = d.groupby(["_rep", "curve", "layer"], dropna=False)[c].nunique(dropna=False)
        if (n > 1).any():
            out.append(c)
    return out


def _series_label(row: Any) -> str:
    """``reference`` "k=5" and ``k`` 5 -> "k=5": text values as they are, numbers as ``col=value``,
    a part that another part contains (or repeats) left out."""
    parts = [str(v) if isinstance(v, str) else f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}" for c, v in row.items()]  # fmt: skip
    kept: list[str] = []
    for p in parts:
        if p not in kept and not any(p in q for q in parts if q != p):
            kept.append(p)
    return ", ".join(kept)


def _direction(metric: str) -> str:
    m = metric.lower()
    if any(re.search(rf"(^|_){w}($|_)", m) for w in _LOWER):
        return "lower is better"
    if any(re.search(rf"(^|_){w}($|_)", m) for w in _HIGHER) or m.endswith("f1"):
        return "higher is better"
    return ""


def _choose_split(rows: pd.DataFrame) -> str | None:
    if "split" not in rows.columns or rows["split"].isna().all():
        return None
    splits = [str(s) for s in rows["split"].dropna().unique()]
    return "test" if "test" in splits else splits[0]


def _pool(values: Any, spread: str) -> tuple[float, float, float]:
    import numpy as np

    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    if spread == "sd":
        sd = float(v.std(ddof=1))
        return mean, mean - sd, mean + sd
    return mean, float(v.min()), float(v.max())


def sweep_curves(
    df: pd.DataFrame,
    metric: str | Sequence[str] | None = None,
    split: str | None = None,
    pool_seeds: bool = True,
    spread: str = "minmax",
) -> pd.DataFrame:
    """Curves over layers of a merged sweep table (``summary.csv``), one row per (metric, curve, layer).

    ``metric``: one name, several, or None for every metric (``*_baseline`` metrics are
    baselines of another metric, not curves). ``split``: None takes "test" when the
    metric has it, else its first split. ``pool_seeds``: jobs that differ only in a seed
    are averaged (``n_seeds``, ``spread_low``/``spread_high`` by ``spread``: "minmax" or
    "sd"); False keeps one curve per seed. Columns: ``CURVE_COLUMNS`` (see the module
    docstring). Raises ``SweepError`` for an unknown metric or spread.
    """
    import numpy as np
    import pandas as pd

    if spread not in SPREADS:
        raise SweepError(f"spread={spread!r}: choose one of {SPREADS}")
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    mcol = _metric_col(df)
    d = _with_curves(df, pool_seeds)
    if "layer_b" in d.columns:  # layer x layer matrices are not curves over layers
        d = d[d["layer_b"].isna()]
    d = d.assign(layer=_numeric(d["layer"]) if "layer" in d.columns else np.nan, value=_numeric(d["value"]))
    for c in ("ci_low", "ci_high"):
        d = d.assign(**{c: _numeric(d[c]) if c in d.columns else np.nan})
    names = [str(m) for m in d[mcol].dropna().unique()]
    if metric is None:
        wanted = [m for m in names if not m.endswith("_baseline")]
    else:
        wanted = [metric] if isinstance(metric, str) else list(metric)
        unknown = [m for m in wanted if m not in names]
        if unknown:
            raise SweepError(f"no rows with {mcol} {unknown}; available: {sorted(names)}")
    out = []
    for m in wanted:
        rows = d[d[mcol].astype(str) == m]
        sp = split if split is not None else _choose_split(rows)
        if sp is not None and "split" in rows.columns and rows["split"].notna().any():
            if not (rows["split"] == sp).any():
                raise SweepError(
                    f"no rows with {mcol}={m!r} and split={sp!r}; splits: {sorted(rows['split'].dropna().unique())}"
                )
            rows = rows[rows["split"] == sp]
        rows = rows[rows["value"].notna()]
        per_layer = rows[rows["layer"] >= 0]
        out += _layer_rows(per_layer, m, sp, spread)
        refs = rows[rows["layer"].isna() | (rows["layer"] < 0)]
        if len(refs):
            names_ = [_reference_name(r) for r in refs.to_dict("records")]
            out += _baseline_rows(refs.assign(_name=names_), m, sp, spread)
        prefix = f"{m}_"
        for b in names:
            if b.startswith(prefix) and b.endswith("_baseline") and b != m:
                brows = d[d[mcol].astype(str) == b]
                if sp is not None and "split" in brows.columns and (brows["split"] == sp).any():
                    brows = brows[brows["split"] == sp]
                label = b[len(prefix) : -len("_baseline")].replace("_", " ") or "baseline"
                out += _baseline_rows(brows[brows["value"].notna()].assign(_name=label), m, sp, spread)
    res = pd.DataFrame(out, columns=CURVE_COLUMNS)
    return res


def _meta(rows: pd.DataFrame) -> dict:
    """The task (probing) or analysis name, and the corpus, of a curve's rows."""
    task = _first(v for c in ("task", "analysis") if c in rows.columns for v in rows[c])
    return {
        "task": task,
        "corpus": _first(rows["corpus"]) if "corpus" in rows.columns else None,
    }


def _layer_rows(rows: pd.DataFrame, metric: str, split: str | None, spread: str) -> list[dict]:
    if rows.empty:
        return []
    if "target" in rows.columns and (rows["target"].astype(str) == "mean").any():
        mean_jobs = rows.groupby("_rep")["target"].transform(lambda t: (t.astype(str) == "mean").any())
        rows = rows[~mean_jobs | (rows["target"].astype(str) == "mean")]  # a job's own mean over targets
    series = _series_columns(rows)
    curve = rows["curve"].astype(str)
    averaged = ""
    if series:
        key = rows[series].apply(_series_label, axis=1)
        n_series = rows.assign(_s=key).groupby("curve")["_s"].nunique().max()
        if n_series > MAX_SERIES:
            averaged = f" (mean of {n_series} {'/'.join(series)})"
        else:
            curve = curve + ", " + key
    rows = rows.assign(_curve=curve + averaged)
    out = []
    for c in dict.fromkeys(rows["_curve"]):
        rc = rows[rows["_curve"] == c]
        meta = _meta(rc)
        for layer, rl in sorted(rc.groupby("layer"), key=lambda t: t[0]):
            per_rep = rl.groupby("_rep", sort=False).agg(value=("value", "mean"), n=("value", "size"),
                                                          ci_low=("ci_low", "first"), ci_high=("ci_high", "first"))  # fmt: skip
            mean, lo, hi = _pool(per_rep["value"], spread)
            one = len(per_rep) == 1 and int(per_rep["n"].iloc[0]) == 1
            name = _first(rl["layer_name"]) if "layer_name" in rl.columns else None
            out.append({
                "metric": metric, "split": split, "curve": c, "kind": "layer", "baseline": None,
                "layer": float(layer), "layer_name": None if name is None else str(name), "value": mean,
                "ci_low": float(per_rep["ci_low"].iloc[0]) if one else float("nan"),
                "ci_high": float(per_rep["ci_high"].iloc[0]) if one else float("nan"),
                "n_seeds": len(per_rep), "spread_low": lo, "spread_high": hi, **meta,
            })  # fmt: skip
    return out


def _baseline_rows(rows: pd.DataFrame, metric: str, split: str | None, spread: str) -> list[dict]:
    """One row per (curve, baseline name): the mean over seeds (each job of a layer sweep repeats
    the baseline of its seed; those copies are one value, not replicates)."""
    out = []
    for (curve, name), rb in rows.groupby(["curve", "_name"], sort=False):
        per_seed = rb.groupby("_seed", sort=False).agg(value=("value", "mean"), distinct=("value", "nunique"),
                                                        ci_low=("ci_low", "first"), ci_high=("ci_high", "first"))  # fmt: skip
        mean, lo, hi = _pool(per_seed["value"], spread)
        one = len(per_seed) == 1 and int(per_seed["distinct"].iloc[0]) == 1
        out.append({
            "metric": metric, "split": split, "curve": str(curve), "kind": "baseline", "baseline": str(name),
            "layer": float("nan"), "layer_name": None, "value": mean,
            "ci_low": float(per_seed["ci_low"].iloc[0]) if one else float("nan"),
            "ci_high": float(per_seed["ci_high"].iloc[0]) if one else float("nan"),
            "n_seeds": len(per_seed), "spread_low": lo, "spread_high": hi, **_meta(rb),
        })  # fmt: skip
    return out


def _reference_name(row: Mapping[str, Any]) -> str:
    """Name of a row of the metric itself without a layer (the weighted-sum probe)."""
    if "weighted" in str(row.get("probe", "")).lower():
        return "weighted sum of layers"
    name = row.get("layer_name")
    if name is not None and str(name) not in ("nan", "baseline", ""):
        return str(name)
    layer = row.get("layer")
    return (
        "no layer"
        if layer is None or (isinstance(layer, float) and math.isnan(layer))
        else f"layer {layer:g}"
    )


# ------------------------------------------------------------------------------ figure


def _names(values: Iterable) -> list[str]:
    return [str(v) for v in dict.fromkeys(v for v in values if v is not None and str(v) != "nan")]


def sweep_title(curves: pd.DataFrame, metric: str | None = None) -> str:
    """The title "<task> on <corpus>: <metric> over layers" from the curves table (several values joined by " / ")."""
    metric = metric or " / ".join(_names(curves["metric"]))
    task = " / ".join(_names(curves["task"])) if "task" in curves.columns else ""
    corpus = " / ".join(_names(curves["corpus"])) if "corpus" in curves.columns else ""
    head = task + (f" on {corpus}" if corpus else "")
    return f"{head}: {metric} over layers" if head else f"{metric} over layers"


def _band_note(layers: pd.DataFrame, spread: str) -> str:
    pooled = layers[layers["n_seeds"] > 1]
    has_ci = (layers["n_seeds"] == 1) & layers["ci_low"].notna() & layers["ci_high"].notna()
    parts = []
    if len(pooled):
        n = sorted({int(v) for v in pooled["n_seeds"]})
        what = "min-max" if spread == "minmax" else "mean ± 1 sd"
        parts.append(f"lines: mean of {'/'.join(map(str, n))} seeds, bands: {what} over seeds")
    if has_ci.any():
        parts.append(("single runs: " if len(pooled) else "bands: ") + "95% interval (ci_low-ci_high)")
    return "; ".join(parts)


def draw_sweep(
    curves: pd.DataFrame, title: str | None = None, metric: str | None = None, spread: str = "minmax"
) -> Figure:
    """The summary figure of ``sweep_curves`` output for one metric, as an Agg Figure (not saved)."""
    import numpy as np

    from src.reporting.figures import new_figure

    if curves is None or len(curves) == 0:
        raise SweepError("no curves to draw")
    metrics = _names(curves["metric"])
    if metric is None:
        if len(metrics) > 1:
            raise SweepError(f"the curves table holds several metrics {metrics}: pass metric=")
        metric = metrics[0]
    c = curves[curves["metric"] == metric]
    if c.empty:
        raise SweepError(f"no curves for metric {metric!r}; available: {metrics}")
    layers = c[c["kind"] == "layer"]
    base = c[c["kind"] == "baseline"]
    order = list(dict.fromkeys(c["curve"]))
    colour = {name: f"C{i % 10}" for i, name in enumerate(order)}
    n_layers = layers.groupby("curve")["layer"].nunique()
    multi = bool((n_layers > 1).any())
    grid = np.array(sorted(layers.loc[layers["curve"].isin(n_layers[n_layers > 1].index), "layer"].unique()))

    fig = new_figure(7.6 if len(order) > 4 else 6.6, 4.4)
    ax = fig.add_subplot()
    n_entries = 0
    for name in order:
        s = layers[layers["curve"] == name].sort_values("layer")
        if s.empty:
            continue
        col = colour[name]
        lo_n, hi_n = int(s["n_seeds"].min()), int(s["n_seeds"].max())
        label = name + (
            "" if hi_n == 1 else f" (n={hi_n} seeds)" if lo_n == hi_n else f" (n={lo_n}-{hi_n} seeds)"
        )
        lo = np.where(s["n_seeds"] > 1, s["spread_low"], s["ci_low"]).astype(float)
        hi = np.where(s["n_seeds"] > 1, s["spread_high"], s["ci_high"]).astype(float)
        if len(s) == 1 and multi:  # a one-layer job (MFCC) beside layer curves: a level across the layers
            v, k = float(s["value"].iloc[0]), s["layer"].iloc[0]
            ax.axhline(v, ls="--", lw=1.4, color=col, label=f"{label} [layer {k:g}]")
            if np.isfinite(lo[0]) and np.isfinite(hi[0]):
                ax.axhspan(lo[0], hi[0], color=col, alpha=0.12, lw=0)
            n_entries += 1
            continue
        x = s["layer"].to_numpy(float)
        y, ylo, yhi = s["value"].to_numpy(float), lo, hi
        if len(grid):  # break the line where this curve lacks a layer another curve measured
            inside = grid[(grid >= x.min()) & (grid <= x.max())]
            pos = {v: i for i, v in enumerate(x)}
            idx = [pos.get(v) for v in inside]
            x = inside.astype(float)
            y, ylo, yhi = (np.array([a[i] if i is not None else np.nan for i in idx]) for a in (y, ylo, yhi))
        ax.plot(x, y, marker="o", ms=4, lw=1.6, color=col, label=label)
        ok = np.isfinite(ylo) & np.isfinite(yhi)
        if ok.any() and len(x) == 1:  # a lone point: an error bar (a band has no width)
            yerr = [[max(y[0] - ylo[0], 0.0)], [max(yhi[0] - y[0], 0.0)]]
            ax.errorbar(x, y, yerr=yerr, fmt="none", ecolor=col, capsize=4, lw=1.2)
        elif ok.any():
            ax.fill_between(
                x, np.where(ok, ylo, np.nan), np.where(ok, yhi, np.nan), color=col, alpha=0.18, lw=0
            )
        n_entries += 1
    if len(base):
        styles = [":", "-.", (0, (1, 3)), (0, (5, 2, 1, 2))]
        for i, (bname, b) in enumerate(base.groupby("baseline", sort=False)):
            levels: dict[
                float, list[str]
            ] = {}  # one line per distinct value, naming its curves when they differ
            for _, r in b.iterrows():
                levels.setdefault(round(float(r["value"]), 12), []).append(str(r["curve"]))
            for v, names in levels.items():
                named = len(levels) > 1 or set(names) != set(order)  # not every curve's: say whose
                label = f"{bname} ({v:.3g})" + (": " + " / ".join(names) if named else "")
                col = colour.get(names[0], "0.35") if named and len(names) == 1 else "0.35"
                ax.axhline(v, ls=styles[i % len(styles)], lw=1.3, color=col, label=label)
                n_entries += 1
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    named = layers.dropna(subset=["layer_name"]).drop_duplicates("layer")
    if len(named) and not all(str(n).lstrip("-").isdigit() for n in named["layer_name"]):
        ax.set_xticks(named["layer"].to_numpy(float))
        ax.set_xticklabels(named["layer_name"].astype(str).tolist(), rotation=30 if len(named) > 8 else 0)
    ax.set_xlabel("layer (state k; 0 = the input to the first layer)")
    split = _first(c["split"])
    direction = _direction(metric)
    extra = ", ".join(p for p in (str(split) if split is not None else "", direction) if p)
    ax.set_ylabel(f"{metric} ({extra})" if extra else metric)
    note = _band_note(layers, spread)
    ax.set_title((title or sweep_title(c, metric)) + (f"\n{note}" if note else ""), fontsize="medium")
    ax.grid(alpha=0.3)
    if n_entries:
        if n_entries > 5:
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize="small", loc="best")
    return fig


def plot_sweep(
    curves: pd.DataFrame,
    out_png: str | os.PathLike,
    title: str | None = None,
    metric: str | None = None,
    spread: str = "minmax",
) -> Figure:
    """Draw ``draw_sweep`` and save it as a PNG (atomically); returns the Figure, its axes intact.

    ``title`` replaces the "<task> on <corpus>: <metric> over layers" line; the band note
    stays under it. ``spread`` names the seed spread in the note (as given to ``sweep_curves``).
    """
    from src.fileutil import atomic_path
    from src.reporting.figures import DPI

    fig = draw_sweep(curves, title=title, metric=metric, spread=spread)
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return fig
