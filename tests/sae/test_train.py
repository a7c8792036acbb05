"""SAE training mechanics: streaming from the cache equals training from an in-memory tensor (read with
np.load) on the same batch order; a checkpoint resumed mid-epoch ends at the weights of the run that was
never interrupted; a non-finite loss stops with the step and the layer; DDP (2 processes) equals one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from src.sae.data import InMemoryFrames
from src.sae.train import SAETrainConfig, SAETrainingError, fit_saes
from tests.sae.conftest import stream_of, trainer_factory
from tests.sae.helpers import layer_arrays

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(
    d_sae=32, batch_size=64, epochs=2, lr=3e-3, warmup_steps=5, dead_after_frames=300, init_frames=256
)


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k].double(), b[k].double(), rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu"])
def test_streaming_equals_in_memory(small_cache, arch):
    path = small_cache[0]
    cfg = dict(FAST, architecture=arch, k=2, standardize=True)
    st = stream_of(path, buffer_frames=512)
    disk = fit_saes(st, SAETrainConfig(**cfg), trainer_factory())
    mem = InMemoryFrames(torch.from_numpy(layer_arrays(path)))  # every frame, read by numpy
    memory = fit_saes(
        stream_of(path, buffer_frames=512), SAETrainConfig(**cfg), trainer_factory(), reader=mem
    )
    a, b = weights(disk), weights(memory)
    assert_same(a, b)
    assert not torch.equal(a["saes.0.W_dec"], a["saes.1.W_dec"])  # two layers, two SAEs
    assert int(disk.trainer.global_step) == 2 * st.num_batches(64)


def test_resume_mid_epoch_equals_uninterrupted(tmp_path, small_cache):
    from lightning.pytorch.callbacks import ModelCheckpoint

    path = small_cache[0]
    cfg = dict(FAST, architecture="topk", k=2, standardize=True)
    full = fit_saes(stream_of(path), SAETrainConfig(**cfg),
                    trainer_factory(enable_checkpointing=True, default_root_dir=str(tmp_path / "full")), callbacks=[ModelCheckpoint(dirpath=str(tmp_path), filename="{step}", every_n_train_steps=10,
                                               save_top_k=-1)])  # fmt: skip
    n = stream_of(path).num_batches(64)
    assert n > 10 and full.trainer.global_step == 2 * n
    ckpt = tmp_path / "step=10.ckpt"
    assert ckpt.exists(), sorted(p.name for p in tmp_path.iterdir())
    resumed = fit_saes(stream_of(path), SAETrainConfig(**cfg), trainer_factory(enable_checkpointing=True,
                                                                         default_root_dir=str(tmp_path / "resumed")),
                       ckpt_path=str(ckpt))  # fmt: skip (default_root_dir: Lightning's own checkpoints not in the cwd)
    assert resumed.trainer.global_step == 2 * n
    assert_same(weights(full), weights(resumed))
    # control: starting the same run from scratch with a different seed is not the same
    other = fit_saes(stream_of(path), SAETrainConfig(**{**cfg, "seed": 1}), trainer_factory())
    assert not torch.equal(weights(other)["saes.0.W_dec"], weights(full)["saes.0.W_dec"])


def test_nan_stops_with_step_and_layer(small_cache):
    path = small_cache[0]
    x = torch.from_numpy(layer_arrays(path))
    st = stream_of(path)
    order = list(st.epoch_batches(0, 64))
    bad_row = int(order[3][5])  # a row of the 4th batch (step 3) of epoch 0
    x[bad_row, 1, 0] = float("nan")
    cfg = SAETrainConfig(**dict(FAST, architecture="topk", k=2, standardize=False, b_dec_init="zeros"))
    with pytest.raises(
        SAETrainingError, match=r"non-finite SAE loss \(nan\) at training step 3 .* layer '1'"
    ):
        fit_saes(st, cfg, trainer_factory(), reader=InMemoryFrames(x))


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, functools, torch, lightning as L
    sys.path.insert(0, {root!r})
    from src.activations import Activations
    from src.sae.data import FrameSource, FrameStream
    from src.sae.train import SAETrainConfig, fit_saes
    torch.set_num_threads(1)
    devices, out = int(sys.argv[1]), sys.argv[2]
    st = FrameStream([FrameSource.from_cache(Activations({cache!r}), "all", silence="keep")], val_fraction=0.1,
                     buffer_frames=512)
    tf = functools.partial(L.Trainer, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                           logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False, use_distributed_sampler=False)
    cfg = SAETrainConfig(architecture="batchtopk", k=2, d_sae=32, batch_size=63, epochs=2, lr=3e-3, warmup_steps=5,
                         dead_after_frames=200, init_frames=256)
    m = fit_saes(st, cfg, tf)
    if m.global_rank == 0:
        torch.save({{k: v.detach() for k, v in m.state_dict().items()}}, out)
    """
)


@pytest.mark.slow  # two subprocesses, one of them a 2-rank DDP launch: 30-75 s on the shared 2 cores
def test_ddp_two_processes_equal_one(tmp_path, small_cache):
    """batchtopk (global k*B selection, threshold estimate) with aux-k (dead latents), batches of 63 split 32/31."""
    from tests.conftest import ROOT

    script = tmp_path / "ddp_sae.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), cache=str(small_cache[0])))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for devices in (1, 2):
        proc = subprocess.run([sys.executable, str(script), str(devices), str(tmp_path / f"w{devices}.pt")], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    assert int((one["since_fired"] == 0).sum()) > 0
    assert float(one["saes.0.topk_threshold"]) > 0
    assert_same(one, two, atol=1e-5)
    assert np.abs((one["saes.0.W_dec"] - two["saes.0.W_dec"]).numpy()).max() < 1e-5
