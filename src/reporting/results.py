"""Result tables: one long-format table per run, written as CSV and JSON.

Conventions
-----------
- One row per measured number, in one schema for every writer (probing jobs, analyses, interventions, SAE
  evaluation, lenses): :data:`COLUMNS` names every shared column and what it holds, in CSV order.
  The measured quantity is always ``metric`` and the number of units an interval rests on always
  ``n_units`` (beside ``unit``, what the bootstrap resampled). Probing rows carry ``RESULT_COLUMNS``
  (one row per layer x target x metric x split); analysis rows carry ``ANALYSIS_COLUMNS`` (one row
  per layer x metric, or per layer x layer_b for layer-by-layer matrices such as CKA). Any other keys
  are kept as extra columns (an analysis's own: ``method``, ``variant``, ``k``, ...).
- Tables written before this schema called the quantity ``measure`` (analyses) and the unit count
  ``n`` (agreement, faithfulness): :func:`normalise_columns` reads them under the current names, and
  :func:`read_results` applies it, so old and new run directories merge into one table.
- ``value`` must be finite. A row whose value is NaN/inf/missing is refused with a
  ``ResultsError`` naming the row, unless the row has a non-empty ``note`` that explains
  why (e.g. "constant target: Pearson r undefined"). Non-finite numbers are written as
  empty CSV cells and JSON ``null`` (strict JSON, no ``NaN`` token).
- Column order of the CSV: ``columns_first`` (all of them, empty if no row has them),
  then every other key sorted by name. The JSON keeps each row's keys as given.
- Writes are atomic: both files are written to temporary files in ``out_dir`` and only
  then renamed over the old ones (``os.replace``), so a crash never leaves a half file
  and an earlier complete ``results.csv`` survives a failed rewrite.

pandas is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from src.fileutil import temp_path

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

COLUMNS: dict[str, str] = {  # every shared column, in CSV order, and what it holds
    "backbone": "the model (its config name; '-random' for random weights)",
    "task": "probing: the task (phones, words, ...)",
    "analysis": "analyses: the analysis name (cka, rsa, ...)",
    "probe": "probing: the probe (linear, mlp, ...)",
    "layer": "the state index (layer k = the output of transformer layer k; 0 = the input embeddings)",
    "layer_name": "the state's display name ('3', 'final_norm')",
    "layer_b": "the second layer of a layer-by-layer matrix (CKA, CCA)",
    "reference": "what a layer is compared with (a reference model, a method, k=8, ...)",
    "lens": "lens analyses: which lens",
    "target": "probing: what is predicted (a tier, a class); figures: the line a row belongs to",
    "metric": "the measured quantity (accuracy, cka, rsa_spearman, per, wer, ...)",
    "value": "the number (finite, or empty with a 'note')",
    "ci_low": "lower end of the 95% interval (empty: no interval)",
    "ci_high": "upper end of the 95% interval",
    "unit": "what the interval's bootstrap resampled (text, utterance, speaker, item)",
    "n_units": "how many units the interval rests on",
    "few_units": "analyses: fewer than 5 units (the interval is unreliable)",
    "split": "probing: the data split the value is measured on (test, val, train)",
}
OPTIONAL_COLUMNS = {  # documented extra columns some writers add (kept as they are)
    "note": "why a value is missing or special (required for a non-finite value)",
    "job": "multirun merges: the job's directory name",
    "job_dir": "multirun merges: the job's directory",
    "corpus": "the corpus (context column of analyses and merges)",
    "n_utterances": "utterances a row rests on, when the unit is coarser",
}
# Names of earlier versions, read as the current ones by normalise_columns: {old: new}.
ALIASES = {"measure": "metric", "n": "n_units"}

RESULT_COLUMNS = ["backbone", "task", "probe", "layer", "layer_name", "target", "metric", "value", "ci_low", "ci_high",
                  "unit", "n_units", "split"]  # a probing row's columns (jobs write all of them)
ANALYSIS_COLUMNS = ["backbone", "analysis", "layer", "layer_name", "layer_b", "reference", "lens", "metric", "value",
                    "ci_low", "ci_high", "unit", "n_units", "few_units"]  # analysis rows' usual columns
assert all(c in COLUMNS for c in RESULT_COLUMNS + ANALYSIS_COLUMNS)

# Columns that hold names, read back as strings even when they look like numbers
# (a stress target "0"/"1", a layer-wise job name "3").
TEXT_COLUMNS = (
    "backbone",
    "task",
    "probe",
    "target",
    "metric",
    "split",
    "analysis",
    "measure",
    "job",
    "note",
)


def normalise_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the current column names: ``measure`` -> ``metric`` and ``n`` -> ``n_units`` (:data:`ALIASES`).

    For tables written before the one schema. ``n`` is renamed only where the table names the ``unit`` of its
    intervals (elsewhere an ``n`` may count something else). Where a table has both names, the current
    column keeps its values and takes the old one's where it has none; the old column is dropped.
    Returns ``df`` itself when nothing needs renaming."""
    todo = {old: new for old, new in ALIASES.items() if old in df.columns and (old != "n" or "unit" in df.columns)}
    if not todo:
        return df
    df = df.copy()
    for old, new in todo.items():
        if new in df.columns:
            df[new] = df[new].where(df[new].notna(), df[old])
            df = df.drop(columns=[old])
        else:
            df = df.rename(columns={old: new})
    return df


class ResultsError(ValueError):
    """A result row cannot be written (non-finite value without a note, bad argument)."""


