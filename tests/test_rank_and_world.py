"""src.distributed.rank_and_world: the process group's (rank, world), (0, 1) without a group (the
launcher's environment is not read, unlike global_rank); the samplers import this one helper."""

from __future__ import annotations

import torch.distributed as dist

import src.activations.builder as A
import src.probes.data as PD
import src.sae.data as SD
from src.distributed import global_rank, rank_and_world


def test_no_group_is_one_process_whatever_the_environment(monkeypatch):
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "3")
    assert rank_and_world() == (0, 1)
    assert global_rank() == 3  # the environment-reading helper differs on purpose


def test_single_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert rank_and_world() == (0, 1)
        assert isinstance(rank_and_world()[0], int)
    finally:
        dist.destroy_process_group()


def test_one_helper():
    assert A._rank_and_world is PD.rank_and_world is SD.rank_and_world is rank_and_world
