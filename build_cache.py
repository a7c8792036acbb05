"""Build (or find) the activation cache of a backbone and corpus, without training anything.

    python build_cache.py                                        # the embedded defaults of train.py
    python build_cache.py backbone=whisper_base data=textgrid data.root=/data/libri
    python build_cache.py '++cache.trainer={accelerator: gpu, devices: 4, strategy: ddp}'
    python build_cache.py -m backbone=whisper_tiny_en,whisper_base   # one cache per job

The config is train.py's (conf/build_cache.yaml includes conf/train.yaml): the cache built
here is the one ``python train.py`` with the same backbone/data/cache overrides reads.
Prints the cache's path, status (built | reused), frames, size and build time, and writes
them to cache.json in the run directory. First step of a cluster sweep: docs/scale.md.

Caches under old keys and orphan ``.partial`` builds are listed and removed by a plain CLI
(no Hydra job; see src/jobs/cache.py)::

    python -m src.jobs.cache list [--root cache]
    python -m src.jobs.cache prune KEY... [--partial] [--dry-run]
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from src.jobs.common import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="build_cache")
def main(cfg: DictConfig) -> None:
    from src.jobs.cli import checked_job  # config checks, then the job (heavy imports only there)

    return checked_job(cfg, "build_cache")


if __name__ == "__main__":
    from src.jobs.cli import check_choices
    from src.jobs.common import gc_before_exit, gc_for_jobs

    gc_for_jobs()  # fewer start-up collections (src/jobs/common.py)
    check_choices("build_cache")  # backbone=nope: one line, before Hydra creates a run directory
    main()
    gc_before_exit()
