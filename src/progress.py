"""Progress of long stages: a tqdm bar on a terminal, plain log lines everywhere else.

One utility for every loop that can take more than a few seconds::

    for u in progress(utterances, desc="faithfulness", unit="utt"):
        ...
    with progress(total=n_epochs, desc="classifier", unit="epoch") as bar:
        for epoch in ...:
            ...
            bar.update(1)
    trainer = L.Trainer(callbacks=[lightning_callback("probe fit, layers 0-12")])

On a terminal (stderr is a tty) this is a tqdm bar.  When stderr is not a terminal (a log
file, ``nohup``, a SLURM ``.out``) a bar is useless (carriage returns, or tqdm's
``disable=None`` prints nothing at all), so a plain line is written instead, at most once
every ``every`` seconds (and, if asked, each ``percent`` per cent), plus one when the stage
ends if it wrote a line or took longer than ``every``::

    [progress] extraction: 120/270 batches (44%), elapsed 1m02s, remaining ~1m18s
    [progress] extraction: done, 270/270 batches in 2m21s

Lines go through the ``speechinterp`` logger when logging is configured (Hydra jobs: the
console and the job's ``.log`` file), else straight to stderr.

Environment (function arguments take precedence):

- ``SPEECHINTERP_PROGRESS``: ``auto`` (default: bar on a terminal, lines elsewhere), ``bar``,
  ``log`` or ``off``.
- ``SPEECHINTERP_PROGRESS_EVERY``: seconds between lines (default 20; 0: a line at every step).
- ``SPEECHINTERP_PROGRESS_PERCENT``: also a line each time this many per cent more is done
  (default 0: off).

Lightning loops (extraction's predict loop, probe / control-task / CTC-head / SAE training):
`lightning_callback` writes the same lines (batches done of the estimated total, epoch)
when stderr is not a terminal and turns Lightning's own bar off there; on a terminal it does
nothing and Lightning's bar stays.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

log = logging.getLogger("speechinterp.progress")

MODES = ("auto", "bar", "log", "off")
DEFAULT_EVERY = 20.0
ENV_MODE, ENV_EVERY, ENV_PERCENT = (
    "SPEECHINTERP_PROGRESS",
    "SPEECHINTERP_PROGRESS_EVERY",
    "SPEECHINTERP_PROGRESS_PERCENT",
)

_clock = time.monotonic  # tests replace it with a fake clock


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be a number") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"environment variable {name}={raw!r} must be a finite number >= 0")
    return value


def _is_notebook(stream: Any) -> bool:
    return type(stream).__module__.split(".")[0] == "ipykernel"


def resolve_mode(mode: str | None = None, stream: IO | None = None) -> str:
    """``bar``, ``log`` or ``off``: ``mode`` (else ``$SPEECHINTERP_PROGRESS``, else ``auto``), with
    ``auto`` a bar when ``stream`` (default stderr) is a terminal or a notebook, lines otherwise."""
    mode = (mode or os.environ.get(ENV_MODE, "") or "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} (argument or {ENV_MODE}) must be one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return "bar" if tty or _is_notebook(stream) else "log"


def format_seconds(s: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """A bar or periodic log lines over a stage; iterate it, or call `update` (also as a context manager).

    Args:
        iterable: what to iterate (optional: without it, count with `update`).
        total: number of steps (default ``len(iterable)`` when it has one).
        desc: the stage's name, first in every line.
        unit: what a step is (``utt``, ``layer``, ``batch``...).
        every: seconds between lines (default ``$SPEECHINTERP_PROGRESS_EVERY`` or 20; 0: every step).
        percent: also a line each ``percent`` % of ``total`` (default ``$SPEECHINTERP_PROGRESS_PERCENT``; 0: off).
        mode: ``auto`` | ``bar`` | ``log`` | ``off`` (default ``$SPEECHINTERP_PROGRESS`` or ``auto``).
        stream: where a bar goes and whose ``isatty`` decides ``auto`` (default stderr).  When given,
            lines are written to it; when not, to the ``speechinterp`` logger if logging is set up, else stderr.
        leave: keep the finished bar on screen (bars only).
    """

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it", *,
                 every: float | None = None, percent: float | None = None, mode: str | None = None,
                 stream: IO | None = None, leave: bool = False, bound: bool = False) -> None:  # fmt: skip
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.bound = bool(bound)  # total is an upper bound (training that may stop early): lines say "at most"
        self.total = None if total is None else int(total)
        self.every = _env_float(ENV_EVERY, DEFAULT_EVERY) if every is None else float(every)
        self.percent = _env_float(ENV_PERCENT, 0.0) if percent is None else float(percent)
        self.mode = resolve_mode(mode, stream)
        self.stream = stream
        self.n = 0
        self.postfix = ""
        self.lines = 0  # log lines written so far
        self._closed = False
        self._t0 = self._last = _clock()
        self._last_pct_step = 0
        self._bar = None
        self._lock = threading.Lock()  # update() may be called from worker threads
        if self.mode == "bar":
            if _is_notebook(sys.stderr if stream is None else stream):
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            self._bar = tqdm(
                iterable, total=self.total, desc=desc, unit=unit, leave=leave, file=stream, dynamic_ncols=True
            )

    # -- counting --------------------------------------------------------------------
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError(f"progress({self.desc!r}) was given no iterable; call update(n) instead")
        if self._bar is not None:
            try:
                yield from self._bar
            finally:
                self.close()
            return
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        except GeneratorExit:  # the caller left the loop early (break, early stopping, an error in its body)
            if not self._closed and self.mode == "log" and self.lines:
                tot = f"/{self.total}" if self.total is not None and not self.bound else ""  # a bound is no total
                self._emit(
                    f"{self._name()}stopped at {self.n}{tot} {self.unit} after {format_seconds(_clock() - self._t0)}"
                )
            self._closed = True
            raise
        except BaseException:
            self._closed = True
            raise
        self.close()

    def wrap(self, iterable: Iterable) -> Iterator:
        """Yield from ``iterable``, counting one step after each item's loop body (also after ``continue``);
        for one count over nested loops: ``for m in bar.wrap(methods): ...`` inside an outer loop."""
        for item in iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.mode != "log":
            self.n += int(n)
            return
        with self._lock:
            self._update_log(int(n))

    def _update_log(self, n: int) -> None:
        self.n += n
        now = _clock()
        due = now - self._last >= self.every
        if self.percent > 0 and self.total:
            step = int(100.0 * self.n / self.total // self.percent)
            if step > self._last_pct_step:
                self._last_pct_step = step
                due = due or self.n < self.total  # the last step is the "done" line
        if due and (self.total is None or self.n < self.total):
            self._emit(self._line(now))
            self._last = now

    def set_postfix(self, text: str) -> None:
        """Extra text at the end of the next lines (e.g. ``epoch 3/15``)."""
        self.postfix = str(text)
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix, refresh=False)

    def set_total(self, total: int | None) -> None:
        self.total = None if total is None else int(total)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def close(self) -> None:
        """End of the stage: close the bar, or write a final line (if a line was written or it took ``every``)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and (self.lines or _clock() - self._t0 >= self.every):
            tot = f"/{self.total}" if self.total is not None and not self.bound else ""  # a bound is no total
            post = f", {self.postfix}" if self.postfix else ""
            self._emit(
                f"{self._name()}done, {self.n}{tot} {self.unit} in {format_seconds(_clock() - self._t0)}{post}"
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # failed: no "done" line
            self._closed = True
            if self._bar is not None:
                self._bar.close()

    # -- lines -----------------------------------------------------------------------
    def _name(self) -> str:
        return f"{self.desc}: " if self.desc else ""

    def _line(self, now: float) -> str:
        elapsed = now - self._t0
        if self.total:
            frac = self.n / self.total
            head = f"{self.n}/{'at most ' if self.bound else ''}{self.total} {self.unit} ({100 * frac:.0f}%)"
            eta = (
                f"remaining {'at most ' if self.bound else ''}~"
                f"{format_seconds(elapsed * (self.total - self.n) / self.n)}"
                if self.n
                else "remaining ?"
            )
            text = f"{head}, elapsed {format_seconds(elapsed)}, {eta}"
        else:
            text = f"{self.n} {self.unit}, elapsed {format_seconds(elapsed)}"
        return f"{self._name()}{text}" + (f", {self.postfix}" if self.postfix else "")

    def _emit(self, line: str) -> None:
        self.lines += 1
        msg = f"[progress] {line}"
        if self.stream is None and log.isEnabledFor(logging.INFO) and log.hasHandlers():
            log.info("%s", msg)
            return
        out = sys.stderr if self.stream is None else self.stream
        try:
            out.write(msg + "\n")
            out.flush()
        except (ValueError, OSError):  # a closed stream: progress must never fail the stage
            pass


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             **kw) -> Progress:  # fmt: skip
    """A `Progress` over ``iterable`` (or over ``total`` steps counted with ``update``); see the module doc."""
    return Progress(iterable, total=total, desc=desc, unit=unit, **kw)


