"""What train.py and analyze.py do inside their Hydra job: instantiate, run, save (probing, the
utterance-classifier and SAE jobs by dispatch, and every analysis with its AnalysisContext).

Kept out of the entry points so that ``python train.py --help`` and config errors come
back before the heavy imports (torch, lightning, transformers).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.jobs.common import (
    CONF_DIR,
    RESULT_COLUMNS,
    group_options,
    job_context,
    load_activations,
    load_corpus,
    log_to_wandb,
    make_logger,
    quiet_libraries,
    stays_after_cache,
)

log = logging.getLogger("speechinterp")

MAIN_METRIC = {"classification": "accuracy", "regression": "pearson_r"}


def probing_job(cfg: DictConfig) -> float | None:
    """One probing run.  Under DDP (``trainer=ddp``, or a distributed ``cache.trainer``) every
    rank runs this; global rank 0 alone writes results, figures, the config and W&B."""
    if cfg.get("sae") is not None:  # experiment=sae: SAEs from the activation cache (src/jobs/sae.py)
        from src.jobs.sae import sae_job

        return sae_job(cfg)
    if cfg.task.get("kind") == "utterance":  # utterance classifiers (task=commands): src/jobs/utterance.py
        from src.jobs.utterance import utterance_job

        return utterance_job(cfg)
    import lightning as L
    from hydra.utils import instantiate

    from src.layers import layer_spec
    from src.probes.pipeline import run_probing
    from src.reporting.results import write_config, write_results

    quiet_libraries()
    t0 = time.perf_counter()
    out_dir, multirun, group, name = job_context()
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
        probe_layer=layer_spec(cfg.probe.get("layer"), "probe.layer"),
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
    pngs = probing_figures(out_dir, rows, task.kind, f"{acts.backbone}, {acts.corpus}")
    if type(logger).__name__ == "WandbLogger":
        log_to_wandb(logger, out_dir, pngs)
    best = _best(rows, MAIN_METRIC[task.kind])
    log.info("results in %s (best test %s %.4f); counts %s", out_dir, MAIN_METRIC[task.kind], best or float("nan"), out.counts)
    return best


def _best(rows: list[dict], metric: str) -> float | None:
    """Best test value of the main metric over layers (regression: the mean over targets)."""
    vals = [r["value"] for r in rows if r["metric"] == metric and r["split"] == "test"
            and (metric != "pearson_r" or r["target"] == "mean")]  # fmt: skip
    return max(vals) if vals else None


def probing_figures(out_dir: Path, rows: list[dict], kind: str, context: str = "") -> list[Path]:
    """The probing run's PNGs (src.reporting.figures_analyses.probing_figures); ``context``: model and corpus."""
    from src.reporting.figures_analyses import probing_figures as draw

    return draw(rows, out_dir, MAIN_METRIC[kind], kind, context)


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
                choices = group_options("backbone")
                raise ValueError(f"analysis.reference={name!r}: no conf/backbone/{name}.yaml; choose from {choices} or 'random'")
            bcfg = OmegaConf.load(path)
        backbone = instantiate(bcfg)
        return instantiate(cfg.cache).get(backbone, corpus)

    return load


def analysis_job(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from src.analyses.base import AnalysisContext
    from src.reporting.results import write_config

    def classifier_factory(seed, train_overrides):  # checkpoint=auto: found or trained here, not in the analysis
        from src.jobs.utterance import classifier_factory as find_or_train

        return find_or_train(seed, train_overrides, cfg)

    quiet_libraries()
    t0 = time.perf_counter()
    out_dir, multirun, group, name = job_context()
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
        classifier_factory=classifier_factory,
    )  # fmt: skip
    result = analysis.run(ctx)
    acts = ctx.acts
    context = {"backbone": acts.backbone if acts is not None else ctx.backbone().name, "corpus": corpus.name}
    result.meta.setdefault("seconds", round(time.perf_counter() - t0, 2))
    pngs = result.save(out_dir, context)
    write_config(cfg, out_dir)
    logger = make_logger(cfg, out_dir, group, name, "analyze")
    if type(logger).__name__ == "WandbLogger":
        log_to_wandb(logger, out_dir, pngs, tables=list(result.tables))
    log.info("%s results in %s (%d rows, %d figures)", cfg.analysis.name, out_dir, len(result.rows), len(pngs))
