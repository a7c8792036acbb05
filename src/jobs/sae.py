"""``python train.py experiment=sae``: SAEs of every chosen layer trained from the activation cache.

Called from `src.jobs.run.probing_job` when the config has an ``sae`` group (conf/sae/*.yaml). Steps: the
cache of (backbone, data) (built once, reused), plus the caches of ``sae.corpora`` (other data configs,
streamed with it as one corpus); one `FrameStream` (silence excluded from the phone/word tiers unless
``sae.silence=keep``); `fit_saes` (Lightning, ``trainer=ddp`` works: global batches sliced by rank);
then on global rank 0: each SAE saved under ``saes/layer_<name>/`` (SAELens folder + speechinterp.json),
``results.csv`` (per layer: FVU, L0, dead and dense fractions on held-out utterances) and
``sae_metrics.png`` beside it. Checkpoints: ``checkpoints/`` (Lightning; ``sae.resume=<ckpt>|last``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("speechinterp")

JOB_KEYS = ("layers", "silence", "silence_tier", "val_fraction", "buffer_frames", "corpora", "ckpt_every_n_steps",
            "resume", "dense_threshold", "eval_batch_size")  # fmt: skip
SAE_COLUMNS = [
    "backbone",
    "corpus",
    "architecture",
    "layer",
    "layer_name",
    "metric",
    "value",
    "split",
    "frames",
]


def _extra_corpora(cfg: DictConfig, names) -> list:
    """(corpus, activations) of each data config named in ``sae.corpora`` (conf/data/<name>.yaml)."""
    from src.jobs.common import CONF_DIR, group_options, load_activations

    out = []
    for name in names or []:
        if isinstance(name, dict):  # a whole data config ({_target_: ..., root: ...})
            data = OmegaConf.create(name)
        else:
            path = CONF_DIR / "data" / f"{name}.yaml"
            if not path.exists():
                choices = group_options("data")
                raise ValueError(f"sae.corpora: no conf/data/{name}.yaml; choose from {choices}")
            data = OmegaConf.load(path)
        sub = cfg.copy()
        OmegaConf.set_struct(sub, False)
        sub.data = data  # replaced, not merged: nothing of data= leaks into the other corpus
        out.append(load_activations(sub))
    return out


def check_whisper_frames(acts) -> dict:
    """Whisper caches hold only real frames (the 30 s window's padding is trimmed at extraction,
    src/backbones/whisper.py): every utterance's frames fit its audio at 2 x 160 samples per frame."""
    import numpy as np

    if "whisper" not in str(acts.backbone).lower() and "whisper" not in str(
        acts.meta.get("backbone_fingerprint", "")
    ):
        return {}
    hop = 320
    limit = np.ceil(acts.num_samples / hop).astype(np.int64) + 1
    over = np.flatnonzero(acts.lengths > limit)
    if len(over):
        u = int(over[0])
        raise ValueError(f"cache {acts.path}: utterance {acts.ids[u]!r} has {int(acts.lengths[u])} frames for "
                         f"{int(acts.num_samples[u])} samples: the cache holds Whisper padding frames; rebuild it")  # fmt: skip
    return {"whisper_padding_frames": 0, "whisper_frames_checked": int(acts.lengths.sum())}


