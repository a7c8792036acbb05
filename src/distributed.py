"""Which process is this, when one job runs as several (DDP ranks)?

Conventions:

- "global rank 0" is the one process of a job that writes: the activation cache's final
  steps, results.csv/json, figures, the resolved config, W&B.  Every other rank computes
  (extraction batches, DDP probe training) and writes nothing else.
- The rank is known in two ways.  Inside an initialised ``torch.distributed`` process
  group it is ``torch.distributed.get_rank()``.  Before a group exists (or after it was
  destroyed) it is read from what launchers put in the environment: ``RANK`` (torchrun,
  torch.distributed.launch), ``SLURM_PROCID`` when ``SLURM_NTASKS > 1`` (``srun`` with one
  task per device), else ``NODE_RANK`` / ``LOCAL_RANK`` (Lightning's subprocess launcher,
  which re-runs the script for local ranks 1..N-1 with ``LOCAL_RANK`` set).
- A Lightning ``Trainer`` knows its exact global rank and world size as soon as it is
  constructed (``trainer.global_rank``, ``trainer.world_size``), before any process is
  launched: code that owns a trainer asks it.

Nothing here imports Lightning or initialises a process group.
"""

from __future__ import annotations

import os


def env_rank() -> int:
    """Global rank as the launcher put it in the environment (0 when nothing says otherwise).

    Exact for torchrun (``RANK``) and multi-task SLURM (``SLURM_PROCID``).  For Lightning's
    subprocess launcher the environment holds ``NODE_RANK`` and ``LOCAL_RANK`` only; the
    value returned is 0 exactly for node 0 / local rank 0, and a positive number otherwise
    (``LOCAL_RANK`` on node 0; on other nodes a value > 0 that is not the global rank).
    """
    if os.environ.get("RANK", "").strip():
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and os.environ.get("SLURM_PROCID", "").strip():
        return int(os.environ["SLURM_PROCID"])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    if node == 0:
        return local
    return node * max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), local + 1) + local


def global_rank() -> int:
    """The rank in the initialised process group, else ``env_rank()``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return env_rank()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised default process group, else ``(0, 1)``.

    Unlike :func:`global_rank` this does not read the environment: it is for code that
    shards work across the ranks of a running group (samplers), where no group means one
    process.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


def is_global_zero() -> bool:
    """True for the process that writes results (see the module docstring)."""
    return global_rank() == 0


def destroy_process_group() -> None:
    """Destroy the default process group if one is initialised (no-op otherwise).

    A group left over from a distributed extraction would make a later single-process
    probe trainer (or a sampler that shards by ``torch.distributed``'s world) believe it is
    one of several ranks; a later DDP trainer initialises a group of its own again.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
