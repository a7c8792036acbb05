"""Weights & Biases helpers: choose the mode without the network, build the Lightning
logger, log a results table with over-layer charts and figures.

Conventions
-----------
- ``wandb_mode("auto")`` is "online" only when an API key is present locally
  (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, a netrc entry for the W&B host, or an
  ``api_key`` in wandb's settings file); otherwise "offline". An explicit ``WANDB_MODE``
  in the environment wins over "auto" (``WANDB_DISABLED=true`` means "disabled"). No
  network call is made to decide: a key is not checked for validity.
- Offline runs are written under ``<save_dir>/wandb/offline-run-*``; ``wandb sync``
  uploads them later.
- Per-layer values are logged with ``layer`` as the step metric of each key
  ``[<prefix>]<split>/<metric>/<target>``, so W&B draws them as lines over layers.
- wandb and lightning are imported inside the functions.
"""

from __future__ import annotations

import configparser
import math
import netrc
import os
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


def layer_series(df: pd.DataFrame, key_prefix: str = "") -> dict[int | float, dict[str, float]]:
    """``{layer: {key: value}}`` for the per-layer rows of a results table.

    Key: ``<prefix><split>/<metric>/<target>`` with the parts the table has (``measure``
    for analyses; ``probe`` is added when the table mixes several probes). Matrix rows
    (non-empty ``layer_b``), non-numeric layers and non-finite values are skipped.
    Several rows with the same key and layer are averaged.
    """
    import pandas as pd

    mcol = "metric" if "metric" in df.columns else "measure" if "measure" in df.columns else None
    if mcol is None or "layer" not in df.columns or "value" not in df.columns:
        return {}
    d = df.copy()
    if "layer_b" in d.columns:
        d = d[d["layer_b"].isna()]
    d["layer"] = pd.to_numeric(d["layer"], errors="coerce")
    d["value"] = pd.to_numeric(d["value"], errors="coerce")
    d = d[d["layer"].notna() & d["value"].notna()]
    parts = [c for c in ("split",) if c in d.columns]
    parts.append(mcol)
    if "probe" in d.columns and d["probe"].nunique() > 1:
        parts.append("probe")
    if "target" in d.columns:
        parts.append("target")

    def key(row: pd.Series) -> str:
        return key_prefix + "/".join(str(row[c]) for c in parts if pd.notna(row[c]))

    if d.empty:
        return {}
    d["_key"] = d.apply(key, axis=1)
    out: dict[int | float, dict[str, float]] = {}
    for (layer, k), v in d.groupby(["layer", "_key"])["value"].mean().items():
        lay = int(layer) if float(layer).is_integer() else float(layer)
        out.setdefault(lay, {})[k] = float(v)
    return dict(sorted(out.items()))


def log_results_to_wandb(
    run: Any,
    df: pd.DataFrame,
    pngs: Iterable[str | os.PathLike] = (),
    key_prefix: str = "",
    tables: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Log a results table, its values over layers, and PNG figures to a W&B run.

    ``run`` is a ``wandb`` run or a Lightning ``WandbLogger`` (its ``experiment`` is used).
    Logs ``<prefix>results`` (a ``wandb.Table``), one step per layer with every per-layer
    key and ``<prefix>layer`` (declared as their step metric with ``define_metric``), and
    ``<prefix>figures/<png stem>`` images, and each of ``tables`` (e.g. transcripts) as
    ``<prefix><name>``. Returns what was logged, as
    ``{"table": key, "layers": {layer: {key: value}}, "images": [keys], "tables": [keys]}``.
    """
    import wandb

    if hasattr(run, "experiment") and not hasattr(run, "log"):
        run = run.experiment
    if not hasattr(run, "log") or not hasattr(run, "define_metric"):
        raise WandbConfigError(
            f"log_results_to_wandb needs a wandb run or WandbLogger, got {type(run).__name__}"
        )

    series = layer_series(df, key_prefix)
    step_key = f"{key_prefix}layer"
    if series:
        run.define_metric(step_key, hidden=False)
        for k in sorted({k for vals in series.values() for k in vals}):
            # exact names, not a glob: Lightning's logger declares "*" -> trainer/global_step
            run.define_metric(k, step_metric=step_key)
        for layer, vals in series.items():
            run.log({**vals, step_key: layer})

    def as_table(frame: pd.DataFrame):
        t = frame.copy()
        for c in t.columns:  # wandb.Table wants one type per column: object columns become strings
            if t[c].dtype == object or str(t[c].dtype) in ("str", "string"):
                t[c] = t[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        return wandb.Table(dataframe=t.reset_index(drop=True))

    table_key = f"{key_prefix}results"
    payload: dict[str, Any] = {table_key: as_table(df)}
    table_keys = []
    for name, frame in (tables or {}).items():
        payload[f"{key_prefix}{name}"] = as_table(frame)
        table_keys.append(f"{key_prefix}{name}")
    image_keys = []
    for png in pngs:
        p = Path(png)
        if not p.is_file():
            raise FileNotFoundError(f"figure to log does not exist: {p}")
        k = f"{key_prefix}figures/{p.stem}"
        payload[k] = wandb.Image(str(p), caption=p.name)
        image_keys.append(k)
    run.log(payload)
    return {"table": table_key, "layers": series, "images": image_keys, "tables": table_keys}
