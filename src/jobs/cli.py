"""What the entry points do around their job: the ``--help`` text's config groups, config checks run before
any model, corpus or cache work, and how a config error reaches the user: one line on stderr naming the
key, exit status 2, no traceback, and no run directory left behind that holds nothing but Hydra's own files.

Each value is checked by the code that later uses it, so the rules live in one place:

- group choices typed on the command line (``backbone=nope``, ``analysis=ckaa``): :func:`check_choices`,
  before Hydra composes anything or creates a run directory;
- layer specs (``layers``, ``probe.layer``, ``analysis.layers``): their syntax first
  (:func:`src.layers.check_layer_spec`), then, once the backbone is constructed from its configuration
  (no weights are read), that the layers exist in it (:func:`src.layers.resolve_layers`);
- ``split:`` (``split.by`` and the fractions, :mod:`src.datamodules.splits`), ``labels:``
  (:class:`src.datamodules.labels.LabelNormalization`) and ``stream``;
- the backbone itself: a missing model directory or an unreachable model hub
  (:func:`src.backbones.hub.check_hub_access`, before torch is imported) is reported here, in seconds.

:func:`checked_job` runs the checks, then the job; the entry points call it and nothing else.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.jobs.common import CONF_DIR, group_options

EXIT_CONFIG_ERROR = 2  # as argparse: the command line or config is wrong, nothing was run


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what is valid."""


# --------------------------------------------------------------------------- --help


# --------------------------------------------------------------------------- group choices, before Hydra


def choice_errors(overrides: list[str]) -> list[str]:
    """Messages for command-line overrides ``group=option`` that name no ``conf/<group>/<option>.yaml``.

    Only plain values and comma-separated sweeps of them are read (``backbone=a,b``); anything Hydra
    itself interprets (``range(...)``, ``choice(...)``, ``glob(...)``, interpolations, quoting) is left to it.
    """
    errors = []
    for ov in overrides:
        if ov.startswith("-") or "=" not in ov:
            continue
        key, value = ov.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra") or "/" in key or "." in key or not (CONF_DIR / key).is_dir():
            continue
        if any(c in value for c in "()[]{}$'\"*") or value in ("", "null"):
            continue
        options = group_options(key)
        for v in (x.strip() for x in value.split(",")):
            if v and v not in options:
                near = difflib.get_close_matches(v, options, n=1)
                hint = f" (did you mean {key}={near[0]}?)" if near else ""
                errors.append(f"{key}={v}: there is no conf/{key}/{v}.yaml{hint}; choose from {', '.join(options)}")
    return errors


