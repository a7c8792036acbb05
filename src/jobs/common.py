"""What every job shares: the run's corpus and activation cache, its logger, run directory and W&B
hand-off, the result columns and the configuration folder.

Only the job layer (``src/jobs/``) and the entry points import this module.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.reporting.results import RESULT_COLUMNS  # noqa: F401  (the jobs' result columns: the one schema)

log = logging.getLogger("speechinterp")


def register_resolvers() -> None:
    """``${random_suffix:${backbone.pretrained}}`` -> ``-random`` for random-init backbones, so run
    directories name what differs (the backbone's own name gets the suffix only in Python)."""

    def backbone_name(name, model_id=None) -> str:  # the configured name, else the model's own (its directory / id)
        if name not in (None, "", "None"):
            return str(name)
        if model_id in (None, "", "None"):
            return "backbone"
        return str(model_id).split(":")[-1].rstrip("/").split("/")[-1]  # as the backbones name themselves

    OmegaConf.register_new_resolver("backbone_name", backbone_name, replace=True)
    OmegaConf.register_new_resolver("corpus_name", _corpus_name_of_config, replace=True)
    OmegaConf.register_new_resolver("sweep_label", _sweep_label_of_config, replace=True)
    # ${once:...}: cached under its unresolved text, and Hydra copies the multirun config's resolver cache into
    # every job's config (as for ${now:}), so each job resolves the sweep directory to the same path
    OmegaConf.register_new_resolver("once", lambda value: value, use_cache=True, replace=True)

    # the --help text's config groups (conf/hydra/help/*.yaml)
    OmegaConf.register_new_resolver("help_groups", help_groups_of_config, replace=True)

    def help_value(key: str, *, _root_) -> str:  # ${help_value:probe.layer}: the current value as typed (null, [0, 2])
        value = OmegaConf.select(_root_, key, default=None, throw_on_missing=False)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        return "null" if value is None else str(value).replace("'", "")

    OmegaConf.register_new_resolver("help_value", help_value, replace=True)
    OmegaConf.register_new_resolver(
        "random_suffix", lambda p: "" if str(p).lower() in ("true", "1", "none") else "-random", replace=True
    )
    OmegaConf.register_new_resolver("short_dirname", short_dirname, replace=True)


def short_dirname(name, limit: int = 120) -> str:
    """``${short_dirname:${hydra.job.override_dirname}}``: a job directory name that a file system accepts. A
    multirun job with many overrides names itself by all of them, which can pass the 255-byte limit of a file
    name; past ``limit`` characters the name is cut and a hash of the whole kept, so names stay distinct. The job's
    label in the sweep summary comes from ``.hydra/``, never from this name."""
    import hashlib

    name = str(name)
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    cut = name.encode()[: limit - 11].decode(errors="ignore")
    return f"{cut}~{digest}"


# --------------------------------------------------------------------------- --help


def help_groups(choices, unused=(), width: int = 100) -> str:
    """The ``--help`` section of config groups: every group the composed config chose from (``hydra.runtime.choices``
    minus Hydra's own and the ``unused`` ones), in the order of the defaults list, with its options in
    ``conf/<group>/`` and the current choice marked ``*``.  So each entry point lists the groups it uses
    (train.py has no ``analysis``), also those an ``experiment=`` adds."""
    import textwrap

    lines = []
    for group, current in reversed(list((choices or {}).items())):  # Hydra records them last-first
        if str(group).startswith("hydra") or "/" in str(group) or group in unused:
            continue
        opts = [("*" if o == current else "") + o for o in group_options(str(group))]
        if current is None:
            opts.append("*null")
        text = textwrap.fill(", ".join(opts), width=width, initial_indent=f"  {group + ':':<11} ",
                             subsequent_indent=" " * 14)  # fmt: skip
        lines.append(text)
    return "\n".join(lines)


def help_groups_of_config(*unused, _root_) -> str:
    return help_groups(OmegaConf.select(_root_, "hydra.runtime.choices", default=None), unused=unused)


def group_options(group: str) -> list[str]:
    """The options of a config group: the yaml files of ``conf/<group>/``."""
    d = CONF_DIR / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


_SWEPT_WORD = {"task": "tasks", "analysis": "analyses"}


def _swept(overrides, keys) -> bool:
    """Whether the command-line ``overrides`` sweep one of ``keys`` (``data=a,b``, ``data.root=range(...)``)."""
    for ov in overrides or ():
        key, _, value = str(ov).partition("=")
        if key.lstrip("+~") in keys and ("," in value or value.startswith(("range(", "choice(", "glob(", "interval("))):
            return True
    return False


# data configs whose corpus is named after its folder (src/datamodules: TextGridCorpus, HaskinsCorpus,
# TutorialEMACorpus, HFCorpus): the prefix before the folder's name
_NAMED_BY_FOLDER = {"textgrid": "", "haskins": "haskins_", "tutorial_ema": "tutorial_ema_", "hf": ""}
_DATA_KEYS = ("data", "data.name", "data.root", "data.source", "experiment")


def corpus_name(name=None, choice=None, root=None, source=None, overrides=None) -> str:
    """The corpus's name in run directory names, as the corpus names itself: ``data.name`` if set, else the
    folder name for the folder-named loaders (``data=textgrid data.root=/x/buckeye_small`` -> ``buckeye_small``),
    else the ``data`` config (``synth``, ``timit``).  ``overrides`` (a multirun's command-line overrides):
    ``corpora`` when they sweep the corpus (``data=a,b``), whose jobs each name theirs.

    >>> corpus_name(None, "textgrid", "/data/buckeye_small/"), corpus_name("mine", "textgrid"), corpus_name(None, "synth")
    ('buckeye_small', 'mine', 'synth')
    >>> corpus_name(None, "synth", overrides=["data=synth,timit", "seed=0"])
    'corpora'
    """
    none = (None, "", "None", "null", "???")
    if _swept(overrides, _DATA_KEYS):
        return "corpora"
    if name not in none:
        return str(name)
    choice = None if choice in none else str(choice)
    folder = source if choice == "hf" else root
    if choice in _NAMED_BY_FOLDER and folder not in none:
        return _NAMED_BY_FOLDER[choice] + (Path(str(folder).rstrip("/")).name or str(folder))
    return choice or "corpus"


def _corpus_name_of_config(mode: str = "", *, _root_) -> str:
    """``${corpus_name:}`` (run directories) / ``${corpus_name:sweep}`` (a multirun's sweep directory)."""

    def sel(key):
        return OmegaConf.select(_root_, key, default=None, throw_on_missing=False)

    overrides = list(sel("hydra.overrides.task") or []) if mode == "sweep" else None
    return corpus_name(sel("data.name"), sel("hydra.runtime.choices.data"), sel("data.root"), sel("data.source"), overrides)


def _sweep_label_of_config(what: str = "", *, _root_) -> str:
    """``${sweep_label:task}``: ``<corpus>_<task>`` of a multirun's sweep directory (``${sweep_label:analysis}``:
    ``<corpus>_<analysis>``; ``${sweep_label:}``: the corpus), ``corpora`` / ``tasks`` / ``analyses`` for what
    the command line sweeps.  Wrapped in ``${once:...}`` so that every job's sweep directory is the multirun's."""
    overrides = list(OmegaConf.select(_root_, "hydra.overrides.task", default=None) or [])
    parts = [_corpus_name_of_config("sweep", _root_=_root_)]
    if what:
        swept = _swept(overrides, (what, f"{what}.name", "experiment"))
        parts.append(_SWEPT_WORD.get(what, what) if swept else str(OmegaConf.select(_root_, f"{what}.name", default=what)))
    return "_".join(parts)


def job_context():
    """(run directory, multirun?, W&B group, run name) of the running Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if multirun else None
    name = f"{hc.job.num}_{hc.job.override_dirname}" if multirun else Path(hc.runtime.output_dir).name
    return Path(hc.runtime.output_dir), multirun, group, name[:120]


# CPython's default gen-0 threshold (700 allocations) makes importing torch, transformers, Lightning and W&B run
# 8 full collections over their millions of long-lived objects (each time they grow by a quarter), about 1 s of
# every command's start-up here, finding a few hundred cyclic objects; gc.freeze() before the interpreter exits
# spares its own full collections over everything still alive (about 1.3 s). Measured on analyze.py analysis=cka:
# 10.4 s -> 8.4 s; peak RSS of train.py and experiment=hallucination_heads within 3%.
GC_GEN0_THRESHOLD = 10_000


def gc_for_jobs() -> None:
    """The entry points' garbage-collector setting (train.py, analyze.py, build_cache.py, before Hydra): a gen-0
    threshold of :data:`GC_GEN0_THRESHOLD` allocations, never lower than the current one; generations 1 and 2
    as they are. Cyclic garbage is still collected, after more allocations; objects without cycles are freed
    by reference counting as always."""
    g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(g0, GC_GEN0_THRESHOLD), g1, g2)


def gc_before_exit() -> None:
    """Called by the entry points after their job returned: ``gc.freeze()`` (everything alive moves to the
    permanent generation), so the interpreter's finalisation skips its full collections over it. Nothing is
    lost: every result is written and closed by then, W&B's teardown still runs (atexit), and CPython makes no
    promise to finalise objects still alive at exit anyway."""
    gc.freeze()


def quiet_libraries() -> None:
    """Quiet the per-rank chatter of tokenizers and Lightning; no Hugging Face bars outside a terminal
    (their carriage returns garble log files; src/progress.py reports the long stages there)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from src.progress import resolve_mode

    if resolve_mode() != "bar":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
        if "huggingface_hub" in sys.modules:  # already imported: switch the bars off directly
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def load_corpus(cfg: DictConfig):
    """The corpus, with the run's label normalisation (``labels:``) attached for every consumer."""
    from hydra.utils import instantiate

    from src.datamodules.labels import LabelNormalization

    corpus = instantiate(cfg.data)
    labels = cfg.get("labels")
    corpus.label_norm = LabelNormalization.from_config(
        None if labels is None else OmegaConf.to_container(labels, resolve=True)
    )
    return corpus


def load_activations(cfg: DictConfig, corpus=None, before_extraction=None):
    """Corpus, and the activation cache of (backbone, corpus): built once, reused after.

    ``before_extraction(corpus)`` runs before the backbone is touched (checks of the task,
    tiers and split that would otherwise fail only after a long extraction).
    """
    from hydra.utils import instantiate

    corpus = load_corpus(cfg) if corpus is None else corpus
    if before_extraction is not None:
        before_extraction(corpus)
    cache = instantiate(cfg.cache)
    backbone = instantiate(cfg.backbone)
    acts = cache.get(backbone, corpus)
    del backbone  # probes and analyses on the cache do not need the live model
    return corpus, acts


def make_logger(cfg: DictConfig, out_dir: Path, group: str | None, name: str, job_type: str):
    """The run's logger (W&B, CSV) on global rank 0; None on every other rank (they write nothing)."""
    from hydra.utils import instantiate

    from src.distributed import global_rank

    if not cfg.get("logger") or global_rank() != 0:
        return None
    factory = instantiate(cfg.logger)
    target = cfg.logger.get("_target_", "")
    if target.endswith("make_wandb_logger"):
        return factory(
            name=name, group=group, save_dir=str(out_dir), job_type=job_type,
            config=OmegaConf.to_container(cfg, resolve=True),
        )  # fmt: skip
    return factory(save_dir=str(out_dir))


def trainer_world_size(trainer_partial) -> int:
    """Processes the probe trainer runs on (``trainer.world_size`` of a throwaway Trainer: it
    reads devices / num_nodes / the launcher's environment exactly as the real ones will)."""
    return int(trainer_partial(logger=False, enable_progress_bar=False).world_size)


def stays_after_cache(trainer_partial) -> bool:
    """Whether this process has work left once the activation cache is ready.

    Global rank 0 always does (it trains and writes).  A rank > 0 exists because a
    distributed extraction (``cache.trainer`` with DDP: Lightning re-runs the script for
    each local rank, or torchrun / srun started it) or a distributed probe trainer
    (``trainer=ddp``) needs it: it stays only for the latter, and never writes results.
    """
    from src.distributed import global_rank

    rank = global_rank()
    if rank == 0:
        return True
    if trainer_partial is not None and trainer_world_size(trainer_partial) > 1:
        return True
    log.info("rank %d: the activation cache is ready and the rest of this job runs on rank 0 alone; this rank stops here", rank)
    return False


def log_to_wandb(logger, out_dir: Path, pngs: list[Path], tables: list[str] = (), artifacts: list[dict] = (),
                 namespace: str | None = None) -> None:
    """Log a finished run directory to the logger's W&B run, then finish that run.

    ``results.csv`` and the ``meta`` of ``results.json`` (counts in the summary), the ``tables`` (names of
    ``<name>.csv`` files beside it), the figures ``pngs``, and ``artifacts``: dicts of
    :func:`src.reporting.wandb_utils.log_model_artifact` arguments (``name``, ``paths``, ``metadata``),
    e.g. a trained classifier. See :func:`src.reporting.wandb_utils.log_results_to_wandb` for the keys."""
    import json

    import pandas as pd

    from src.reporting.results import read_results
    from src.reporting.wandb_utils import log_model_artifact, log_results_to_wandb

    exp = getattr(logger, "experiment", None)
    if exp is None or not hasattr(exp, "log"):
        return
    extra = {name: pd.read_csv(out_dir / f"{name}.csv", keep_default_na=False) for name in tables}
    meta_path = out_dir / "results.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")).get("meta") if meta_path.is_file() else None
    ok = True
    try:
        log_results_to_wandb(exp, read_results(out_dir), pngs, tables=extra, meta=meta, namespace=namespace)
        for a in artifacts:
            log_model_artifact(exp, **a)
    except Exception:  # the results are on disk: a W&B failure must not fail the job, nor stop a sweep
        log.exception("logging %s to W&B failed; the results are in %s", out_dir.name, out_dir)
        ok = False
    try:
        import wandb

        wandb.finish(exit_code=0 if ok else 1)  # each multirun job needs its own finish
    except Exception as e:  # pragma: no cover - never lose results over a logging hiccup
        log.warning("wandb.finish failed: %s", e)


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