def to_jsonable(obj: Any) -> Any:
    """Plain-Python copy of ``obj`` for strict JSON.

    numpy/torch scalars and arrays become Python numbers/lists (via ``tolist``), paths
    become strings, non-finite floats become ``None``; mappings and sequences recurse.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars/arrays, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def _is_finite_number(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def check_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validated plain copies of ``rows``; refuses a non-finite ``value`` without a ``note``."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ResultsError(f"result row {i} is a {type(row).__name__}, expected a dict")
        clean = {str(k): to_jsonable(v) for k, v in row.items()}
        if not _is_finite_number(row.get("value")) and not str(row.get("note") or "").strip():
            shown = {k: v for k, v in row.items() if k != "value"}
            raise ResultsError(
                f"result row {i} has a non-finite value {row.get('value')!r} and no 'note' explaining "
                f"why: {shown}. Fix the computation, drop the row, or add a 'note'."
            )
        out.append(clean)
    return out


def column_order(rows: list[dict[str, Any]], columns_first: list[str] | None = None) -> list[str]:
    """``columns_first`` (or the known columns present in ``rows``), then other keys sorted."""
    present: set[str] = set().union(*(r.keys() for r in rows)) if rows else set()
    if columns_first is None:
        first = [c for c in COLUMNS if c in present]
    else:
        first = list(dict.fromkeys(columns_first))
    return first + sorted(present - set(first))


def _atomic_writers(targets: dict[Path, Callable[[IO[str]], None]]) -> None:
    """Write every target to a temp file beside it, then rename all into place.

    Nothing is renamed unless every writer succeeded; temp files are removed on error.
    """
    tmps: dict[Path, Path] = {}
    try:
        for path, write in targets.items():
            tmp = temp_path(path)
            tmps[path] = tmp
            with open(tmp, "x", encoding="utf-8", newline="") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()


def write_results(
    rows: list[dict[str, Any]],
    out_dir: str | os.PathLike,
    name: str = "results",
    columns_first: list[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<out_dir>/<name>.csv`` and ``<out_dir>/<name>.json``; return ``{"csv": .., "json": ..}``.

    The JSON is ``{"meta": meta, "columns": [csv column order], "rows": rows}``. See the module docstring for the
    column order, the non-finite-value rule and atomicity.
    """
    import pandas as pd

    clean = check_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = column_order(clean, columns_first)
    df = pd.DataFrame(clean, columns=cols)
    for c in cols:  # an int column with gaps stays int in the CSV ("12", not "12.0")
        vals = [r[c] for r in clean if r.get(c) is not None]
        if vals and len(vals) < len(clean) and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            df[c] = df[c].astype("Int64")
    paths = {"csv": out / f"{name}.csv", "json": out / f"{name}.json"}
    # one row per line: readable, diffable, still strict JSON
    head = json.dumps({"meta": to_jsonable(meta or {}), "columns": cols}, allow_nan=False)[:-1]
    body = ",\n".join(json.dumps(r, allow_nan=False) for r in clean)
    payload = f'{head}, "rows": [\n{body}\n]}}' if clean else f'{head}, "rows": []}}'

    def write_csv(fh: IO[str]) -> None:
        df.to_csv(fh, index=False, lineterminator="\n")

    def write_json(fh: IO[str]) -> None:
        fh.write(payload + "\n")

    _atomic_writers({paths["csv"]: write_csv, paths["json"]: write_json})
    return paths


def read_results(path_or_dir: str | os.PathLike, name: str = "results") -> pd.DataFrame:
    """Read a results table: a ``.csv`` or ``.json`` file, or ``<dir>/<name>.csv``, under the current column
    names (:func:`normalise_columns`: a table written before the one schema reads as a new one).

    Name-like columns (``TEXT_COLUMNS``) are read as strings; empty cells are NaN.
    """
    import pandas as pd

    p = Path(path_or_dir)
    if p.is_dir():
        p = p / f"{name}.csv"
    if not p.is_file():
        raise FileNotFoundError(f"no results file at {p}")
    if p.suffix == ".json":
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
        rows = data["rows"]
        df = pd.DataFrame(rows, columns=data.get("columns") or column_order(rows))
        return normalise_columns(_as_csv_types(df))
    header = pd.read_csv(p, nrows=0).columns
    return normalise_columns(pd.read_csv(p, dtype={c: str for c in TEXT_COLUMNS if c in header}, keep_default_na=True))


def _as_csv_types(df: pd.DataFrame) -> pd.DataFrame:
    """Give a table built from JSON rows the dtypes ``read_csv`` gives the same table.

    Text columns and columns that are not all numbers become strings (missing stays NaN);
    all-number columns become int64/float64 as ``read_csv`` would infer them.
    """
    import pandas as pd

    out = {}
    for c in df.columns:
        col = df[c]
        if c not in TEXT_COLUMNS:
            try:
                out[c] = pd.to_numeric(col)
                continue
            except (ValueError, TypeError):
                pass
        out[c] = col.map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        out[c] = out[c].astype(pd.StringDtype(na_value=float("nan")) if _pandas_3() else object)
    return pd.DataFrame(out, columns=df.columns, index=df.index)


def _pandas_3() -> bool:
    import pandas as pd

    return int(pd.__version__.split(".")[0]) >= 3


def write_config(cfg: Any, out_dir: str | os.PathLike, name: str = "config_resolved.yaml") -> Path:
    """Save the resolved config (an OmegaConf ``DictConfig`` or a plain dict) as YAML, atomically.

    Hydra's own ``.hydra/config.yaml`` keeps interpolations unresolved; this file shows
    the values the run used.
    """
    from omegaconf import DictConfig, OmegaConf

    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(to_jsonable(cfg))
    text = OmegaConf.to_yaml(conf, resolve=True)
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_writers({path: lambda fh: fh.write(text)})
    return path
