"""The plain probe training loop gives Lightning's result bit for bit.

Reference: the same `fit_probe` call with ``loop="lightning"`` (``lightning.Trainer.fit``, the
implementation the plain loop replaces on one CPU process); every parameter, the kept epochs and the
per-epoch training losses must be equal, not close.
"""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pytest
import torch

from src.probes.loop import use_plain_loop
from src.probes.pipeline import SplitArrays, fit_probe
from tests.probes.helpers import conf_probe, trainer_factory

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
pytestmark = pytest.mark.usefixtures("one_thread")


def arrays(kind: str = "classification", n=(300, 90), L_=3, D=16, C=5, seed=0, dtype=torch.float16):
    """Class means in a few dims plus noise at L layers of growing signal, float16 like a cache, with offsets."""
    g = np.random.default_rng(seed)
    means = g.normal(size=(C, D)) * 2
    out = {}
    for split, m in zip(("train", "val"), n, strict=True):
        y = g.integers(0, C, m)
        x = np.stack([(k + 1) / L_ * means[y] + g.normal(size=(m, D)) + 20 for k in range(L_)], 1)  # (m, L, D)
        yt = torch.from_numpy(y).long() if kind == "classification" else torch.from_numpy(means[y][:, :2]).float()
        out[split] = SplitArrays(torch.from_numpy(x).to(dtype), yt, np.arange(m) // 6, None)
    return out


def fit_both(probe: str, kind: str = "classification", **over):
    arr = arrays(kind)
    C = 5 if kind == "classification" else 2
    out = {}
    for loop in ("lightning", "plain"):
        out[loop] = fit_probe(conf_probe(probe, **over), arr, kind, C, lambda **kw: trainer_factory(**kw),
                              batch_size=32, seed=3, layer_ids=[0, 1, 2], loop=loop)  # fmt: skip
    return out["lightning"], out["plain"]


def assert_same(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.best_epochs == b.best_epochs
    assert torch.equal(a.train_losses, b.train_losses)
    assert a.fit_warnings == b.fit_warnings


@pytest.mark.parametrize(("probe", "kind", "over"), [
    ("linear", "classification", {"min_steps": 100, "patience": 3, "max_steps": 600}),  # budget + extension
    ("linear", "regression", {"min_steps": 60, "patience": 2, "max_steps": 300}),
    ("mlp", "classification", {"min_steps": 60, "patience": 2, "max_steps": 300, "hidden": 8}),  # dropout streams
    ("weighted", "classification", {"min_steps": 60, "patience": 2, "max_steps": 300}),  # one head over layers
])  # fmt: skip
def test_plain_loop_equals_lightning_fit(probe, kind, over):
    a, b = fit_both(probe, kind, **over)
    assert len(a.train_losses) > 5  # several epochs ran (the extension included)
    assert_same(a, b)


def test_auto_uses_the_plain_loop_only_on_one_cpu_process_with_default_settings():
    probe = conf_probe("linear")(num_layers=1, dim=4, num_outputs=2)
    assert use_plain_loop(trainer_factory(), probe)
    assert not use_plain_loop(trainer_factory(gradient_clip_val=1.0), probe)
    assert not use_plain_loop(trainer_factory(limit_train_batches=0.5), probe)
    assert not use_plain_loop(trainer_factory(accumulate_grad_batches=2), probe)
    assert not use_plain_loop(trainer_factory(check_val_every_n_epoch=2), probe)
    assert not use_plain_loop(L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                        enable_model_summary=False), probe)  # a ModelCheckpoint would write files

    class Hooked(type(probe)):
        def on_after_backward(self):  # a hook the plain loop does not call
            pass

    assert not use_plain_loop(trainer_factory(), Hooked(num_layers=1, dim=4, num_outputs=2))


def test_plain_loop_writes_the_epoch_metrics_to_the_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    arr = arrays()
    logger = CSVLogger(str(tmp_path), name="probe")
    fit_probe(conf_probe("linear", min_steps=20, patience=0), arr, "classification", 5,
              lambda **kw: L.Trainer(accelerator="cpu", devices=1, max_epochs=15, logger=logger, enable_checkpointing=False,
                                     enable_progress_bar=False, enable_model_summary=False, **kw),
              batch_size=64, seed=0, layer_ids=[0, 1, 2],
              loop="plain")  # fmt: skip
    import csv

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    assert {"train/loss", "val/loss", "val/accuracy/layer_00", "epoch"} <= set(rows[0])
    assert len(rows) == 15  # trainer max_epochs (the budget's 20 steps fit in fewer)
