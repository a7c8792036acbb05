"""Representation analyses on the activation cache: CKA, RSA, CCA, dimensionality
reduction, ABX, mutual information.

    python analyze.py analysis=cka                         # layer x layer CKA
    python analyze.py analysis=cka analysis.reference=mfcc # each layer vs MFCC frames
    python analyze.py analysis=rsa
    python analyze.py -m analysis=cka,rsa,abx

Writes results.csv, results.json, PNG figures and the resolved config into the Hydra
run directory, and the same to W&B (offline unless logged in).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from src.jobs.common import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    from src.jobs.cli import checked_job  # config checks, then the job (heavy imports only there)

    return checked_job(cfg, "analyze")


if __name__ == "__main__":
    from src.jobs.cli import check_choices
    from src.jobs.common import gc_before_exit, gc_for_jobs

    gc_for_jobs()  # fewer start-up collections (src/jobs/common.py)
    check_choices("analyze")  # backbone=nope: one line, before Hydra creates a run directory
    main()
    gc_before_exit()
