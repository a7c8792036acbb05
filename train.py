"""Train diagnostic probes on every layer of a frozen speech model.

    python train.py                                   # embedded Whisper tiny.en, Festival corpus, phones
    python train.py task=stress probe=mlp
    python train.py -m probe.layer='range(0,5)'       # one job per layer, one shared cache
    python train.py -m backbone=whisper_tiny_en,mfcc  # pretrained vs baseline

Writes results.csv, results.json, PNG figures and the resolved config into the Hydra
run directory, and the same to W&B (offline unless logged in).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from src.jobs.common import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from src.jobs.cli import checked_job  # config checks, then the job (heavy imports only there)

    return checked_job(cfg, "train")


if __name__ == "__main__":
    from src.jobs.cli import check_choices
    from src.jobs.common import gc_before_exit, gc_for_jobs

    gc_for_jobs()  # fewer start-up collections (src/jobs/common.py)
    check_choices("train")  # backbone=nope: one line, before Hydra creates a run directory
    main()
    gc_before_exit()
