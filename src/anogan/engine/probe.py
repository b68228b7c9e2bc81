"""Timed probes: a few batches of each phase of a run on this machine, as seconds per batch or image.

Each phase (GAN training, encoder training, scoring) is run for a few batches on random images with
freshly initialised networks of the configured architecture, under the run's precision and thread
count, through the same Lightning modules the run uses. Probes time batches of ``PROBE_BATCH // 2``
and ``PROBE_BATCH`` images and extend the line through both to the configured batch (a fixed cost
per batch plus a cost per image). Scoring with a search is timed at 1 and 3 steps per image and
extrapolated to the configured number of steps (with early stopping: the most it can take).

The caller's random state is left as it was: a probe changes no result. ``anogan.engine.estimate``
turns these unit costs into the run's estimate.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from anogan.data.splits import AnomalySplit
from anogan.engine.inference import run_scorer
from anogan.utils.console import quiet_lightning

if TYPE_CHECKING:
    from anogan.scorers.base import Scorer
    from anogan.scorers.discriminator import DFeatureScorer

PROBE_BATCH = 32  # the larger probe batch (the smaller: half of it; at most the configured batch)


class _Clock(L.Callback):
    """Durations of training/prediction batches; stops training after ``stop_after`` batches."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after, self._t0 = stop_after, 0.0
        self.times: list[float] = []

    def _start(self, *args: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()

    def _end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self._t0)
        if self.stop_after and len(self.times) >= self.stop_after:
            trainer.should_stop = True

    on_train_batch_start = on_predict_batch_start = _start
    on_train_batch_end = on_predict_batch_end = _end


@contextmanager
def _preserved_random_state() -> Iterator[None]:
    """The probes draw random numbers (network initialisation, images, z): the run's own stream
    (torch, CUDA, numpy, random) is restored afterwards, so a run with an estimate equals one without."""
    states = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def _random_split(n: int, channels: int, size: int) -> AnomalySplit:
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    return AnomalySplit(images, np.zeros(n, dtype=np.int64), np.arange(n), 0)


def probe_trainer_kwargs(trainer_kwargs: dict, root: str) -> dict:
    """The run's device, precision and determinism on one device, with nothing written or shown."""
    kw = {k: trainer_kwargs[k] for k in ("accelerator", "precision", "deterministic") if k in trainer_kwargs}
    kw.update(
        devices=1,
        num_nodes=1,
        max_epochs=1,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
    )
    return kw


def _per_batch(times: list[float], warmup: int = 1) -> float:
    timed = times[warmup:] or times
    return float(np.mean(timed))


def gan_batch_seconds(cfg: DictConfig, kw: dict, batch: int, batches: int = 2) -> float:
    """Seconds of one GAN training batch of ``batch`` images (D step, and G steps as often as the
    objective does them: ``critic_steps``), the mean of ``max(batches, critic_steps)`` batches after one warm-up."""
    model = instantiate(cfg.model, _convert_="all")
    timed = max(batches, int(cfg.model.get("critic_steps", 1) or 1))
    clock = _Clock(stop_after=1 + timed)
    data = _random_split(batch * (timed + 3), int(cfg.data.channels), int(cfg.data.image_size))
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, drop_last=True)
    trainer = L.Trainer(**{**kw, "callbacks": [clock]})
    trainer.fit(model, train_dataloaders=loader)
    return _per_batch(clock.times)


def encoder_batch_seconds(scorer: Scorer, kw: dict, batch: int, channels: int, size: int, batches: int = 2) -> float:
    """Seconds of one encoder training batch (the scorer's own ``fit``): the mean of ``batches`` after one warm-up."""
    clock = _Clock(stop_after=1 + batches)
    data = _random_split(batch * (batches + 3), channels, size)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, drop_last=True)
    scorer.fit(loader, {**kw, "callbacks": [clock]})
    return _per_batch(clock.times)


def extrapolate(small: float, large: float, n_small: int, n_large: int, n: int) -> float:
    """A cost measured at ``n_small`` and ``n_large`` images, extended along the line through both to
    ``n`` images (a fixed cost per batch plus a cost per image); where noise makes that line fall,
    proportional scaling of the larger measurement instead."""
    if n_large == n_small or n == n_large:
        return large * n / n_large
    slope = (large - small) / (n_large - n_small)
    return large + slope * (n - n_large) if slope > 0 else large * n / n_large


