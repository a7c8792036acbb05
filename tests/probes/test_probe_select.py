"""A classification probe keeps each head's epoch of highest validation accuracy
(``probe.select_by``), not of lowest validation loss.

On a 10-utterance corpus with random-init Whisper states, the validation loss (one 123-frame
utterance) rises from the first epoch while validation accuracy and the training fit improve
(over-confident logits), so selection by loss kept the barely trained epoch 0. Here the same
happens on synthetic data: training labels are a clean function of feature 0 (separable, so the
logits grow without bound), validation and test labels are flipped for 25% of the items, and a
high learning rate makes the head over-confident from the first epoch.
"""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from src.probes import pipeline
from src.probes.base import resolve_select_by
from src.probes.linear import LinearProbe
from src.probes.pipeline import SplitArrays, fit_probe
from tests.probes.helpers import conf_probe, trainer_factory

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
pytestmark = pytest.mark.usefixtures("one_thread")


def overconfident(seed: int = 0, d: int = 32, n_train: int = 128, n_eval: int = 1000, flip: float = 0.25):
    """Label = feature 0 > 0 (clean in training; ``flip`` of validation/test labels flipped)."""
    g = np.random.default_rng(seed)
    out = {}
    for split, m, nz in (("train", n_train, 0.0), ("val", n_eval, flip), ("test", n_eval, flip)):
        x = g.normal(size=(m, d))
        y = (x[:, 0] > 0).astype(np.int64)
        y = np.where(g.random(m) < nz, 1 - y, y)
        out[split] = SplitArrays(torch.from_numpy(x[:, None].astype(np.float32)), torch.from_numpy(y), np.arange(m), None)
    return out


class Record(L.Callback):
    """Each epoch's validation loss and accuracy of head 0, as the probe reports them."""

    def __init__(self) -> None:
        self.loss, self.acc = [], []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.loss.append(float(pl_module.validation_loss_per_head()[0]))
            self.acc.append(float(pl_module.validation_accuracy_per_head()[0]))


def _fit(arrays, select_by):
    rec = Record()
    factory = conf_probe(min_steps=0, patience=0, select_by=select_by, **{"optimizer.lr": 0.1})
    tf = lambda callbacks=(), **kw: trainer_factory(20, callbacks=[rec, *callbacks], **kw)  # noqa: E731
    probe = fit_probe(factory, arrays, "classification", 2, tf, batch_size=64, layer_ids=[0])
    return probe, rec


def _accuracy(probe, arr: SplitArrays) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(arr.y.numpy(), probe.predict_all(arr.x).argmax(-1)[0].numpy()))


def test_selection_by_accuracy_keeps_a_trained_epoch_where_loss_keeps_epoch_0():
    """Measured (seed 0): by loss epoch 0 (val .581, test .570); by accuracy epoch 19 (val .712, test
    .706) although its validation loss is 1.34 against .80 at epoch 0."""
    arrays = overconfident()
    by_loss, rec = _fit(arrays, "loss")
    by_acc, rec_acc = _fit(arrays, "accuracy")
    assert rec.loss == rec_acc.loss and rec.acc == rec_acc.acc  # the same training; only the kept epoch differs
    loss, acc = np.array(rec.loss), np.array(rec.acc)
    # the premise: the validation loss is lowest at epoch 0 and rises, while validation accuracy rises
    assert loss.argmin() == 0 and loss[-1] > loss[0] + 0.3
    assert acc.max() > acc[0] + 0.08
    assert by_loss.best_epochs == [0]
    best = by_acc.best_epochs[0]
    assert best == int(np.flatnonzero(acc == acc.max())[np.argmin(loss[acc == acc.max()])])  # ties: lower loss
    assert best >= 5
    # the kept weights are those of the kept epoch: their validation accuracy (sklearn) is the recorded one
    assert _accuracy(by_acc, arrays["val"]) == pytest.approx(acc[best], abs=1e-12)
    assert _accuracy(by_loss, arrays["val"]) == pytest.approx(acc[0], abs=1e-12)
    assert _accuracy(by_acc, arrays["test"]) > _accuracy(by_loss, arrays["test"]) + 0.08
    assert by_acc.select_by == "accuracy" and by_loss.select_by == "loss"


def _feed(losses, accs, select_by=None, budget=None, patience=0, module=None):
    """Feed per-epoch validation losses (and accuracies) to the keep-best callback: (stop epoch or -1, kept epochs)."""
    H = len(losses[0])
    probe = module or LinearProbe(num_layers=H, dim=2, num_outputs=2)
    il, ia = iter(losses), iter(accs or [])
    probe.validation_loss_per_head = lambda: torch.tensor(next(il), dtype=torch.float64)
    if accs is not None:
        probe.validation_accuracy_per_head = lambda: torch.tensor(next(ia), dtype=torch.float64)
    # the shared keep-best callback (also the CTC heads'); its name is `keep_best_callback` or `keep_best_callback`
    make = getattr(pipeline, "keep_best_callback", None) or pipeline.keep_best_callback
    cb = make(select_by=select_by)
    cb.budget_epochs, cb.patience = budget, patience
    stop = -1
    for epoch in range(len(losses)):
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch, callback_metrics={}, should_stop=False)
        cb.on_validation_epoch_end(trainer, probe)
        if trainer.should_stop:
            stop = epoch
            break
    cb.on_fit_end(None, probe)
    return stop, probe.best_epochs


