"""A plain training loop for layer-wise probes on one process: Lightning's fit, step for step, without its
per-step machinery.

A linear probe's step is a few small matrix products (256 items x 5 layers x 384 dims x 40 classes):
Lightning's hooks, closures, result collections and logging around it cost as much again or more, twice
per phones run (task probe and control probe). `plain_fit` runs the same steps in the same order on
the same module, so the trained heads are the ones Lightning gives, bit for bit (tested:
tests/probes/test_loop.py compares every parameter, the kept epochs and the training losses):

- per epoch: ``module.train()``, ``on_train_epoch_start``; for every batch of ``iter(train_dl)`` (the
  iterator is made once per epoch, as Lightning does, so the loader's generator advances the same way):
  ``training_step`` -> ``zero_grad`` -> ``backward`` -> ``optimizer.step()`` (Lightning's automatic
  optimisation: step function, then zero_grad, then backward, inside the optimizer's closure);
- then the validation epoch under ``torch.no_grad`` in eval mode (``on_validation_epoch_start``,
  ``validation_step`` per batch, ``on_validation_epoch_end``) and the callbacks'
  ``on_validation_epoch_end`` (keep-best: may stop), then ``on_train_epoch_end`` (training losses);
- stop when a callback set ``should_stop`` or after ``max_epochs``; the callbacks' ``on_fit_end``.

Lightning's sanity-check validation (2 batches before training) is skipped: it changes no parameter and
the keep-best callback ignores it. ``module.log`` calls are collected and written to the trainer's
logger at the end of each epoch (epoch means weighted by batch size, as ``on_epoch=True`` logs;
``epoch`` and the global step beside them), so a CSV/W&B run still gets ``train/loss``,
``val/loss`` and the per-layer validation metrics per epoch.

`use_plain_loop` says when the loop applies: one process, CPU, 32-bit precision, no gradient
clipping or accumulation, every training batch and a validation epoch after each training epoch
(the probe trainers' defaults). Anything else (DDP, GPUs, other trainer settings) runs Lightning.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch

log = logging.getLogger(__name__)

LOOPS = ("auto", "plain", "lightning")


class _TrainerState:
    """The trainer attributes the probe callbacks and the module read, for the plain loop (attached as
    ``module.trainer``: ``global_step`` and ``current_epoch`` read as after ``Trainer.fit``)."""

    def __init__(self, max_epochs: int, logger=None) -> None:
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.sanity_checking = False
        self.callback_metrics: dict = {}
        self.logger = logger
        self.max_epochs = max_epochs
        self.global_rank = self.local_rank = 0
        self.world_size = self.num_devices = 1
        self.is_global_zero = True


# Lightning hooks the plain loop does not call: a module that overrides one of them runs under Lightning
_UNCALLED_HOOKS = (
    "setup", "teardown", "configure_callbacks", "configure_gradient_clipping", "configure_model", "on_fit_start",
    "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_batch_start",
    "on_validation_batch_end", "on_validation_model_eval", "on_validation_model_train", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", "optimizer_step", "optimizer_zero_grad",
    "backward", "lr_scheduler_step", "transfer_batch_to_device", "on_before_batch_transfer",
    "on_after_batch_transfer", "on_load_checkpoint", "on_save_checkpoint",
)  # fmt: skip


# callbacks whose work the plain loop does itself (keep-best: called; progress: its own lines) or that do nothing
# to the result (Lightning's bars and model summary)
_KNOWN_CALLBACKS = {"KeepBest", "ProgressLog", "TQDMProgressBar", "RichProgressBar", "ModelSummary", "RichModelSummary"}


def use_plain_loop(trainer, module=None) -> bool:
    """True when ``trainer`` (a lightning.Trainer, not fitted) would run the plain loop's steps exactly on
    ``module``: one CPU process, default loop settings, and no module hook the plain loop does not call."""
    import lightning as L

    if module is not None:
        for name in _UNCALLED_HOOKS:
            base = getattr(L.LightningModule, name, None)
            if base is not None and getattr(type(module), name, None) is not base:
                return False
        if not getattr(module, "automatic_optimization", True):
            return False
    try:
        from lightning.pytorch.accelerators import CPUAccelerator

        if trainer.world_size != 1 or trainer.num_devices != 1 or not isinstance(trainer.accelerator, CPUAccelerator):
            return False
        if str(trainer.precision) not in ("32-true", "32"):
            return False
        if trainer.accumulate_grad_batches != 1 or trainer.gradient_clip_val not in (None, 0, 0.0):
            return False
        if trainer.limit_train_batches not in (1.0, None) or trainer.limit_val_batches not in (1.0, None):
            return False
        if trainer.val_check_interval not in (1.0, None) or trainer.check_val_every_n_epoch != 1:
            return False
        if trainer.max_steps not in (-1, None) or (trainer.min_epochs or 0) > 0:  # max_time: a Timer callback
            return False
        if trainer.fit_loop.max_epochs is None or trainer.fit_loop.max_epochs < 0:
            return False
        if getattr(trainer, "overfit_batches", 0) not in (0, 0.0):
            return False
        if any(type(cb).__name__ not in _KNOWN_CALLBACKS for cb in trainer.callbacks):
            return False  # e.g. a ModelCheckpoint: it would have written files
    except AttributeError:
        return False
    return True


def _identity(x):
    return x


def _epoch_means(logged: dict) -> dict[str, float]:
    """Epoch value of every logged key: the batch-size weighted mean of its logged values."""
    return {k: sum(v * n for v, n in vals) / max(1, sum(n for _, n in vals)) for k, vals in logged.items()}


def plain_fit(module, train_dl, val_dl, callbacks, max_epochs: int, logger=None, progress_desc: str | None = None,
              prestandardized: bool = False):
    """Train ``module`` (a `LayerwiseProbe`) as ``lightning.Trainer(max_epochs=max_epochs).fit`` would on one
    CPU process; ``callbacks`` get ``on_train_epoch_end``, ``on_validation_epoch_end`` and ``on_fit_end``
    with a stand-in trainer (``current_epoch``, ``should_stop``, ``sanity_checking``, ``callback_metrics``).
    ``prestandardized``: the loaders give features already through ``module.standardize`` (see
    `src.probes.pipeline.prestandardized`); the module skips that step while training here.
    Returns the number of epochs run."""
    from src.progress import Progress

    state = _TrainerState(int(max_epochs), logger)
    logged: dict[str, list[tuple[float, int]]] = defaultdict(list)

    def log_fn(name, value, prog_bar=False, on_step=None, on_epoch=None, batch_size=None, sync_dist=False, **_):
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        logged[name].append((v, int(batch_size) if batch_size else 1))

    opt = module.configure_optimizers()
    if isinstance(opt, (list, tuple)) or isinstance(opt, dict):
        raise TypeError(f"{type(module).__name__}.configure_optimizers must return one optimizer for the plain loop")
    module.trainer = state  # module.trainer.global_step / current_epoch after the fit, as after Trainer.fit
    prev_log = module.__dict__.get("log")
    module.log = log_fn  # collected here, written per epoch (see the module docstring)
    if prestandardized:
        module.standardize = _identity  # an instance attribute over the method, removed below
    steps = len(train_dl)
    bar = Progress(total=steps * int(max_epochs), desc=progress_desc or "probe training", unit="batches",
                   bound=True) if progress_desc is not None else None  # max_epochs: patience may stop it sooner
    epochs = 0
    try:
        for epoch in range(int(max_epochs)):
            state.current_epoch = epoch
            if bar is not None:
                bar.set_postfix(f"epoch {epoch + 1}/{max_epochs}")
            module.train()
            module.on_train_epoch_start()
            for i, batch in enumerate(train_dl):
                loss = module.training_step(batch, i)
                opt.zero_grad()
                loss.backward()
                opt.step()
                state.global_step += 1
                if bar is not None:
                    bar.update(1)
            module.eval()
            with torch.no_grad():
                module.on_validation_epoch_start()
                for i, batch in enumerate(val_dl):
                    module.validation_step(batch, i)
                state.callback_metrics = {k: torch.tensor(v) for k, v in _epoch_means(logged).items()}
                for cb in callbacks:  # Lightning: the callbacks' hook, then the module's
                    if hasattr(cb, "on_validation_epoch_end"):
                        cb.on_validation_epoch_end(state, module)
                module.on_validation_epoch_end()
            for cb in callbacks:
                if hasattr(cb, "on_train_epoch_end"):
                    cb.on_train_epoch_end(state, module)
            metrics = _epoch_means(logged)
            logged.clear()
            if logger is not None and metrics:
                logger.log_metrics({**metrics, "epoch": epoch}, step=state.global_step - 1)
            epochs = epoch + 1
            if state.should_stop:
                break
        state.current_epoch = epochs  # after Trainer.fit: the number of completed epochs
        for cb in callbacks:
            if hasattr(cb, "on_fit_end"):
                cb.on_fit_end(state, module)
    finally:
        if prestandardized:
            module.__dict__.pop("standardize", None)
        if prev_log is None:
            module.__dict__.pop("log", None)
        else:
            module.log = prev_log
        if bar is not None:
            bar.close()
        if logger is not None and hasattr(logger, "save"):
            logger.save()
    module.eval()
    return epochs