def batch_seconds(measure: Callable[[int], float], batch: int) -> float:
    """Seconds of one batch of ``batch`` images from ``measure(n)`` (seconds of a batch of n) at
    ``PROBE_BATCH // 2`` and ``PROBE_BATCH`` images (each its own warm-up), extrapolated linearly
    (``extrapolate``): a per-batch overhead makes a proportional scaling overestimate, most of all in
    bf16 (1.5-1.7x at batch 128 from a probe at 32, docs/performance.md)."""
    small, large = min(batch, PROBE_BATCH // 2), min(batch, PROBE_BATCH)
    if small == large:
        return measure(large) * batch / large
    return extrapolate(measure(small), measure(large), small, large, batch)


def scoring_image_seconds(scorer: Scorer, kw: dict, channels: int, size: int) -> float:
    """Seconds to score one image at the scorer's batch size (and number of search steps, if it
    searches): batches of ``PROBE_BATCH // 2`` and ``PROBE_BATCH`` images, timed at 1 and 3 search
    steps, give a per-batch and a per-step cost, each extrapolated to the scorer's batch size."""
    batch = int(scorer.hparams.batch_size)
    iterations = scorer.hparams.get("iterations")

    def timed(n: int, steps: int | None) -> float:
        if steps is not None:
            scorer.hparams.iterations = steps
        scorer.hparams.batch_size = n
        clock = _Clock()
        run_scorer(scorer, _random_split(n, channels, size), kw, callbacks=[clock])
        return sum(clock.times)

    sizes = sorted({min(batch, PROBE_BATCH // 2), min(batch, PROBE_BATCH)})
    base, per_step = [], []
    for n in sizes:
        timed(n, 1 if iterations is not None else None)  # warm-up at this shape
        if iterations is None:
            base.append(timed(n, None))
            per_step.append(0.0)
        else:
            one, three = timed(n, 1), timed(n, 3)
            per_step.append(max((three - one) / 2, 0.0))
            base.append(max(one - per_step[-1], 0.0))
    n_small, n_large = sizes[0], sizes[-1]
    base_b = extrapolate(base[0], base[-1], n_small, n_large, batch)
    step_b = extrapolate(per_step[0], per_step[-1], n_small, n_large, batch)
    return (base_b + int(iterations or 0) * step_b) / batch


BANK_PROBE_STEPS = 200  # greedy coreset steps timed on a random bank of the real shape (20: too noisy)
BANK_PROBE_FLOATS = 20_000_000  # larger banks are timed on a row subset and scaled by their rows


def bank_seconds(scorer: DFeatureScorer, n_images: int, channels: int, size: int) -> tuple[float, str]:
    """Seconds to build a memory-bank scorer's banks from ``n_images`` training images (``fit``) and
    a few words on what it does: D's feature pass (a timed batch of random images, per image × n)
    plus, for each greedy coreset of ``scorer.bank_plan``, ``kept − 1`` steps at the time per step
    measured on random rows of the bank's real shape (rows × the dimensions its distances use;
    above ``BANK_PROBE_FLOATS`` floats, on a subset of the rows, scaled by rows: a step is one pass
    over the bank). Sets nothing on the scorer."""
    batch = min(int(scorer.hparams.batch_size), PROBE_BATCH)
    x = _random_split(batch, channels, size).images.float().div(127.5).sub(1.0)
    with torch.no_grad():
        scorer._features(x)  # warm-up
        start = time.perf_counter()
        scorer._features(x)
        seconds = (time.perf_counter() - start) / batch * n_images
    what = []
    for plan in scorer.bank_plan(n_images):
        name = "image vectors" if plan["name"] == "bank" else "cells"
        projected = f", distances in {plan['selection_dim']} projected dims" if plan["selection_dim"] < plan["dim"] else ""
        method = f"{plan['method']}{projected}" if plan["method"] == "greedy" else plan["method"]
        what.append(f"{plan['rows']:,} {name} × {plan['dim']} → {plan['kept']:,} ({method})")
        if plan["method"] == "greedy":
            seconds += coreset_seconds(plan["rows"], plan["selection_dim"], plan["kept"])
    return seconds, "; ".join(what)


def coreset_seconds(rows: int, dim: int, kept: int) -> float:
    """Seconds of a greedy coreset (``greedy_coreset``) keeping ``kept`` of ``rows`` rows whose distances
    use ``dim`` dimensions: ``kept − 1`` steps at the time per step measured here on random rows of that
    shape (above ``BANK_PROBE_FLOATS`` floats, on a subset of the rows, scaled by rows: a step is one
    pass over the bank)."""
    from anogan.scorers.discriminator import greedy_coreset

    probe = min(rows, max(1000, BANK_PROBE_FLOATS // dim))
    sample = torch.randn(probe, dim)
    steps = min(BANK_PROBE_STEPS, probe - 2)

    def timed(size: int) -> float:
        start = time.perf_counter()
        greedy_coreset(sample, size, 0)
        return time.perf_counter() - start

    # the faster of two runs each: the first run after a pause is several times slower (measured: 4.9×)
    long, short = min(timed(2 + steps) for _ in range(2)), min(timed(2) for _ in range(2))
    return max(long - short, 0.0) / steps * rows / probe * (kept - 1)


def _fake_banks(scorer: DFeatureScorer, n_images: int) -> None:
    """Fill a memory-bank scorer's banks with random rows of the sizes ``fit`` would keep (so scoring can be timed)."""
    for plan in scorer.bank_plan(n_images):
        setattr(scorer, plan["name"], torch.randn(plan["kept"], plan["dim"]))


@dataclass
class UnitCosts:
    """What the probe measured, scaled to the run's per-device batch: seconds per GAN batch, per
    encoder batch (None: the scorer has no encoder) and per scored image; the scorer's encoder
    epochs and its one-line summary."""

    gan_batch_s: float | None
    encoder_batch_s: float | None
    scoring_image_s: float | None
    encoder_epochs: int | None
    scorer_summary: str
    bank_s: float | None = None
    bank_what: str = ""


def unit_costs(
    cfg: DictConfig, trainer_kwargs: dict, batch: int, gan: bool = True, encoder: bool = True, bank_images: int = 0
) -> UnitCosts:
    """Probe the phases of ``cfg`` under ``trainer_kwargs`` (device, resolved precision) on
    random images, at two small batches extrapolated to ``batch`` (the per-device batch; ``batch_seconds``).
    ``gan=False`` / ``encoder=False`` skip the GAN / encoder probe (cached). A memory-bank scorer
    (``sized_by_fit``): its build from ``bank_images`` training images (``bank_seconds``), and its
    scoring with random banks of the sizes it will keep. The caller's random state is kept."""
    size, channels = int(cfg.data.image_size), int(cfg.data.channels)
    root = tempfile.mkdtemp(prefix="anogan-estimate-")
    try:
        with _preserved_random_state(), quiet_lightning(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = probe_trainer_kwargs(trainer_kwargs, root)
            gan_s = batch_seconds(lambda n: gan_batch_seconds(cfg, kw, n), batch) if gan else None
            model = instantiate(cfg.model, _convert_="all")
            scorer = instantiate(
                cfg.mapping, generator=model.generator, discriminator=model.discriminator, seed=cfg.seed, _convert_="all"
            )
            summary, epochs, encoder_s = scorer.summary(), None, None
            if scorer.needs_fit and hasattr(scorer, "encoder"):  # an encoder to train (not a D-feature bank)
                epochs = int(scorer.fit_settings()["epochs"])
                encoder_s = (
                    batch_seconds(lambda n: encoder_batch_seconds(scorer, kw, n, channels, size), batch) if encoder else 0.0
                )
            bank_s, bank_what = None, ""
            if scorer.sized_by_fit:  # a memory-bank scorer (mapping=dfeatures): built from the training images first
                bank_s, bank_what = bank_seconds(cast("DFeatureScorer", scorer), bank_images, channels, size)
                _fake_banks(cast("DFeatureScorer", scorer), bank_images)
            scoring_s = scoring_image_seconds(scorer, kw, channels, size)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return UnitCosts(gan_s, encoder_s, scoring_s, epochs, summary, bank_s, bank_what)