def test_accuracy_rule_ties_nan_and_the_default():
    losses = [[1.0, 1.0], [1.2, 0.9], [1.1, 0.8], [0.7, float("nan")]]
    accs = [[0.5, 0.5], [0.6, 0.5], [0.6, 0.5], [0.6, float("nan")]]
    # head 0: .6 first at epoch 1, tie at 2 with a lower loss (kept), tie at 3 with a lower loss again (kept)
    # head 1: accuracy flat: the lowest loss among the ties (epoch 2); NaN never counts
    assert _feed(losses, accs)[1] == [3, 2]  # a classification LinearProbe selects by accuracy by default
    assert _feed(losses, accs, select_by="loss")[1] == [3, 2]
    losses = [[1.0], [1.5], [2.0], [1.9]]
    accs = [[0.2], [0.4], [0.3], [0.4]]
    assert _feed(losses, accs)[1] == [1]  # the tie at epoch 3 has a higher loss than epoch 1
    assert _feed(losses, accs, select_by="loss")[1] == [0]


def test_patience_under_accuracy_counts_accuracy_or_loss_improvements():
    """The plateau rule: from the budget's last epoch on, a head goes on while its accuracy reached a new
    best or its loss a new low within the last ``patience`` epochs."""
    # budget 2 epochs (0, 1); epoch 1 improves accuracy only (loss rises): on; 2: loss only (accuracy flat): on;
    # 3, 4: neither: stop after 4 (patience 2); the kept epoch is the best accuracy at the lowest loss (2)
    losses = [[1.0], [1.2], [0.9], [1.5], [1.6], [0.1]]
    accs = [[0.3], [0.5], [0.5], [0.5], [0.4], [0.9]]
    assert _feed(losses, accs, budget=2, patience=2) == (4, [2])
    # by loss alone the same sequence stops at once: epoch 1 did not improve the loss
    assert _feed(losses, accs, select_by="loss", budget=2, patience=2) == (1, [0])


class _CtcLike(nn.Module):
    """Stands for the CTC heads of src/lenses/ctc.py: stacked heads, a per-head loss, no accuracy, no select_by."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(heads, 2))
        self.best_epochs = None

    def head_parameters(self):
        return {"w": self.w}


def test_ctc_like_heads_keep_selecting_by_loss():
    losses = [[2.0, 2.0], [1.0, 3.0], [1.5, 1.0]]
    assert _feed(losses, None, module=_CtcLike(2)) == (-1, [1, 2])
    with pytest.raises(ValueError, match="probe.select_by=loss"):
        _feed(losses, None, select_by="accuracy", module=_CtcLike(2))


def test_select_by_config_values():
    assert resolve_select_by("auto", "classification") == "accuracy"
    assert resolve_select_by(None, "regression") == "loss"
    assert resolve_select_by("Loss", "classification") == "loss"
    with pytest.raises(ValueError, match="probe.select_by=accuracy needs a classification task"):
        LinearProbe(1, 2, 1, kind="regression", select_by="accuracy")
    with pytest.raises(ValueError, match="probe.select_by must be accuracy, loss or auto, got 'r2'"):
        LinearProbe(1, 2, 2, select_by="r2")
    assert conf_probe()(num_layers=1, dim=2, num_outputs=2).select_by == "accuracy"  # conf/probe/linear.yaml
    assert conf_probe("mlp")(num_layers=1, dim=2, num_outputs=1, kind="regression").select_by == "loss"


def test_regression_probe_still_selects_by_loss():
    g = np.random.default_rng(0)
    arrays = {}
    for split, m in (("train", 200), ("val", 100), ("test", 10)):
        x = g.normal(size=(m, 1, 4)).astype(np.float32)
        arrays[split] = SplitArrays(torch.from_numpy(x), torch.from_numpy(x[:, 0, :2] * [2.0, -1.0]).float(),
                                    np.arange(m), None)  # fmt: skip
    probe = fit_probe(conf_probe(min_steps=0, patience=0), arrays, "regression", 2,
                      functools.partial(trainer_factory, 3), batch_size=64, layer_ids=[0])  # fmt: skip
    assert probe.select_by == "loss" and probe.best_epochs == [2]  # the loss still falls at the last epoch
    assert probe.validation_accuracy_per_head() is None
