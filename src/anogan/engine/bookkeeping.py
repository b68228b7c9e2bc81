"""A run's bookkeeping: which process writes and reports (global rank zero), and how long each phase took.

DDP starts one process per device, each running the whole pipeline; only global rank zero checks
and writes the run folder, logs the estimate and reports. ``is_rank_zero`` is the one test of
that, ``rank_zero_step`` marks a step only rank zero runs, and ``PhaseClock`` times the phases
(``wall_time_s`` and ``cpu_time_s`` in metrics.json).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from lightning.pytorch.utilities.rank_zero import rank_zero_only

P = ParamSpec("P")
R = TypeVar("R")


def is_rank_zero() -> bool:
    """Global rank 0, also before any Trainer exists: Lightning's rank (an attribute it sets on
    ``rank_zero_only``, from RANK, LOCAL_RANK or SLURM_PROCID until a Trainer sets the real one)
    and NODE_RANK, the only hint a process started by hand on another node has."""
    return int(getattr(rank_zero_only, "rank", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def rank_zero_step(step: Callable[P, R]) -> Callable[P, R | None]:
    """``step`` run by global rank zero only (``is_rank_zero``); the other processes skip it and get None."""

    @functools.wraps(step)
    def on_rank_zero(*args: P.args, **kwargs: P.kwargs) -> R | None:
        return step(*args, **kwargs) if is_rank_zero() else None

    return on_rank_zero


def cpu_seconds() -> float:
    """CPU seconds this process has used so far: user + system time of all its threads, plus that of
    its children once they have been waited for (``os.times``; DataLoader workers count once joined,
    DDP's other ranks only after they exit)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class PhaseClock:
    """Wall time and CPU time (``cpu_seconds``) of a run from its creation, and of each phase timed
    with ``phase(name)``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.cpu_started = cpu_seconds()
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (seconds, kept in ``seconds[name]``; CPU seconds in ``cpu[name]``)."""
        start, cpu_start = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            self.cpu[name] = cpu_seconds() - cpu_start

    def wall_time_s(self) -> dict[str, float]:
        """Seconds of each phase and ``total`` (since creation), rounded to 0.1 s (metrics.json's ``wall_time_s``)."""
        return {**{k: round(v, 1) for k, v in self.seconds.items()}, "total": round(time.perf_counter() - self.started, 1)}

    def cpu_time_s(self) -> dict[str, float]:
        """CPU seconds (``cpu_seconds``) of each phase and ``total`` (since creation), rounded to 0.1 s
        (metrics.json's ``cpu_time_s``; the same keys as ``wall_time_s``). On several cores a phase's
        CPU time can exceed its wall time."""
        return {**{k: round(v, 1) for k, v in self.cpu.items()}, "total": round(cpu_seconds() - self.cpu_started, 1)}
