"""Weights & Biases helpers: choose the mode without the network, build the Lightning logger, and log a
results table as the story it tells (series over layers, best layers, baselines, intervals, counts, tables,
figures, trained models, sweep summaries).

Conventions
-----------
- ``wandb_mode("auto")`` is "online" only when an API key is present locally
  (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, a netrc entry for the W&B host, or an
  ``api_key`` in wandb's settings file); otherwise "offline". An explicit ``WANDB_MODE``
  in the environment wins over "auto" (``WANDB_DISABLED=true`` means "disabled"). No
  network call is made to decide: a key is not checked for validity.
- Offline runs are written under ``<save_dir>/wandb/offline-run-*``; ``wandb sync``
  uploads them later; :mod:`src.reporting.wandb_read` decodes them.
- Keys are namespaced by analysis (``cka/...``, ``rsa/...``; probing runs ``probe/...``, SAE runs
  ``sae/...``). A series key holds every column that tells series apart (``ID_COLUMNS``: split, metric,
  reference, k, method, lens, component, input, target, ...), so two references are two keys;
  ``<ns>/layer`` is the step metric of all of them. Only per-layer scalars are series: matrices (CKA/CCA
  layer x layer, context-mixing word matrices) become per-layer summaries plus tables and images.
- The run summary holds each series' *best* value (direction-aware: lower is better for error, loss, ABX,
  FVU, WER/CER/PER, KL, ...) with ``<key>/best_layer``, and ``best_layer`` / ``best_value`` /
  ``best_series`` for the main series; baselines (majority class, chance) are constant series and summary
  values, never a point at layer -1; intervals are the series ``<key>/ci_low`` and ``<key>/ci_high``.
- wandb and lightning are imported inside the functions.
"""

from __future__ import annotations

import configparser
import math
import netrc
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"


class WandbConfigError(ValueError):
    """An unknown W&B mode or an unusable run object."""


def _settings_file() -> Path:
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "wandb"
    )
    return Path(config_dir) / "settings"


def _settings() -> dict[str, str]:
    """The ``[default]`` section of wandb's settings file (empty if none or unreadable)."""
    path = _settings_file()
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or _settings().get("base_url") or DEFAULT_BASE_URL


def _netrc_path() -> Path:
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for name in ("~/.netrc", "~/_netrc"):
        p = Path(name).expanduser()
        if p.exists():
            return p
    return Path("~/.netrc").expanduser()


def _netrc_has_key(host: str) -> bool:
    try:
        creds = netrc.netrc(_netrc_path()).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(creds and creds[2])