def check_choices(entry: str, argv: list[str] | None = None) -> None:
    """Exit with one line per unknown group choice in ``argv`` (default ``sys.argv[1:]``), before Hydra runs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith(("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath")) for a in argv):
        return  # options may come from another config directory: Hydra reports what it cannot find
    errors = choice_errors(argv)
    if errors:
        for e in errors:
            print(f"{entry}.py: config error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR)


# --------------------------------------------------------------------------- checks of the composed config


def _checked(what_fn, *args, **kwargs):
    """``what_fn(*args)``; the ValueError it raises (LayerSpecError, SplitError, LabelError, ...) as a ConfigError."""
    try:
        return what_fn(*args, **kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def job_kind(cfg: DictConfig, entry: str) -> str:
    """``probing``, ``utterance``, ``sae`` (train.py's jobs), ``analysis`` or ``cache``."""
    if entry == "analyze":
        return "analysis"
    if entry == "build_cache":
        return "cache"
    if cfg.get("sae") is not None:
        return "sae"
    return "utterance" if cfg.task.get("kind") == "utterance" else "probing"


def check_config(cfg: DictConfig, entry: str) -> None:
    """The checks that need no model: values left ``???``, layer-spec syntax, split, labels (raises ConfigError)."""
    from src.layers import check_layer_spec

    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except Exception:  # an interpolation that does not resolve here: the job reports it
        missing = []
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be given (??? in the config), e.g. {missing[0]}=...")
    kind = job_kind(cfg, entry)
    if kind == "probing":
        _checked(check_layer_spec, _plain(cfg.get("layers")), "layers")
        _checked(check_layer_spec, _plain(cfg.probe.get("layer")), "probe.layer")
        if cfg.get("layers") is not None and cfg.probe.get("layer") is not None:
            raise ConfigError(f"give either layers={_plain(cfg.layers)} or probe.layer={_plain(cfg.probe.layer)}, not both")
        _checked(_check_stream, cfg.get("stream", "auto"))
    if kind == "analysis" and "layers" in cfg.analysis:
        _checked(check_layer_spec, _plain(cfg.analysis.layers), "analysis.layers")
    if kind in ("probing", "utterance") and cfg.get("split") is not None:
        _checked(_check_split, _plain(cfg.split))
    if cfg.get("labels") is not None:
        from src.datamodules.labels import LabelNormalization

        _checked(LabelNormalization.from_config, _plain(cfg.labels))


def _check_stream(stream) -> None:
    low = stream.strip().lower() if isinstance(stream, str) else stream
    if low not in ("auto", "true", "false", True, False):
        raise ConfigError(f"stream must be auto, true or false, got {stream!r}")


def _check_split(split: dict) -> None:
    """What :func:`src.datamodules.splits.split_utterances` would refuse before looking at the corpus."""
    from src.datamodules.splits import UNITS, check_fractions

    by = split.get("by", "text")
    if by not in (*UNITS, "timit_core", "order"):
        raise ConfigError(f"split.by must be utterance, text, speaker, timit_core or order; got {by!r}")
    if by in UNITS and not (by == "speaker" and split.get("test_speakers") is not None and split.get("val_speakers")):
        check_fractions(split.get("val_fraction", 0.15), split.get("test_fraction", 0.2))


def check_against_backbone(cfg: DictConfig, entry: str) -> None:
    """Construct the backbone from its configuration (no weights) and check the layer specs against its states
    (``layers`` / ``probe.layer``; ``analysis.layers`` of the cache analyses and the encoder lenses).

    A backbone that cannot be constructed (no such directory, unreachable hub, bad config.json) is a
    ConfigError with the backbone's own message.  Not for the SAE job (its own code checks its caches) nor
    for an analysis given a classifier ``checkpoint`` (it brings its backbone)."""
    from hydra.utils import get_class, instantiate

    kind = job_kind(cfg, entry)
    if kind == "sae":  # its caches may come from several backbones (sae.corpora): its own code checks them
        return
    range_check = kind == "probing"  # the utterance classifier's layer is task.layer, checked by its job
    if kind == "analysis":
        target = cfg.analysis.get("_target_")
        try:
            needs_cache = bool(getattr(get_class(target), "needs_cache", True)) if target else False
        except Exception:  # an analysis class that does not import: the job reports it with its traceback
            return
        if str(cfg.analysis.get("checkpoint", "auto")) not in ("auto", "None", "null"):
            return  # a given classifier checkpoint carries its own backbone
        # analysis.layers counts the backbone's encoder states for cache analyses and the encoder lenses; the
        # other live-model analyses count layers of their own (decoder layers, per component)
        range_check = needs_cache or cfg.analysis.get("name") in ("ctc_lens", "decoder_lens")
    model_id = OmegaConf.select(cfg, "backbone.model_id", default=None, throw_on_missing=False)
    if model_id is not None:
        from src.backbones.hub import HubError, check_hub_access, is_hub_id

        if is_hub_id(model_id):  # before torch and transformers are imported: a few seconds, not a minute
            revision = OmegaConf.select(cfg, "backbone.revision", default=None, throw_on_missing=False)
            try:
                check_hub_access(str(model_id), revision)
            except HubError as e:
                raise ConfigError(f"backbone: {e}") from None
    from src.backbones.base import BackboneError  # imports torch

    try:
        backbone = instantiate(cfg.backbone)
    except BackboneError as e:
        raise ConfigError(f"backbone: {e}") from None
    except Exception as e:  # Hydra wraps the constructor's error in an InstantiationException
        cause = e.__cause__ if e.__cause__ is not None else e
        if isinstance(cause, BackboneError):
            raise ConfigError(f"backbone: {cause}") from None
        raise
    from src.layers import resolve_layers

    extras = list(getattr(backbone, "extra_states", None) or [])
    n = int(backbone.num_layers)
    if not range_check:
        return
    if kind == "probing":
        single = _plain(cfg.probe.get("layer"))
        what, spec = ("probe.layer", single) if single is not None else ("layers", _plain(cfg.get("layers")))
        _checked(resolve_layers, spec, n, extras, what)
    elif kind == "analysis" and cfg.analysis.get("layers") is not None:
        _checked(resolve_layers, _plain(cfg.analysis.layers), n, extras, "analysis.layers")


# --------------------------------------------------------------------------- reporting and the run directory


def _remove_if_empty_run_dir() -> None:
    """Remove this job's run directory if it holds only Hydra's files (``.hydra/``, ``<job>.log``), and a
    multirun's sweep directory if nothing but ``multirun.yaml`` is left in it."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # not under Hydra (a test calling checked_job directly)
        return
    out = Path(hc.runtime.output_dir)
    if not (out.is_dir() and {p.name for p in out.iterdir()} <= {".hydra", f"{hc.job.name}.log"}):
        return
    shutil.rmtree(out, ignore_errors=True)
    top = out.parent
    try:
        sweep = Path(str(hc.sweep.dir))
        if sweep == out.parent and sweep.is_dir() and {p.name for p in sweep.iterdir()} <= {"multirun.yaml"}:
            shutil.rmtree(sweep, ignore_errors=True)
            top = sweep.parent
    except Exception:  # a run (not a multirun) whose sweep dir does not resolve
        pass
    stop = Path(hc.runtime.cwd).resolve()
    for d in [top, *top.parents][:2]:  # outputs/train/ (and outputs/) if this run made them and left them empty
        if d.resolve() == stop or not d.is_dir() or any(d.iterdir()):
            break
        d.rmdir()


@contextlib.contextmanager
def config_errors(entry: str):
    """Turn a ConfigError into one line on stderr (``<entry>.py: config error: ...``), remove the job's
    still-empty run directory and exit with status 2."""
    try:
        yield
    except ConfigError as e:
        logging.shutdown()  # close the job's log file before its directory goes
        _remove_if_empty_run_dir()
        print(f"{entry}.py: config error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def checked_job(cfg: DictConfig, entry: str):
    """Check the config (:func:`check_config`, :func:`check_against_backbone`), then run the entry point's job:
    ``train`` (probing / utterance classifier / SAE), ``analyze`` or ``build_cache``."""
    with config_errors(entry):
        check_config(cfg, entry)
        check_against_backbone(cfg, entry)
    if entry == "train":
        from src.jobs.run import probing_job

        return probing_job(cfg)
    if entry == "analyze":
        from src.jobs.run import analysis_job

        return analysis_job(cfg)
    from src.jobs.cache import cache_job

    return cache_job(cfg)
