"""Progress of every phase (GAN training, encoder training, scoring): Lightning's tqdm bar on a
terminal; plain log lines when stdout is not a terminal (a file, a pipe, a batch job), so that a log
never fills with carriage-return fragments.

A line looks like ``GAN training: 120/1750 batches (epoch 4/50), 3m20s elapsed, ETA 45m10s, loss_d=0.62``
and is written for the first batch, then at most every ``interval_s`` seconds, and for the last one.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar

log = logging.getLogger("anogan.utils.progress")
INTERVAL_S = 30.0  # seconds between two progress lines in a log


def duration(seconds: float) -> str:
    """``45s``, ``3m20s``, ``2h05m``: a short human duration."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class LogProgress(ProgressBar):
    """A Lightning progress bar that writes log lines (phase, k/N, elapsed, ETA) instead of drawing.

    ``phase`` names the work ("GAN training", "Scoring 600 images (...)"); ``interval_s``: the
    shortest time between two lines (the first and the last batch are always written). Only global
    rank 0 writes. ETA: the remaining batches at the mean speed since this phase started.
    """

    def __init__(self, phase: str, interval_s: float = INTERVAL_S):
        super().__init__()
        self.phase, self.interval_s = phase, float(interval_s)
        self._enabled = True
        self._start = self._last = 0.0
        self._first_done: float = 0
        self._total: float = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _begin(self, done: float, total: float) -> None:
        self._start = self._last = time.perf_counter()
        self._first_done, self._total = done, total

    def _step(self, trainer: L.Trainer, done: float, extra: str = "") -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        now = time.perf_counter()
        first, last = done == self._first_done + 1, done >= self._total
        if not (first or last or now - self._last >= self.interval_s):
            return
        self._last = now
        elapsed = now - self._start
        rate = (done - self._first_done) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {duration((self._total - done) / rate)}" if rate > 0 and not last else ""
        log.info(
            "%s: %d/%d batches%s, %s elapsed%s%s",
            self.phase,
            done,
            self._total,
            extra,
            duration(elapsed),
            eta,
            self._metrics(trainer),
        )

    def _metrics(self, trainer: L.Trainer) -> str:
        values = []
        for name, value in self.get_metrics(trainer, trainer.lightning_module).items():
            if name != "v_num" and isinstance(value, (int, float)):
                values.append(f"{name.rsplit('/', 1)[-1]}={value:.3g}")
        return (", " + ", ".join(values)) if values else ""

    # training (GAN, encoder)
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_epoch = trainer.num_training_batches
        self._per_epoch = per_epoch
        self._begin(trainer.current_epoch * per_epoch, max(trainer.max_epochs or 1, 1) * per_epoch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = trainer.current_epoch * self._per_epoch + batch_idx + 1
        self._step(trainer, done, f" (epoch {trainer.current_epoch + 1}/{trainer.max_epochs})")

    # prediction (scoring)
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(0, int(sum(trainer.num_predict_batches)))

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._step(trainer, batch_idx + 1)


def progress_callbacks(phase: str, enabled: bool = True, terminal_bar: Callback | None = None) -> list[Callback]:
    """The progress callback of one phase's Trainer: none when ``enabled`` is false
    (``trainer.enable_progress_bar=false``); on a terminal ``terminal_bar`` (or Lightning's own
    default bar, when ``None``); otherwise :class:`LogProgress` lines named ``phase``."""
    if not enabled:
        return []
    if sys.stdout.isatty():
        return [terminal_bar] if terminal_bar is not None else []
    return [LogProgress(phase)]


class Steps:
    """Progress lines of a loop outside Lightning (e.g. a memory bank's coreset): ``step(done)``
    writes ``<phase>: <done>/<total> <unit>, <elapsed> elapsed, ETA <left>`` for the first step,
    then at most every ``interval_s`` seconds, and for the last one, to the log (terminal and log
    file alike). ETA: the remaining steps at the mean speed since the first line."""

    def __init__(self, phase: str, total: int, unit: str = "steps", interval_s: float = INTERVAL_S, first: int = 0):
        self.phase, self.total, self.unit, self.interval_s = phase, int(total), unit, float(interval_s)
        self._first = int(first)
        self._start = self._last = time.perf_counter()
        self.lines = 0

    def step(self, done: int) -> None:
        now = time.perf_counter()
        first, last = done == self._first + 1, done >= self.total
        if not (first or last or now - self._last >= self.interval_s):
            return
        self._last = now
        elapsed = now - self._start
        rate = (done - self._first) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {duration((self.total - done) / rate)}" if rate > 0 and not last else ""
        log.info("%s: %d/%d %s, %s elapsed%s", self.phase, done, self.total, self.unit, duration(elapsed), eta)
        self.lines += 1