def api_key_present() -> bool:
    """True if a W&B credential is configured on this machine (checked locally only)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    if _settings().get("api_key"):
        return True
    host = urlsplit(_base_url()).hostname or ""
    return bool(host) and _netrc_has_key(host)


def wandb_mode(requested: str = "auto") -> str:
    """Resolve ``requested`` ("auto", "online", "offline", "disabled") to a wandb mode."""
    if requested not in MODES:
        raise WandbConfigError(f"unknown W&B mode {requested!r}; expected one of {MODES}")
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    if env_mode == "dryrun":
        return "offline"
    return "online" if api_key_present() else "offline"


def make_wandb_logger(
    project: str,
    name: str | None,
    group: str | None,
    save_dir: str | os.PathLike,
    mode: str = "auto",
    tags: list[str] | None = None,
    config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A ``lightning.pytorch.loggers.WandbLogger`` whose run is created lazily in ``mode``.

    ``save_dir`` receives ``wandb/<run dir>``. Multirun jobs should share ``group``.
    ``config`` (e.g. the resolved Hydra config as a dict) is attached to the run.
    Extra keyword arguments go to ``wandb.init``.

    A run still open in this process (a multirun job that failed before its
    ``wandb.finish()``) is finished with a warning, and ``reinit="finish_previous"`` is
    passed to ``wandb.init``: each job gets its own run, never a previous job's.
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    stale = wandb.run
    if stale is not None:
        # Lightning's WandbLogger reuses ``wandb.run`` when one is open, and wandb.init's
        # default ("return_previous") would return it too: a job of a multirun that runs in
        # the same process after a failed job would log into that job's run.
        warnings.warn(
            f"a W&B run ({stale.name!r}, id {stale.id}) left open by an earlier job in this process "
            "is stale; finishing it so that this job gets its own run",
            stacklevel=2,
        )
        stale.finish(exit_code=1)
    init: dict[str, Any] = {
        "mode": wandb_mode(mode),
        "group": group,
        "tags": list(tags) if tags else None,
        # any other run still active in this process is a leftover: finish it, start a new one
        "reinit": "finish_previous",
    }
    if config is not None:
        init["config"] = config
    init.update(kwargs)
    logger = WandbLogger(project=project, name=name, save_dir=str(save_dir), **init)
    # Lightning always passes anonymous=None to wandb.init, which makes wandb >= 0.2x warn
    # that the setting is deprecated; drop the key when it carries nothing.
    wandb_init = getattr(logger, "_wandb_init", None)
    if isinstance(wandb_init, dict) and wandb_init.get("anonymous") is None:
        wandb_init.pop("anonymous", None)
    return logger


# ------------------------------------------------------------------------------ the story of a results table

# Columns that tell series apart, in key order. ``probe`` (and the other run-level choices in
# ``RUN_LEVEL``) join the key only when they vary within the table, so the runs of a sweep over them
# share keys and W&B overlays them in one panel.
ID_COLUMNS = (
    "split", "metric", "reference", "k", "method", "lens", "component", "input", "target", "kind",
    "variant", "intervention", "position_label", "head", "group", "source_a", "source_b", "baseline", "curve",
    "probe", "architecture", "similarity", "mode",
)  # fmt: skip
RUN_LEVEL = ("probe", "architecture", "similarity", "mode")
# Columns that never tell series apart: context, coordinates, values, interval and count bookkeeping, free text.
NOT_ID = {
    "backbone", "corpus", "analysis", "task", "layer", "layer_name", "layer_b", "value", "ci_low", "ci_high",
    "unit", "n_units", "few_units", "note", "fit_warning", "job", "job_dir", "utterance", "item", "latent",
    "evaluation", "null", "permuted", "position", "frames",
}  # fmt: skip
# Per-item rows (one utterance, one patching item, one SAE latent) are not per-layer summaries.
ITEM_COLUMNS = {"utterance": ("mean", "all"), "item": ("mean",), "latent": ()}

LOWER_IS_BETTER = re.compile(
    r"(error|(?<!recovered_)loss(?!_recovered)|abx|fvu|(^|_)(mse|wer|cer|per)(_|$)|(^|_)kl(_|$)|codelength|rank|dead|"
    r"hallucinated$)"
)
NO_BEST = re.compile(
    r"(p_value|layer_weight|(^|_)n_|_null$|(^|_)l0$|dense_fraction|gram_trace|self_share|outside_mass|"
    r"^control(_|$)|argmax|next_layer|epoch|baseline|chance|uniform_code|^capped$)"
)
# The main series of a table: the first pattern any series matches (test split, target "mean" preferred).
MAIN_PATTERNS = (
    r"^accuracy$", r"^pearson_r$", r"^r2$", r"^macro_f1$", r"^cue_minus_control$", r"^cka", r"^rsa_", r"cca$",
    r"^abx_", r"mutual|^n?mi$|^mi_", r"loss_recovered", r"^(wer|per|cer)$", r"top1_agreement", r"^fvu$", r"silhouette", r"accuracy",
)  # fmt: skip
# Levels a measure is compared with, logged as constant series and summary values.
CHANCE = {"abx_within": ("abx_chance", 0.5), "abx_across": ("abx_chance", 0.5),
          "mdl_compression": ("mdl_compression_uniform_code", 1.0)}  # fmt: skip
COUNT_KEY = re.compile(r"(^n_(?!boot|perm)|^num_|utterances|frames|items|tokens|positions|segments|labels$|units)")
SERIES_COLUMNS = ["key", "metric", "layer", "value", "ci_low", "ci_high", "constant", "best", "order"]


def direction(metric: str) -> str | None:
    """``"min"`` for error-like measures (error, loss, ABX, FVU, WER/CER/PER, KL, code length, rank), ``"max"``
    for the others, None where a best layer means nothing (p-values, layer weights, counts, shares, baselines)."""
    m = str(metric).lower()
    if NO_BEST.search(m):
        return None
    return "min" if LOWER_IS_BETTER.search(m) else "max"


def namespace_of(df: pd.DataFrame) -> str:
    """The key prefix of a table: its ``analysis`` (``cka``, ``rsa``, ...), else ``probe``."""
    if "analysis" in df.columns and df["analysis"].notna().any():
        return str(df["analysis"].dropna().iloc[0])
    return "probe"


def _numeric(s):
    import pandas as pd

    return pd.to_numeric(s, errors="coerce")


def _present(v) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    return str(v).strip() not in ("", "nan", "None", "<NA>")


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _keys(d: pd.DataFrame, cols: list[str], prefix: str) -> list[str]:
    """``prefix/part/part...`` per row: the present values of ``cols``. A value an earlier part already
    carries is left out: ``k`` = 5 after ``reference`` = ``k=5``, ``method`` = spearman after
    ``metric`` = rsa_spearman."""
    out = []
    for vals in d[cols].itertuples(index=False, name=None) if cols else [()] * len(d):
        parts: list[str] = []
        for c, v in zip(cols, vals):
            if not _present(v):
                continue
            s = _fmt(v)
            if any(s == p or p.endswith("=" + s) or (c == "method" and p.endswith("_" + s)) for p in parts):
                continue
            parts.append(s)
        out.append("/".join([prefix, *parts]))
    return out


def _id_columns(d: pd.DataFrame, mcol: str) -> list[str]:
    cols = []
    for c in ID_COLUMNS:
        if c not in d.columns:
            continue
        if c in RUN_LEVEL and d[c].dropna().astype(str).nunique() <= 1:
            continue
        cols.append(c)
    return cols


def _distinct_keys(d: pd.DataFrame, cols: list[str], prefix: str, coord: list[str]) -> tuple[list[str], list[str]]:
    """Keys per row; when two rows still share a key and coordinate (``layer``), other text columns that vary
    join the key (an analysis with a column this module does not know). Returns (keys, columns used)."""
    keys = _keys(d, cols, prefix)
    dup = d.assign(_key=keys).duplicated(["_key", *coord], keep=False)
    if dup.any():
        extra = [c for c in d.columns if c not in cols and c not in NOT_ID and c not in coord
                 and (d[c].dtype == object or str(d[c].dtype) in ("str", "string"))
                 and d.loc[dup, c].dropna().astype(str).nunique() > 1]  # fmt: skip
        if extra:
            cols = cols + extra
            keys = _keys(d, cols, prefix)
    return keys, cols


def _collapse(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """One row per (key, layer): rows that still share both are averaged, with a warning (a column that
    should tell them apart is missing from the table)."""
    dup = frame.duplicated(["key", "layer"], keep=False)
    if not dup.any():
        return frame
    warnings.warn(f"{what}: {int(dup.sum())} rows share a series key and layer with another row "
                  f"({sorted(set(frame.loc[dup, 'key']))[:3]}...); their mean is logged", stacklevel=3)  # fmt: skip
    agg = {"metric": "first", "value": "mean", "ci_low": "first", "ci_high": "first", "constant": "first",
           "best": "first", "order": "min"}  # fmt: skip
    g = frame.groupby(["key", "layer"], dropna=False, sort=False)
    out = g.agg(agg).reset_index()
    shared = (g.size() > 1).to_numpy()
    out.loc[shared, ["ci_low", "ci_high"]] = float("nan")  # no interval for a mean of several rows
    return out[SERIES_COLUMNS]


def _series_frame(key, metric, layer, value, ci_low=None, ci_high=None, constant=False, order=0):
    import pandas as pd

    n = max((len(x) for x in (key, layer, value) if not isinstance(x, str) and hasattr(x, "__len__")), default=1)
    return pd.DataFrame({"key": key, "metric": metric, "layer": layer, "value": value,
                         "ci_low": ci_low if ci_low is not None else [float("nan")] * n,
                         "ci_high": ci_high if ci_high is not None else [float("nan")] * n,
                         "constant": constant, "order": order})  # fmt: skip


def _per_item_mask(d: pd.DataFrame):
    import pandas as pd

    keep = pd.Series(True, index=d.index)
    for c, summaries in ITEM_COLUMNS.items():
        if c in d.columns:
            v = d[c]
            keep &= ~v.map(_present) | v.astype(str).isin(summaries)
    return keep


def context_mixing_series(df: pd.DataFrame, tables: dict[str, pd.DataFrame] | None = None,
                          namespace: str = "context_mixing") -> pd.DataFrame:  # fmt: skip
    """Per-layer summaries of context-mixing word matrices (the head-mean rows; each row sums to 1):

    - ``self_share/<component>/<measure>`` (encoder, decoder): the mean diagonal mass ``S[i <- i]`` over the
      receiving units whose row is not all zero, averaged per utterance, then over utterances;
    - ``outside_mass/<component>/<measure>``: the ``outside_mass`` table's share of the rows' mass on frames
      outside every word, mean over utterances;
    - ``cue/...``, ``control/...``, ``cue_minus_control/<component>/<measure>`` with their intervals: the
      ``cue_contribution`` table (homophone cue study).
    The mean over all cells of a row-normalised matrix is ``1 / #words`` at every layer, so it is never logged.
    """
    import pandas as pd

    tables = tables or {}
    parts = []
    cells = df.copy()
    if "head" in cells.columns:
        cells = cells[~cells["head"].map(_present)]
    for c in ("layer", "receiver_index", "source_index", "value"):
        cells[c] = _numeric(cells[c])
    cells = cells[cells["layer"].notna() & cells["value"].notna()]
    sq = cells[cells["component"].astype(str).isin(("encoder", "decoder"))]
    if len(sq):
        by = ["utterance", "component", "metric", "layer", "receiver_index"]
        rows = sq.groupby(by, dropna=False)["value"].sum().rename("row_sum").to_frame()
        diag = sq[sq["receiver_index"] == sq["source_index"]].groupby(by, dropna=False)["value"].sum()
        rows["diag"] = diag.reindex(rows.index).fillna(0.0)
        rows = rows[rows["row_sum"] > 0].reset_index()
        per_utt = rows.groupby(by[:-1], dropna=False)["diag"].mean().reset_index()
        agg = per_utt.groupby(["component", "metric", "layer"], dropna=False)["diag"].mean().reset_index()
        parts.append(_series_frame([f"{namespace}/self_share/{c}/{m}" for c, m in zip(agg["component"], agg["metric"])],
                                   "self_share", agg["layer"].to_numpy(), agg["diag"].to_numpy(), order=0))  # fmt: skip
    om = tables.get("outside_mass")
    if om is not None and len(om) and "outside_mass" in om.columns:
        om = om.assign(layer=_numeric(om["layer"]), outside_mass=_numeric(om["outside_mass"]))
        agg = om.groupby(["component", "metric", "layer"], dropna=False)["outside_mass"].mean().reset_index()
        parts.append(_series_frame([f"{namespace}/outside_mass/{c}/{m}" for c, m in zip(agg["component"], agg["metric"])],
                                   "outside_mass", agg["layer"].to_numpy(), agg["outside_mass"].to_numpy(), order=1))  # fmt: skip
    cue = tables.get("cue_contribution")
    if cue is not None and len(cue) and "kind" in cue.columns:
        cue = cue.assign(layer=_numeric(cue["layer"]), value=_numeric(cue["value"]))
        order = {"cue_minus_control": -1, "cue": 2, "control": 3}
        for c in ("ci_low", "ci_high"):
            cue[c] = _numeric(cue[c]) if c in cue.columns else float("nan")
        parts.append(pd.concat([
            _series_frame([f"{namespace}/{k}/{c}/{m}"], k, [lay], [v], [lo], [hi], order=order.get(k, 4))
            for k, c, m, lay, v, lo, hi in cue[["kind", "component", "metric", "layer", "value", "ci_low", "ci_high"]]
            .itertuples(index=False, name=None)], ignore_index=True))  # fmt: skip
    if not parts:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    out["best"] = out["metric"].map(direction)
    return out[SERIES_COLUMNS]


def _matrix_series(m: pd.DataFrame, mcol: str, prefix: str) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Series from layer x layer_b rows. A group with one ``layer_b`` per layer (CCA of a layer with the next)
    is a series (key part ``vs_next_layer`` or ``vs_paired_layer``); a full matrix gives per-layer summaries:
    within the model (reference ``self`` or no reference) the value with the next analysed layer
    (``next_layer``); against another space the maximum over its layers (``max_over_reference_layers``) and
    where it is (``argmax_reference_layer``). Also the matrices as wide tables (rows: layer, columns: layer_b)."""
    import pandas as pd

    cols = _id_columns(m, mcol)
    m = m.assign(_key=_keys(m, cols, prefix), layer_b=_numeric(m["layer_b"]))
    frames, wide = [], {}
    for key, g in m.groupby("_key", sort=False):
        metric = str(g[mcol].iloc[0])
        per_layer = g.groupby("layer")["layer_b"].nunique()
        if per_layer.max() <= 1:
            part = "vs_next_layer" if (g["layer_b"] > g["layer"]).all() else "vs_paired_layer"
            frames.append(_series_frame(f"{key}/{part}", f"{metric}/{part}", g["layer"].to_numpy(), g["value"].to_numpy(),
                                        _numeric(g.get("ci_low", pd.Series(float("nan"), index=g.index))).to_numpy(),
                                        _numeric(g.get("ci_high", pd.Series(float("nan"), index=g.index))).to_numpy(),
                                        order=int(g.index.min())))  # fmt: skip
            continue
        mat = g.pivot_table(index="layer", columns="layer_b", values="value", aggfunc="mean")
        wide[key] = mat
        ref = str(g["reference"].iloc[0]) if "reference" in g.columns and _present(g["reference"].iloc[0]) else "self"
        layers = list(mat.index)
        if ref == "self" and set(mat.columns) >= set(layers):
            nxt = [(a, float(mat.loc[a, b])) for a, b in zip(layers[:-1], layers[1:]) if pd.notna(mat.loc[a, b])]
            if nxt:
                frames.append(_series_frame(f"{key}/next_layer", f"{metric}/next_layer", [a for a, _ in nxt], [v for _, v in nxt],
                                            order=int(g.index.min())))  # fmt: skip
        else:
            vals = mat.to_numpy(dtype=float)
            ok = ~pd.isna(vals).all(axis=1)
            best = [mat.columns[int(pd.Series(r).idxmax())] for r in vals[ok]]
            lay = [a for a, k in zip(layers, ok) if k]
            frames.append(_series_frame(f"{key}/max_over_reference_layers", metric, lay,
                                        [float(pd.Series(r).max()) for r in vals[ok]], order=int(g.index.min())))  # fmt: skip
            frames.append(_series_frame(f"{key}/argmax_reference_layer", "argmax", lay, [float(b) for b in best],
                                        order=int(g.index.min())))  # fmt: skip
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SERIES_COLUMNS)), wide


