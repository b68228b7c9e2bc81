"""What Lightning prints: its advertising tips never, its per-Trainer banner once per run, and no
warning about its own code that a user cannot act on."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LIGHTNING_INFO = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")


class _NoTips(logging.Filter):
    """Lightning's advertising tips ("💡 Tip: ... litlogger") are dropped: not printed at all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡")


logging.getLogger(_LIGHTNING_INFO[0]).addFilter(_NoTips())
# Lightning's own pytree helper builds torch's deprecated LeafSpec (torch 2.14, FutureWarning):
# printed once per run, about Lightning's code, not the user's.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-Trainer banner ("GPU available: ...") is printed once, by the GAN stage's
    Trainer; the later Trainers of a run (scoring, encoder) stay quiet."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_INFO]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