# -- Lightning ---------------------------------------------------------------------------
@functools.cache
def _callback_class():
    from lightning.pytorch.callbacks import Callback

    class ProgressLog(Callback):
        """Log lines for Lightning's fit and predict loops when stderr is not a terminal (see module doc).

        Counts training batches against ``num_training_batches * max_epochs`` (capped by
        ``max_steps``), predict batches against ``sum(num_predict_batches)``; read when the loop
        starts, so budgets set after the trainer was built are counted.  It also switches
        Lightning's own progress bar off there (its carriage-return output is unreadable in a file).
        On a terminal it leaves Lightning's bar alone, and draws a bar of its own only when the
        trainer has none (``enable_progress_bar=False``).
        """

        def __init__(self, desc: str, every: float | None = None, percent: float | None = None,
                     mode: str | None = None, stream: IO | None = None) -> None:  # fmt: skip
            self.desc, self.every, self.percent, self.stream = desc, every, percent, stream
            self.mode = resolve_mode(mode, stream)
            self._p: Progress | None = None

        def setup(self, trainer, pl_module, stage: str) -> None:
            bar = getattr(trainer, "progress_bar_callback", None)
            if self.mode != "bar" and bar is not None and hasattr(bar, "disable"):
                bar.disable()

        def _start(self, trainer, total: int | None, bound: bool = False) -> None:
            if self.mode == "off" or (
                self.mode == "bar" and getattr(trainer, "progress_bar_callback", None) is not None
            ):
                return
            if not getattr(trainer, "is_global_zero", True) and self.mode == "bar":
                return
            desc = self.desc
            if getattr(trainer, "world_size", 1) > 1:
                desc = f"{desc} [rank {trainer.global_rank}/{trainer.world_size}]"
            self._p = Progress(total=total, desc=desc, unit="batches", every=self.every, percent=self.percent,
                               mode=self.mode, stream=self.stream, bound=bound)  # fmt: skip

        def _finish(self) -> None:
            if self._p is not None:
                self._p.close()
                self._p = None

        # fit
        def on_train_start(self, trainer, pl_module) -> None:
            per_epoch = trainer.num_training_batches
            total = None
            if isinstance(per_epoch, int | float) and math.isfinite(per_epoch):
                epochs = (
                    trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
                )
                total = int(per_epoch) * (epochs - trainer.current_epoch) if epochs is not None else None
                if trainer.max_steps is not None and trainer.max_steps >= 0:
                    left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
                    total = left if total is None else min(total, left)
            self._start(trainer, total, bound=True)  # max_epochs / max_steps: early stopping may end it sooner

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if self._p is not None and trainer.max_epochs is not None and trainer.max_epochs >= 0:
                self._p.set_postfix(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self._p is not None:
                self._p.update(1)

        def on_train_end(self, trainer, pl_module) -> None:
            self._finish()

        # predict
        def on_predict_start(self, trainer, pl_module) -> None:
            nb = trainer.num_predict_batches
            total = int(sum(nb)) if all(isinstance(b, int | float) and math.isfinite(b) for b in nb) else None
            self._start(trainer, total)

        def on_predict_batch_end(
            self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
        ) -> None:
            if self._p is not None:
                self._p.update(1)

        def on_predict_end(self, trainer, pl_module) -> None:
            self._finish()

        def on_exception(self, trainer, pl_module, exception) -> None:
            if self._p is not None:
                self._p.__exit__(type(exception), exception, None)  # no "done" line for a failed stage
                self._p = None

    return ProgressLog


def lightning_callback(desc: str, **kw):
    """A Lightning ``Callback`` writing progress lines of fit / predict when stderr is not a terminal
    (``kw``: ``every``, ``percent``, ``mode``, ``stream`` as for `Progress`).  Imports Lightning."""
    return _callback_class()(desc, **kw)


def layers_label(layer_ids) -> str:
    """``layers 0-12`` for a contiguous run, else ``layers 0,3,7`` (short names in progress lines)."""
    ids = [int(k) for k in layer_ids]
    if len(ids) == 1:
        return f"layer {ids[0]}"
    if ids and ids == list(range(ids[0], ids[0] + len(ids))):
        return f"layers {ids[0]}-{ids[-1]}"
    return "layers " + ",".join(map(str, ids))
