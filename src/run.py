"""What train.py and analyze.py do inside their Hydra job: instantiate, run, save.

Kept out of the entry points so that ``python train.py --help`` and config errors come
back before the heavy imports (torch, lightning, transformers).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("speechinterp")

RESULT_COLUMNS = ["backbone", "task", "probe", "layer", "layer_name", "target", "metric", "value", "ci_low", "ci_high",
                  "unit", "n_units", "split"]
MAIN_METRIC = {"classification": "accuracy", "regression": "pearson_r"}


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
    OmegaConf.register_new_resolver(
        "random_suffix", lambda p: "" if str(p).lower() in ("true", "1", "none") else "-random", replace=True
    )


def _job_context():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if multirun else None
    name = f"{hc.job.num}_{hc.job.override_dirname}" if multirun else Path(hc.runtime.output_dir).name
    return Path(hc.runtime.output_dir), multirun, group, name[:120]


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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


def probing_job(cfg: DictConfig) -> float | None:
    """One probing run.  Under DDP (``trainer=ddp``, or a distributed ``cache.trainer``) every
    rank runs this; global rank 0 alone writes results, figures, the config and W&B."""
    if cfg.get("sae") is not None:  # experiment=sae: SAEs from the activation cache (src/sae/job.py)
        from src.sae.job import sae_job

        return sae_job(cfg)
    if cfg.task.get("kind") == "utterance":  # utterance classifiers (task=commands): src/probes/utterance.py
        from src.probes.utterance import utterance_job

        return utterance_job(cfg)
    import lightning as L
    from hydra.utils import instantiate

    from src.layers import layer_spec
    from src.probes.pipeline import run_probing
    from src.reporting.results import write_config, write_results

    _quiet_libraries()
    t0 = time.perf_counter()
    out_dir, multirun, group, name = _job_context()
    from src.datamodules.splits import split_utterances

    task = instantiate(cfg.task)
    split_cfg = OmegaConf.to_container(cfg.split, resolve=True)
    controls = OmegaConf.to_container(cfg.controls, resolve=True)

    def check(corpus) -> None:  # fail before extraction, not after it
        task.validate(corpus, controls)
        split_utterances(corpus, seed=cfg.seed, **split_cfg)

    corpus, acts = load_activations(cfg, before_extraction=check)
    trainer_partial = instantiate(cfg.trainer)
    if not stays_after_cache(trainer_partial):
        return None
    log.info("%s", acts)
    probe_factory = instantiate(cfg.probe)
    logger = make_logger(cfg, out_dir, group, name, "train")

    def trainer_factory(**kw):
        kw.setdefault("logger", logger if logger is not None else False)
        return trainer_partial(default_root_dir=str(out_dir), **kw)

    L.seed_everything(cfg.seed, verbose=False)  # after the cache: a cold and a warm run train the same probes
    out = run_probing(
        acts, corpus, task, probe_factory, trainer_factory,
        split_cfg=split_cfg,
        controls=controls,
        layers=layer_spec(cfg.get("layers"), "layers"),  # one item (final_norm, 2) stays one item
        batch_size=cfg.batch_size, n_boot=cfg.n_boot, seed=cfg.seed,
        stream=cfg.get("stream", "auto"), memory_budget_gb=cfg.get("memory_budget_gb", 2.0),
    )  # fmt: skip
    from src.distributed import global_rank

    if global_rank() != 0:  # a DDP probe rank: its part of the training is done; rank 0 writes
        log.info("rank %d: probing done, results are written by rank 0", global_rank())
        return None
    probe_name = cfg.probe._target_.rsplit(".", 1)[-1]
    from src.layers import layer_label

    names = getattr(acts, "layer_names", None)
    rows = [{"backbone": acts.backbone, "task": task.name, "probe": probe_name,
             "layer_name": layer_label(r["layer"], names) if r.get("layer", -1) >= 0 else "baseline", **r}
            for r in out.rows]  # fmt: skip
    meta = {"cache": str(acts.path), "counts": out.counts, "seconds": round(time.perf_counter() - t0, 2),
            "num_layers": acts.num_layers, "corpus": acts.corpus}  # fmt: skip
    write_results(rows, out_dir, columns_first=RESULT_COLUMNS, meta=meta)
    write_config(cfg, out_dir)
    pngs = probing_figures(out_dir, rows, task.kind)
    if type(logger).__name__ == "WandbLogger":
        _log_to_wandb(logger, out_dir, pngs)
    best = _best(rows, MAIN_METRIC[task.kind])
    log.info("results in %s (best test %s %.4f); counts %s", out_dir, MAIN_METRIC[task.kind], best or float("nan"), out.counts)
    return best


def _best(rows: list[dict], metric: str) -> float | None:
    """Best test value of the main metric over layers (regression: the mean over targets)."""
    vals = [r["value"] for r in rows if r["metric"] == metric and r["split"] == "test"
            and (metric != "pearson_r" or r["target"] == "mean")]  # fmt: skip
    return max(vals) if vals else None


def probing_figures(out_dir: Path, rows: list[dict], kind: str) -> list[Path]:
    import pandas as pd

    from src.reporting.figures import plot_layer_target_heatmap, plot_over_layers

    df = pd.DataFrame(rows)
    pngs = []
    metric = MAIN_METRIC[kind]
    main = df[(df.metric == metric) & (df.layer >= 0)]
    if len(main):
        baselines = {}
        for m in sorted(set(df.metric)):
            if m.endswith("_baseline"):
                baselines[m.replace("accuracy_", "").replace("_", " ")] = float(df[df.metric == m].value.iloc[0])
        hue_df = main[main.target != "mean"] if kind == "regression" else main
        pngs.append(plot_over_layers(hue_df, out_dir / f"{metric}_over_layers.png", metric, hue="target",
                                     split="test", title=f"{rows[0]['backbone']}: {rows[0]['task']} ({metric})",
                                     baselines=baselines or None))  # fmt: skip
        if kind == "regression":
            pngs.append(plot_layer_target_heatmap(hue_df, out_dir / f"{metric}_layer_x_target.png", metric, split="test"))
    for m in ("selectivity", "mdl_compression", "layer_weight"):
        sub = df[df.metric == m]
        if len(sub):
            split = sub.split.iloc[0]
            pngs.append(plot_over_layers(sub, out_dir / f"{m}_over_layers.png", m, hue="target", split=split,
                                         title=f"{rows[0]['backbone']}: {rows[0]['task']} ({m})"))  # fmt: skip
    return pngs


def _log_to_wandb(logger, out_dir: Path, pngs: list[Path], tables: list[str] = ()) -> None:
    import pandas as pd

    from src.reporting.results import read_results
    from src.reporting.wandb_utils import log_results_to_wandb

    exp = getattr(logger, "experiment", None)
    if exp is None or not hasattr(exp, "log"):
        return
    extra = {name: pd.read_csv(out_dir / f"{name}.csv", keep_default_na=False) for name in tables}
    log_results_to_wandb(exp, read_results(out_dir), pngs, tables=extra)
    try:
        import wandb

        wandb.finish()  # each multirun job needs its own finish
    except Exception as e:  # pragma: no cover - never lose results over a logging hiccup
        log.warning("wandb.finish failed: %s", e)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def reference_loader(cfg: DictConfig, corpus):
    """name -> activation cache of a reference space: a backbone config name, or ``random``
    (the analysed backbone with random weights)."""
    from hydra.utils import instantiate

    def load(name: str):
        if name == "random":
            bcfg = OmegaConf.merge(cfg.backbone, {"pretrained": False})
        else:
            path = CONF_DIR / "backbone" / f"{name}.yaml"
            if not path.exists():
                choices = sorted(p.stem for p in (CONF_DIR / "backbone").glob("*.yaml"))
                raise ValueError(f"analysis.reference={name!r}: no conf/backbone/{name}.yaml; choose from {choices} or 'random'")
            bcfg = OmegaConf.load(path)
        backbone = instantiate(bcfg)
        return instantiate(cfg.cache).get(backbone, corpus)

    return load


def analysis_job(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from src.analyses.base import AnalysisContext
    from src.reporting.results import write_config

    _quiet_libraries()
    t0 = time.perf_counter()
    out_dir, multirun, group, name = _job_context()
    analysis = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"})
    if getattr(analysis, "needs_cache", True):
        corpus, acts = load_activations(cfg)
    else:  # live-model analyses (lenses, ...): no activation cache unless they ask for it
        corpus, acts = load_corpus(cfg), None
    if not stays_after_cache(None):  # analyses run on one process: other ranks only helped extract
        return
    if acts is not None:
        log.info("%s", acts)
    ctx = AnalysisContext(
        acts, corpus, reference_loader(cfg, corpus), seed=cfg.seed,
        backbone_factory=lambda: instantiate(cfg.backbone),
        cache_factory=lambda: instantiate(cfg.cache).get(ctx.backbone(), corpus),
    )  # fmt: skip
    result = analysis.run(ctx)
    acts = ctx.acts
    context = {"backbone": acts.backbone if acts is not None else ctx.backbone().name, "corpus": corpus.name}
    result.meta.setdefault("seconds", round(time.perf_counter() - t0, 2))
    pngs = result.save(out_dir, context)
    write_config(cfg, out_dir)
    logger = make_logger(cfg, out_dir, group, name, "analyze")
    if type(logger).__name__ == "WandbLogger":
        _log_to_wandb(logger, out_dir, pngs, tables=list(result.tables))
    log.info("%s results in %s (%d rows, %d figures)", cfg.analysis.name, out_dir, len(result.rows), len(pngs))