def sae_job(cfg: DictConfig) -> float | None:
    import lightning as L
    from hydra.utils import instantiate

    from src.backbones.spec import record_of
    from src.distributed import global_rank
    from src.jobs.common import job_context, load_activations, make_logger, quiet_libraries, stays_after_cache
    from src.sae.data import FrameSource, FrameStream
    from src.sae.train import SAETrainConfig, evaluate, fit_saes

    quiet_libraries()
    t0 = time.perf_counter()
    out_dir, _multirun, group, name = job_context()
    sae_cfg = OmegaConf.to_container(cfg.sae, resolve=True)
    job = {k: sae_cfg.pop(k) for k in JOB_KEYS if k in sae_cfg}
    tcfg = SAETrainConfig.from_dict(sae_cfg)  # unknown keys fail here, before any extraction
    tcfg.validate()
    if tcfg.seed != cfg.seed:
        tcfg.seed = int(cfg.seed)
    corpus, acts = load_activations(cfg)
    pairs = [(corpus, acts), *_extra_corpora(cfg, job.get("corpora"))]
    trainer_partial = instantiate(cfg.trainer)
    if not stays_after_cache(trainer_partial):
        return None
    silence = job.get("silence", "exclude")
    counts: dict = {}
    sources = []
    for c, a in pairs:
        counts.update({f"{a.corpus}:{k}": v for k, v in check_whisper_frames(a).items()})
        s = FrameSource.from_cache(a, job.get("layers", "all"), corpus=c, silence=silence,
                                   tier=job.get("silence_tier", "phones"))  # fmt: skip
        counts.update({f"{a.corpus}:{k}": v for k, v in s.counts.items()})
        sources.append(s)
    stream = FrameStream(sources, val_fraction=float(job.get("val_fraction", 0.1)), seed=int(cfg.seed),
                         buffer_frames=int(job.get("buffer_frames", 1 << 16)))  # fmt: skip
    log.info("SAE stream: %d caches, layers %s, %d training / %d held-out frames (%s)", len(sources),
             stream.layer_names, stream.train_frames, stream.val_frames, counts)  # fmt: skip
    backbone = instantiate(cfg.backbone)  # lazy: config and fingerprint only, no weights
    record = record_of(backbone, OmegaConf.to_container(cfg.backbone, resolve=True))
    metas = [{"layer": int(k), "backbone": record, "cache_key": acts.path.name,
              "caches": [str(s.acts.path) for s in sources], "corpora": [s.acts.corpus for s in sources]}
             for k in sources[0].layers]  # fmt: skip
    logger = make_logger(cfg, out_dir, group, name, "train")
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = out_dir / "checkpoints"
    every = int(job.get("ckpt_every_n_steps") or 0)
    # ckpt_every_n_steps 0: checkpoints/last.ckpt alone, written once at the end (save_top_k=1 wrote a second
    # copy of the same 71 MB beside it, epoch=..-step=...ckpt, for the default run)
    callbacks = [ModelCheckpoint(dirpath=str(ckpt_dir), every_n_train_steps=every or None, save_last=True,
                                 save_top_k=-1 if every else 0)]  # fmt: skip

    def trainer_factory(**kw):
        kw.setdefault("logger", logger if logger is not None else False)
        return trainer_partial(default_root_dir=str(out_dir), enable_checkpointing=True, **kw)

    resume = job.get("resume")
    if (
        resume == "last"
    ):  # this run directory's last checkpoint when there is one (a requeued job), else a fresh start
        resume = str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").is_file() else None
        log.info(
            "sae.resume=last: %s", f"resuming from {resume}" if resume else "no checkpoint yet, starting"
        )
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"sae.resume={job.get('resume')!r}: no checkpoint at {resume}")
    L.seed_everything(cfg.seed, verbose=False)
    module = fit_saes(stream, tcfg, trainer_factory, metas=metas, ckpt_path=resume, callbacks=callbacks)
    if global_rank() != 0:
        log.info("rank %d: SAE training done, results are written by rank 0", global_rank())
        return None
    from src.sae.io import save_sae

    saes = module.export()
    paths = []
    for s in saes:
        paths.append(save_sae(s, out_dir / "saes" / f"layer_{s.meta['layer_name']}"))
    ev = evaluate(saes, stream, "val" if stream.val_frames else "train", int(job.get("eval_batch_size", 4096)),
                  float(job.get("dense_threshold", 0.1)))  # fmt: skip
    rows = []
    split = "val" if stream.val_frames else "train"
    for s, r in zip(saes, ev):
        for metric in ("fvu", "l0", "dead_fraction", "dense_fraction"):
            rows.append({"backbone": acts.backbone, "corpus": "+".join(x.acts.corpus for x in sources),
                         "architecture": tcfg.architecture, "layer": int(s.meta["layer"]), "layer_name": r["layer_name"],
                         "metric": metric, "value": r[metric], "split": split, "frames": r["frames"]})  # fmt: skip
    from src.reporting.results import write_config, write_results

    meta = {"cache": str(acts.path), "counts": counts, "seconds": round(time.perf_counter() - t0, 2),
            "saes": [str(p) for p in paths], "train_frames": stream.train_frames, "val_frames": stream.val_frames,
            "d_sae": saes[0].d_sae, "d_in": saes[0].d_in}  # fmt: skip
    write_results(rows, out_dir, columns_first=SAE_COLUMNS, meta=meta)
    write_config(cfg, out_dir)
    from src.reporting.figures import figure_title
    from src.reporting.figures_live import plot_sae_training

    png = plot_sae_training(rows, out_dir / "sae_metrics.png", figure_title(
        f"SAE training: {tcfg.architecture} SAEs ({split} frames)", f"{acts.backbone}, {rows[0]['corpus']}"))  # fmt: skip
    if type(logger).__name__ == "WandbLogger":
        from src.jobs.common import log_to_wandb

        models = [{"name": f"sae-{acts.backbone}-{tcfg.architecture}-{p.name}", "paths": [p],
                   "metadata": {"layer": s.meta.get("layer"), "layer_name": s.meta.get("layer_name"), "d_sae": s.d_sae,
                                "d_in": s.d_in, "architecture": tcfg.architecture, "corpora": s.meta.get("corpora")}}
                  for s, p in zip(saes, paths)]  # fmt: skip
        log_to_wandb(logger, out_dir, [png], artifacts=models, namespace="sae")
    fvu = [r["value"] for r in rows if r["metric"] == "fvu"]
    log.info("SAE results in %s (FVU per layer %s)", out_dir, [round(v, 4) for v in fvu])
    return float(sum(fvu) / len(fvu)) if fvu else None
