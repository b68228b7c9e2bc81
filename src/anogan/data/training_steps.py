"""How many optimiser steps GAN training gets on a small data set: the global batch capped by a share
of the training images (``effective_batch_size``), the passes over them per epoch that give an epoch
enough steps (``epoch_repeats``), the steps of one epoch (``steps_per_epoch``), and the warning when
the whole run is too short (``training_steps_warning``). The folder data module uses them
(``data.max_batch_fraction``, ``data.min_steps_per_epoch``)."""

from __future__ import annotations

import logging
import math

MIN_AUTO_BATCH = 8  # max_batch_fraction never shrinks the batch below this
WARN_BELOW_STEPS = 500  # training_steps_warning: fewer optimiser steps than this in all are too few


def effective_batch_size(n_train: int, batch_size: int, max_batch_fraction: float | None) -> int:
    """The global training batch: ``min(batch_size, max(MIN_AUTO_BATCH, floor(n_train * fraction)))``;
    ``batch_size`` unchanged when ``max_batch_fraction`` is None."""
    if max_batch_fraction is None:
        return int(batch_size)
    return int(min(batch_size, max(MIN_AUTO_BATCH, math.floor(n_train * max_batch_fraction))))


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimiser steps (batches) in one pass over ``n_images``: the last partial batch is dropped when
    there is more than one batch (as ``train_dataloader`` does), so ``n // batch`` or 1."""
    if n_images <= 0:
        return 0
    return n_images // batch_size if n_images > batch_size else 1


def epoch_repeats(n_train: int, batch_size: int, min_steps_per_epoch: int | None) -> int:
    """Passes over the ``n_train`` training images per epoch so that an epoch has at least
    ``min_steps_per_epoch`` steps of ``batch_size``: the smallest k with ``steps_per_epoch(k * n_train)
    >= min_steps_per_epoch`` (1 when None or 0)."""
    if not min_steps_per_epoch or n_train <= 0:
        return 1
    return max(1, math.ceil(min_steps_per_epoch * batch_size / n_train))


def training_steps_warning(
    n_train: int,
    batch_size: int,
    max_epochs: int,
    repeats: int = 1,
    min_steps: int = WARN_BELOW_STEPS,
    max_steps: int = -1,
    limit_batches: int | float | None = None,
) -> str | None:
    """A one-line warning when GAN training gets fewer than ``min_steps`` GAN iterations (batches) in all,
    else None: ``max_epochs`` x the batches of an epoch (``steps_per_epoch(n_train * repeats, batch_size)``,
    cut to ``limit_batches`` = ``trainer.limit_train_batches`` as Lightning does: a count, or a fraction
    rounded down), at most ``max_steps`` (``trainer.max_steps``; -1: no limit).

    ``n_train``: training images; ``batch_size``: the global batch actually used (the data module's
    ``train_batch_size``); ``repeats``: its ``train_repeats``. ``FolderAnomalyDataModule.steps_warning``
    passes all three for you.
    """
    full_epoch = steps_per_epoch(n_train * repeats, batch_size)
    per_epoch = full_epoch
    if isinstance(limit_batches, int) and not isinstance(limit_batches, bool):
        per_epoch = min(full_epoch, limit_batches)
    elif isinstance(limit_batches, float):
        per_epoch = int(full_epoch * limit_batches)
    total = int(max_epochs) * per_epoch if max_epochs != -1 else math.inf
    capped = max_steps is not None and max_steps != -1 and max_steps < total
    total = int(max_steps) if capped else total
    if total >= min_steps:
        return None
    need = math.ceil(min_steps / max(per_epoch, 1))
    if capped:
        why, fix = f"trainer.max_steps={max_steps}", f"raise trainer.max_steps to {min_steps} or more (or -1: no limit)"
    else:
        limit = f", cut to {per_epoch} by trainer.limit_train_batches={limit_batches}" if per_epoch != full_epoch else ""
        why = f"{max_epochs} epochs x {per_epoch} batches of {batch_size}{limit}"
        fix = f"set trainer.max_epochs={need} (or more) or raise data.min_steps_per_epoch"
        if per_epoch != full_epoch:
            fix = f"set trainer.limit_train_batches=null, or trainer.max_epochs={need} (or more)"
    return (
        f"the GAN gets only {total} GAN iterations ({why}; from {n_train} training images"
        f"{f' seen {repeats}x per epoch' if repeats > 1 else ''}); below {min_steps} the generator usually stays noise. "
        f"Fix: {fix}."
    )


def plan_training(
    n_train: int, batch_size: int, max_batch_fraction: float | None, min_steps_per_epoch: int | None, log: logging.Logger
) -> tuple[int, int, int]:
    """``(batch, repeats, steps per epoch)`` for ``n_train`` training images: ``effective_batch_size``,
    ``epoch_repeats`` and ``steps_per_epoch`` of the settings (``data.batch_size``,
    ``data.max_batch_fraction``, ``data.min_steps_per_epoch``); says on ``log`` (info) where the
    batch or the passes per epoch differ from the settings."""
    batch = effective_batch_size(n_train, batch_size, max_batch_fraction)
    repeats = epoch_repeats(n_train, batch, min_steps_per_epoch)
    per_epoch = steps_per_epoch(n_train * repeats, batch)
    if batch < batch_size:
        log.info(
            "training batch %d instead of data.batch_size=%d: at most data.max_batch_fraction=%s of the %d training images",
            batch,
            batch_size,
            max_batch_fraction,
            n_train,
        )
    if repeats > 1:
        log.info(
            "each epoch shows the %d training images %d times (%d steps per epoch; data.min_steps_per_epoch=%s)",
            n_train,
            repeats,
            per_epoch,
            min_steps_per_epoch,
        )
    return batch, repeats, per_epoch
