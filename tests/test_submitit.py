"""Cluster sweeps: ``hydra/launcher=submitit_local`` runs the jobs of a multirun in submitit
processes (the code path of ``submitit_slurm`` without a cluster); the jobs share one cache,
and their results are merged into summary.csv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import make_tone_corpus

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def test_submitit_local_layer_sweep_shares_one_cache_and_merges(tmp_path, tiny_w2v2_dir):
    corpus = make_tone_corpus(tmp_path / "c10", num_utterances=10, vocabulary=5)
    sweep = tmp_path / "sweep"
    run([str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
         "data=textgrid", f"data.root={corpus}", f"paths.cache_dir={tmp_path / 'cache'}",
         f"paths.output_dir={tmp_path / 'outputs'}", "cache.progress=false", "backbone=local",
         f"backbone.model_id={tiny_w2v2_dir}", "backbone.name=tiny", "logger=none", "task.min_count=1",
         "n_boot=20", "split.by=utterance", "split.test_fraction=0.25", "split.val_fraction=0.25",
         "probe=ridge", "probe.layer=0,2", f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip

    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1"]
    # each job ran in its own submitit process: hydra.job.id is the submitit job id, with its logs
    submitted = {p.name for p in (sweep / ".submitit").iterdir() if (p / f"{p.name}_0_log.out").is_file()}
    ids = set()
    for job in jobs:
        hydra = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
        ids.add(str(hydra["job"]["id"]))
        assert hydra["mode"] == "MULTIRUN" and hydra["sweep"]["dir"] == str(
            sweep
        )  # one W&B group: the sweep name
    assert len(ids) == 2 and ids == submitted

    # one cache, extracted by exactly one job; the other waited for it on the lock or found it complete
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "meta.json").is_file()
    logs = [(job / "train.log").read_text() for job in jobs]
    assert sum("extracting 4 states of tiny for 10 utterances" in log for log in logs) == 1

    # summary.csv holds exactly every job's results.csv rows, values unchanged
    summary = pd.read_csv(sweep / "summary.csv")
    assert (sweep / "summary.png").is_file()
    assert set(summary.job_dir) == {p.name for p in jobs}
    assert set(summary.curve) == {"tiny"}  # a layer sweep is one curve, named by the backbone
    for job, layer in zip(jobs, (0, 2)):
        own = pd.read_csv(job / "results.csv")
        mine = summary[summary.job_dir == job.name].drop(columns=["job", "curve", "corpus", "job_dir"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, own, check_dtype=False)
        assert set(own.layer) - {-1} == {layer}  # -1: the majority baseline rows
        assert (mine.value.astype(float) == own.value.astype(float)).all()
        assert summary[summary.job_dir == job.name].job.iloc[0].find(f"probe.layer={layer}") >= 0
    acc = summary[(summary.metric == "accuracy") & (summary.split == "test")]
    assert len(acc) == 2 and ((acc.value.astype(float) >= 0) & (acc.value.astype(float) <= 1)).all()

    # after the fact (a failed job, a killed submitting process): the same summary from the shell;
    # a results.csv inside .submitit/ is not a job
    first = (sweep / "summary.csv").read_bytes()
    stray = sweep / ".submitit" / "stray"
    stray.mkdir()
    shutil.copy(jobs[0] / "results.csv", stray / "results.csv")
    (sweep / "summary.csv").unlink()
    out = run(["-m", "src.reporting.multirun", str(sweep), "--no-figures"], ROOT)
    assert f"merged {len(summary)} rows of 2 jobs" in out.stdout
    assert (sweep / "summary.csv").read_bytes() == first


def test_slurm_preset_keys_reach_the_sbatch_script(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm.yaml composes over submitit_slurm, and every key it sets is one
    submitit accepts and writes into the sbatch script (no cluster: a fake ``srun`` on PATH)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from src.jobs.common import register_resolvers

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    register_resolvers()
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
                 "hydra.launcher.setup=[source .venv/bin/activate]",
                 "+hydra.launcher.additional_parameters.dependency=afterok:12345",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    # the conversion BaseSubmititLauncher.launch does (hydra_plugins/hydra_submitit_launcher)
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    folder = str(tmp_path / "sweep" / ".submitit" / "%j")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=folder, slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
            "stderr_to_stdout"}  # fmt: skip
    params["name"] = "probe"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=16GB", "#SBATCH --time=120", "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1",
                 "#SBATCH --signal=USR2@120", "#SBATCH --dependency=afterok:12345",
                 "source .venv/bin/activate"):  # fmt: skip
        assert line in script, (line, script)
    assert "--account" not in script