def story(df: pd.DataFrame, tables: dict[str, pd.DataFrame] | None = None,
          namespace: str | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:  # fmt: skip
    """The series a results table tells over layers, and its matrices.

    Returns ``(series, matrices)``: ``series`` has one row per (key, layer) with ``SERIES_COLUMNS``
    (``constant``: a value without a layer, drawn as a flat line: baselines, the weighted-sum head, chance;
    ``best``: ``"max"`` / ``"min"`` / None, see :func:`direction`; ``order``: first row of the table, to pick the
    main series); ``matrices``: key -> wide layer x layer_b table. Keys are ``<namespace>/<parts>`` with the
    present values of the columns that tell series apart (``ID_COLUMNS``: split, metric, reference,
    k, method, lens, component, input, target, ...), so different references never share a key. Rows left out:
    per-item rows (an utterance, a patching item, an SAE latent), word-matrix cells (context mixing: see
    :func:`context_mixing_series`), non-finite values.
    """
    import pandas as pd

    ns = namespace or namespace_of(df)
    empty = pd.DataFrame(columns=SERIES_COLUMNS)
    mcol = "metric" if "metric" in df.columns else None
    if {"receiver_index", "source_index", "component"} <= set(df.columns):
        return context_mixing_series(df, tables, ns), {}
    if mcol is None or "value" not in df.columns:
        return empty, {}
    d = df.copy()
    if "layer" not in d.columns:  # a table without layers (faithfulness, agreement): its rows are summary values
        d["layer"] = None
    d["_order"] = range(len(d))
    d["value"] = _numeric(d["value"])
    text_layer = d["layer"].map(lambda v: str(v) if _present(v) else None)
    d["layer"] = _numeric(d["layer"])
    d["_state"] = text_layer.where(d["layer"].isna())  # a named state without an index (final_norm)
    for c in ("ci_low", "ci_high"):
        d[c] = _numeric(d[c]) if c in d.columns else float("nan")
    d = d[d["value"].notna() & _per_item_mask(d)]
    matrices: dict[str, pd.DataFrame] = {}
    frames = []
    has_b = d["layer_b"].map(_present) if "layer_b" in d.columns else pd.Series(False, index=d.index)
    if has_b.any():
        mframe, matrices = _matrix_series(d[has_b & d["layer"].notna()], mcol, ns)
        frames.append(mframe)
    d = d[~has_b]
    layered = d[d["layer"].notna() & (d["layer"] >= 0)]
    flat = d[~(d["layer"].notna() & (d["layer"] >= 0))]
    if len(layered):
        keys, _ = _distinct_keys(layered, _id_columns(layered, mcol), ns, ["layer"])
        frames.append(_series_frame(keys, layered[mcol].astype(str).to_numpy(), layered["layer"].to_numpy(),
                                    layered["value"].to_numpy(), layered["ci_low"].to_numpy(),
                                    layered["ci_high"].to_numpy(), order=layered["_order"].to_numpy()))  # fmt: skip
    if len(flat):
        # a row without a layer: a baseline (majority class, vowel identity), a reference level, or, at layer -1
        # of a probing table, the weighted-sum head over all layers
        weighted = flat["layer"].notna() & ~flat[mcol].astype(str).str.contains("baseline")
        flat = flat.assign(_part=weighted.map({True: "weighted_sum", False: None}))
        cols = _id_columns(flat, mcol) + ["_part", "_state"]
        keys, _ = _distinct_keys(flat, cols, ns, [])
        frames.append(_series_frame(keys, flat[mcol].astype(str).to_numpy(), float("nan"), flat["value"].to_numpy(),
                                    flat["ci_low"].to_numpy(), flat["ci_high"].to_numpy(), constant=True,
                                    order=flat["_order"].to_numpy()))  # fmt: skip
    chance = {}
    for metric, (name, level) in CHANCE.items():
        if len(layered) and (layered[mcol].astype(str) == metric).any():
            split = layered.loc[layered[mcol].astype(str) == metric, "split"].iloc[0] if "split" in layered else None
            chance["/".join([ns, *([str(split)] if _present(split) else []), name])] = (name, level)
    for key, (name, level) in chance.items():
        frames.append(_series_frame([key], name, [float("nan")], [level], constant=True, order=10**9))
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty, matrices
    out = pd.concat(frames, ignore_index=True)
    out["best"] = [None if c else direction(m) for m, c in zip(out["metric"], out["constant"])]
    out = out[SERIES_COLUMNS]
    moving = set(out.loc[~out["constant"].astype(bool), "key"])
    out.loc[out["constant"].astype(bool) & out["key"].isin(moving), "key"] += "/constant"  # never one key for both
    return _collapse(out, ns), matrices


def best_layers(series: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """key -> ``{"layer", "value", "ci_low", "ci_high"}`` at the best layer of every series with a direction
    (ties: the first layer)."""
    out = {}
    for key, g in series[~series["constant"].astype(bool) & series["best"].notna()].groupby("key", sort=False):
        g = g.sort_values("layer")
        i = g["value"].idxmin() if g["best"].iloc[0] == "min" else g["value"].idxmax()
        r = g.loc[i]
        out[key] = {"layer": _layer_value(r["layer"]), "value": float(r["value"]),
                    "ci_low": _finite(r["ci_low"]), "ci_high": _finite(r["ci_high"])}  # fmt: skip
    return out


def main_series(series: pd.DataFrame) -> str | None:
    """The key of the series a reader looks at first (``MAIN_PATTERNS``; the test split and the ``mean``
    target preferred; then the first in the table)."""
    cand = series[~series["constant"].astype(bool) & series["best"].notna()]
    if cand.empty:
        return None
    first = cand.groupby("key", sort=False)["order"].min().reset_index().sort_values("order", kind="stable")
    metric = cand.groupby("key", sort=False)["metric"].first()
    for pat in MAIN_PATTERNS:
        keys = [k for k in first["key"] if re.search(pat, str(metric[k]))]
        if keys:
            pref = [k for k in keys if "/test/" in k + "/"] or keys
            pref = [k for k in pref if k.endswith("/mean")] or pref
            return pref[0]
    return str(first["key"].iloc[0])


def _finite(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _layer_value(v) -> int | float:
    f = float(v)
    return int(f) if f.is_integer() else f


def count_summary(meta: dict | None) -> dict[str, Any]:
    """Counts of a results.json ``meta`` for the run summary: ``counts/<path>`` for every number under
    ``meta["counts"]`` and for every other number whose name says it counts something (``n_*``, ``num_*``,
    ``*utterances``, ``*frames``, ``*items``, ``*tokens``, ...; nested paths joined with ``/``, e.g.
    ``counts/references/mfcc/frames_matched``); ``seconds`` (the total when a dict)."""
    out: dict[str, Any] = {}

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def walk(path: str, v: Any, counted: bool) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}/{k}", x, counted or k == "counts" and path == "")
        elif number(v) and (counted or COUNT_KEY.search(path.rsplit("/", 1)[-1])):
            out["counts" + (path if not path.startswith("/counts/") else path[len("/counts"):])] = v

    meta = meta or {}
    walk("", {k: v for k, v in meta.items() if k != "seconds"}, False)
    secs = meta.get("seconds")
    if isinstance(secs, dict):
        secs = secs.get("total")
    if number(secs):
        out["seconds"] = secs
    return out


def _as_table(frame: pd.DataFrame):
    import wandb

    t = frame.copy()
    for c in t.columns:  # wandb.Table wants one type per column: object columns become strings
        if t[c].dtype == object or str(t[c].dtype) in ("str", "string"):
            t[c] = t[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    # rows as lists, not wandb.Table(dataframe=): the same cells, about 3x faster to build (its dataframe path
    # converts cell by cell through pandas; 0.56 s -> 0.18 s for a 2310 x 12 results table)
    return wandb.Table(columns=[str(c) for c in t.columns], data=t.reset_index(drop=True).values.tolist())


def _unwrap(run: Any) -> Any:
    if hasattr(run, "experiment") and not hasattr(run, "log"):
        run = run.experiment
    if not hasattr(run, "log") or not hasattr(run, "define_metric"):
        raise WandbConfigError(f"expected a wandb run or WandbLogger, got {type(run).__name__}")
    return run


def artifact_name(text: str) -> str:
    """A W&B artifact name from ``text`` (letters, digits, ``-``, ``_`` and ``.`` only, at most 128)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")[:128] or "artifact"


def log_tables(run: Any, tables: dict[str, pd.DataFrame], big_artifact: str | None = None) -> dict[str, list[str]]:
    """Log each ``{key: frame}`` as a ``wandb.Table``. A table longer than ``wandb.Table.MAX_ROWS`` (which
    wandb would cut silently) goes into one artifact of type ``results`` instead (as a table up to
    ``MAX_ARTIFACT_ROWS`` rows, and always as complete CSV). Returns ``{"tables": keys, "artifact": keys}``."""
    import wandb

    run = _unwrap(run)
    payload, big = {}, {}
    for key, frame in tables.items():
        if len(frame) > wandb.Table.MAX_ROWS:
            big[key] = frame
        else:
            payload[key] = _as_table(frame)
    if payload:
        run.log(payload)
    if big:
        art = wandb.Artifact(artifact_name(big_artifact or f"tables-{run.id}"), type="results",
                             description="result tables too long for a run table")  # fmt: skip
        for key, frame in big.items():
            name = key.replace("/", "__")
            if len(frame) <= wandb.Table.MAX_ARTIFACT_ROWS:
                art.add(_as_table(frame), name)
            with art.new_file(f"{name}.csv", mode="w", encoding="utf-8") as fh:
                frame.to_csv(fh, index=False, lineterminator="\n")
        run.log_artifact(art)
    return {"tables": list(payload), "artifact": list(big)}


def log_series(run: Any, series: pd.DataFrame, step: str) -> dict[str, Any]:
    """Log a series table (``SERIES_COLUMNS``, see :func:`story`) to ``run`` and set its summary; returns
    the summary written.

    One history step per layer with ``step`` (declared the step metric of every key), each series, its
    interval (``<key>/ci_low``, ``<key>/ci_high``) and the constants at every layer. Summary: each directed
    series' best value under its key, ``<key>/best_layer`` and the interval there; ``best_layer``,
    ``best_value``, ``best_series`` for :func:`main_series`; each constant and its interval."""
    run = _unwrap(run)
    is_const = series["constant"].astype(bool)
    moving = series[~is_const]
    constants = {k: float(v) for k, v in zip(series.loc[is_const, "key"], series.loc[is_const, "value"])}
    const_ci = {}
    for r in series[is_const].itertuples(index=False):
        if _finite(r.ci_low) is not None and _finite(r.ci_high) is not None:
            const_ci[r.key] = (float(r.ci_low), float(r.ci_high))
    by_layer: dict[int | float, dict[str, float]] = {}
    for r in moving.itertuples(index=False):
        vals = by_layer.setdefault(_layer_value(r.layer), {})
        vals[r.key] = float(r.value)
        if _finite(r.ci_low) is not None and _finite(r.ci_high) is not None:
            vals[f"{r.key}/ci_low"], vals[f"{r.key}/ci_high"] = float(r.ci_low), float(r.ci_high)
    flat = {**constants, **{f"{k}/ci_low": lo for k, (lo, _) in const_ci.items()},
            **{f"{k}/ci_high": hi for k, (_, hi) in const_ci.items()}}  # fmt: skip
    if by_layer:
        run.define_metric(step, hidden=False)
        for k in sorted({k for vals in by_layer.values() for k in vals} | set(flat)):
            # exact names, not a glob: Lightning's logger declares "*" -> trainer/global_step
            run.define_metric(k, step_metric=step)
        for layer in sorted(by_layer):
            run.log({**by_layer[layer], **flat, step: layer})
    summary: dict[str, Any] = {}
    best = best_layers(series)
    for key, b in best.items():
        summary[key] = b["value"]
        summary[f"{key}/best_layer"] = b["layer"]
        for c in ("ci_low", "ci_high"):
            if b[c] is not None:
                summary[f"{key}/{c}"] = b[c]
    main = main_series(series)
    if main is not None:
        summary.update(best_layer=best[main]["layer"], best_value=best[main]["value"], best_series=main)
    summary.update(flat)
    for k, v in summary.items():
        run.summary[k] = v
    return summary


def log_results_to_wandb(
    run: Any,
    df: pd.DataFrame,
    pngs: Iterable[str | os.PathLike] = (),
    tables: dict[str, pd.DataFrame] | None = None,
    meta: dict | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """Log a results table as the story it tells: series over layers, best layers, baselines, counts, tables,
    figures.

    ``run``: a ``wandb`` run or a Lightning ``WandbLogger``. ``namespace`` (default: the table's ``analysis``,
    else ``probe``) prefixes every key. What is logged (:func:`story` builds the series):

    - one history step per layer with ``<ns>/layer`` (the step metric of every series key, declared with
      ``define_metric``), each series ``<ns>/<parts>``, its interval ``.../ci_low`` and ``.../ci_high`` where the
      rows have one, and the constant series (baselines, weighted-sum head, chance) at every layer; never a
      step at layer -1;
    - summary: each directed series' best value under its own key with ``<key>/best_layer`` (and the interval
      at that layer); ``best_layer``, ``best_value`` and ``best_series`` for the main series
      (:func:`main_series`); constants; :func:`count_summary` of ``meta``;
    - tables: ``<ns>/results``, ``<ns>/series`` (the long series table, for custom charts), each
      ``<ns>/matrix/<key>`` (layer x layer_b), each of ``tables`` as ``<ns>/<name>``; figures as
      ``<ns>/figures/<png stem>`` images.

    Returns ``{"namespace", "step", "series": {key: {layer: value}}, "constants": {key: value},
    "best": best_layers(...), "main": key, "summary": {...}, "tables": [keys], "images": [keys]}``.
    """
    import wandb

    run = _unwrap(run)
    pngs = [Path(p) for p in pngs]
    for p in pngs:
        if not p.is_file():
            raise FileNotFoundError(f"figure to log does not exist: {p}")
    ns = namespace or namespace_of(df)
    tables = dict(tables or {})
    series, matrices = story(df, tables, ns)
    step = f"{ns}/layer"
    summary = log_series(run, series, step)
    for k, v in count_summary(meta).items():
        run.summary[k] = summary[k] = v
    logged = {f"{ns}/results": df}
    if len(series):
        logged[f"{ns}/series"] = series
    for key, mat in matrices.items():
        wide = mat.copy()
        wide.columns = [_fmt(c) for c in wide.columns]
        logged[f"{ns}/matrix/{key[len(ns) + 1:]}"] = wide.reset_index()
    for name, frame in tables.items():
        logged[f"{ns}/{name}"] = frame
    table_keys = log_tables(run, logged, big_artifact=f"{ns}-tables-{getattr(run, 'id', 'run')}")
    images = {}
    for p in pngs:
        images[f"{ns}/figures/{p.stem}"] = wandb.Image(str(p), caption=p.name)
    if images:
        run.log(images)
    moving = series[~series["constant"].astype(bool)]
    return {"namespace": ns, "step": step,
            "series": {k: {_layer_value(lay): float(v) for lay, v in zip(g["layer"], g["value"])}
                       for k, g in moving.groupby("key", sort=False)},
            "constants": {k: float(v) for k, v in zip(series.loc[~series.index.isin(moving.index), "key"],
                                                      series.loc[~series.index.isin(moving.index), "value"])},
            "best": best_layers(series), "main": main_series(series), "summary": summary,
            "tables": table_keys["tables"] + table_keys["artifact"], "images": list(images)}  # fmt: skip


def log_model_artifact(run: Any, name: str, paths: Iterable[str | os.PathLike], metadata: dict | None = None,
                       kind: str = "model", description: str | None = None) -> str:  # fmt: skip
    """Log files and directories (a checkpoint, an SAE folder) as one W&B artifact of type ``kind``.

    ``name`` is made a valid artifact name (:func:`artifact_name`); ``metadata`` must be JSON-able. Offline, the
    artifact is kept with the run and uploaded by ``wandb sync``. Returns the artifact name."""
    import wandb

    from src.reporting.results import to_jsonable

    run = _unwrap(run)
    art = wandb.Artifact(artifact_name(name), type=kind, description=description,
                         metadata=to_jsonable(metadata or {}))  # fmt: skip
    for p in map(Path, paths):
        if p.is_dir():
            art.add_dir(str(p), name=p.name)
        elif p.is_file():
            art.add_file(str(p), name=p.name)
        else:
            raise FileNotFoundError(f"artifact {name!r}: no file or directory at {p}")
    run.log_artifact(art)
    return art.name


# ------------------------------------------------------------------------------ sweeps

SWEEP_JOB_TYPE = "sweep-summary"


def log_sweep_summary(
    sweep_dir: str | os.PathLike,
    project: str = "speechinterp",
    group: str | None = None,
    mode: str = "auto",
    run: Any = None,
    **init_kwargs: Any,
) -> dict[str, Any] | None:
    """Log a finished sweep's summary files to a W&B run of the sweep's group (``job_type="sweep-summary"``).

    Every ``*.csv`` directly in ``sweep_dir`` (``summary.csv``, the curves table, ...) becomes a table
    ``sweep/<stem>`` (long ones an artifact, see :func:`log_tables`), every ``*.png`` an image
    ``sweep/figures/<stem>``, and all of them one artifact of type ``sweep-summary``. A curves table
    (columns ``curve``, ``layer``, ``value``: ``summary_curves.csv``) is also logged as series over
    ``sweep/layer`` (:func:`sweep_series`) with each curve's best layer in the summary. ``group`` defaults to
    the sweep directory's name, as the jobs' runs have it (src.jobs.common.job_context). A ``run`` given is
    used (and not finished); otherwise one is started in ``sweep_dir`` and finished. Returns what was logged,
    or None when the directory has no summary file.
    """
    import pandas as pd
    import wandb

    sweep_dir = Path(sweep_dir)
    csvs = sorted(p for p in sweep_dir.glob("*.csv") if p.is_file())
    pngs = sorted(p for p in sweep_dir.glob("*.png") if p.is_file())
    if not csvs and not pngs:
        return None
    own = run is None
    if own:
        init = {"mode": wandb_mode(mode), "project": project, "group": group or sweep_dir.name,
                "job_type": SWEEP_JOB_TYPE, "name": f"{group or sweep_dir.name}-summary", "dir": str(sweep_dir),
                "reinit": "create_new", **init_kwargs}  # fmt: skip
        run = wandb.init(**init)
    run = _unwrap(run)
    try:
        frames = {f"sweep/{p.stem}": pd.read_csv(p, keep_default_na=True) for p in csvs}
        summary = {}
        for frame in frames.values():  # the curves table (src.reporting.sweep): one W&B chart per metric
            if {"curve", "layer", "value"} <= set(frame.columns):
                summary.update(log_series(run, sweep_series(frame), "sweep/layer"))
        keys = log_tables(run, frames, big_artifact=f"sweep-tables-{sweep_dir.name}")
        images = {f"sweep/figures/{p.stem}": wandb.Image(str(p), caption=p.name) for p in pngs}
        if images:
            run.log(images)
        run.summary["sweep/jobs"] = _n_jobs(frames.get("sweep/summary"))
        art = log_model_artifact(run, f"sweep-{sweep_dir.name}", [*csvs, *pngs], kind=SWEEP_JOB_TYPE,
                                 metadata={"sweep_dir": str(sweep_dir)})  # fmt: skip
    finally:
        if own:
            run.finish()
    return {"tables": keys["tables"] + keys["artifact"], "images": list(images), "artifact": art, "summary": summary}


def sweep_series(curves: pd.DataFrame, namespace: str = "sweep") -> pd.DataFrame:
    """A sweep's curves table (``summary_curves.csv`` of src.reporting.sweep: one row per metric, curve and
    layer) as a series table for :func:`log_series`: ``<ns>/<metric>/<split>/<curve>`` over layers with the
    row's interval, the seed spread as ``.../spread_low`` and ``.../spread_high`` where several seeds were
    pooled, and baselines (``kind == "baseline"`` or no layer) as constants ``<ns>/<metric>/<split>/baseline/<name>``.
    A curve of one layer beside curves of several (a ``backbone=mfcc`` job) is a constant too: a level line."""
    import pandas as pd

    if curves is None or not len(curves) or not {"curve", "layer", "value"} <= set(curves.columns):
        return pd.DataFrame(columns=SERIES_COLUMNS)
    c = curves.reset_index(drop=True).copy()
    for col in ("layer", "value", "ci_low", "ci_high", "spread_low", "spread_high", "n_seeds"):
        c[col] = _numeric(c[col]) if col in c.columns else float("nan")
    c = c[c["value"].notna()]
    metric = c["metric"].astype(str) if "metric" in c.columns else pd.Series("value", index=c.index)
    is_base = c["layer"].isna() | (c["layer"] < 0)
    if "kind" in c.columns:
        is_base |= c["kind"].astype(str) == "baseline"
    cols = [x for x in ("metric", "split") if x in c.columns]
    base_name = c["baseline"] if "baseline" in c.columns else c["curve"]
    base_name = base_name.where(base_name.map(_present), c["curve"])
    keys = _keys(c.assign(_b="baseline", _name=base_name), [*cols, "_b", "_name"], namespace)
    ckeys = _keys(c, [*cols, "curve"], namespace)
    frames = []
    cur = c[~is_base]
    n_layers = cur.assign(_k=[ckeys[i] for i in cur.index]).groupby("_k")["layer"].nunique()
    if len(n_layers) and n_layers.max() > 1:  # a one-layer job beside layer curves (an MFCC baseline): a level
        level = cur[[n_layers[ckeys[i]] == 1 for i in cur.index]]
        if len(level):
            frames.append(_series_frame([ckeys[i] for i in level.index], metric[level.index].to_numpy(), float("nan"),
                                        level["value"].to_numpy(), level["ci_low"].to_numpy(),
                                        level["ci_high"].to_numpy(), constant=True, order=level.index.to_numpy()))  # fmt: skip
            cur = cur.drop(level.index)
    if len(cur):
        k = [ckeys[i] for i in cur.index]
        frames.append(_series_frame(k, metric[cur.index].to_numpy(), cur["layer"].to_numpy(), cur["value"].to_numpy(),
                                    cur["ci_low"].to_numpy(), cur["ci_high"].to_numpy(), order=cur.index.to_numpy()))  # fmt: skip
        pooled = cur[(cur["n_seeds"] > 1) & cur["spread_low"].notna() & cur["spread_high"].notna()]
        for side in ("spread_low", "spread_high"):
            if len(pooled):
                frames.append(_series_frame([f"{ckeys[i]}/{side}" for i in pooled.index], side,
                                            pooled["layer"].to_numpy(), pooled[side].to_numpy(), order=10**9))  # fmt: skip
    base = c[is_base]
    if len(base):
        frames.append(_series_frame([keys[i] for i in base.index], metric[base.index].to_numpy(), float("nan"),
                                    base["value"].to_numpy(), base["ci_low"].to_numpy(), base["ci_high"].to_numpy(),
                                    constant=True, order=base.index.to_numpy()))  # fmt: skip
    if not frames:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    out["best"] = [None if cst or str(m).startswith("spread_") else direction(m)
                   for m, cst in zip(out["metric"], out["constant"])]  # fmt: skip
    out = out[SERIES_COLUMNS]
    return _collapse(out, namespace)


def _n_jobs(summary: pd.DataFrame | None) -> int | None:
    if summary is None or "job" not in summary.columns:
        return None
    return int(summary["job"].nunique())


def log_sweep_summary_from_config(sweep_dir: str | os.PathLike, config: Any) -> dict[str, Any] | None:
    """:func:`log_sweep_summary` with the project and mode of the sweep's ``logger`` config; nothing when the
    sweep does not log to W&B (``logger`` csv or none) or the mode resolves to ``disabled``."""
    logger = config.get("logger") if hasattr(config, "get") else None
    if not logger or not str(logger.get("_target_", "")).endswith("make_wandb_logger"):
        return None
    mode = wandb_mode(str(logger.get("mode") or "auto"))
    if mode == "disabled":
        return None
    extra = {k: logger.get(k) for k in ("entity",) if logger.get(k)}
    return log_sweep_summary(sweep_dir, project=str(logger.get("project") or "speechinterp"), mode=mode, **extra)


def main(argv: list[str] | None = None) -> int:
    """``python -m src.reporting.wandb_utils SWEEP_DIR [--project P] [--mode M]``: log a merged sweep's summary
    files to W&B by hand (after ``python -m src.reporting.multirun SWEEP_DIR``, e.g. when a job failed and
    Hydra skipped the callback)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m src.reporting.wandb_utils",
                                description="Log a sweep directory's summary.csv, summary_curves.csv and summary PNGs "
                                            "to a W&B run of the sweep's group (job_type=sweep-summary).")  # fmt: skip
    p.add_argument("sweep_dir")
    p.add_argument("--project", default="speechinterp")
    p.add_argument("--mode", default="auto", choices=MODES)
    a = p.parse_args(argv)
    out = log_sweep_summary(a.sweep_dir, project=a.project, mode=a.mode)
    if out is None:
        print(f"{a.sweep_dir}: no summary .csv or .png to log (run python -m src.reporting.multirun first)")
        return 1
    print(f"logged {len(out['tables'])} tables, {len(out['images'])} figures and artifact {out['artifact']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
