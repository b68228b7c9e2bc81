"""Lightning callbacks of the GAN stage."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid

from anogan.utils.io import atomic_save_image

if TYPE_CHECKING:
    from anogan.models.gan import GAN


class SampleGrid(L.Callback):
    """Every ``every_n_epochs``: G(fixed noise) as a grid in TensorBoard and as a PNG."""

    def __init__(self, folder: str, every_n_epochs: int = 1, nrow: int = 8):
        self.folder = Path(folder)
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs and not trainer.should_stop:
            return
        images = cast("GAN", pl_module).sample().float().cpu()
        grid = make_grid(images, nrow=self.nrow, normalize=True, value_range=(-1, 1))
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save_image(grid, self.folder / f"epoch_{epoch:04d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("gan/samples", grid, global_step=epoch)


class GANIterationLimit(L.Callback):
    """``trainer.max_steps`` as GAN iterations: training stops after ``max_batches`` training batches in
    all (each is one D step, plus the G turn of ``model.g_steps`` G steps every ``model.critic_steps``
    batches), counted across epochs and resumes. Lightning's own ``max_steps`` counts every optimizer
    step under manual optimization (one bce batch = 1 + g_steps of them), so it is not passed on."""

    def __init__(self, max_batches: int):
        self.max_batches = int(max_batches)

    @staticmethod
    def batches_done(trainer: L.Trainer) -> int:
        """Training batches run so far (restored from a checkpoint on resume)."""
        total: Any = trainer.fit_loop.epoch_loop.batch_progress.total  # a _ProcessedTracker (declared as its base)
        return int(total.processed)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.batches_done(trainer) >= self.max_batches:
            trainer.should_stop = True


class RandomStateCheckpoint(L.Callback):
    """Exact resume: the random-number states travel with every checkpoint.

    Saved (``state_dict``, called when Lightning writes a checkpoint): the global torch CPU
    generator, every CUDA generator (if CUDA is available), numpy's global state and Python's
    ``random``. Restored as soon as Lightning hands the checkpoint's callback state back
    (``load_state_dict``, during ``trainer.fit(ckpt_path=...)``'s restore). That is the right
    moment: the resumed run's first DataLoader iterator is created right after it (in
    ``FitLoop.setup_data``, even before ``on_train_start``), and nothing draws random numbers in
    between, so the next epoch's shuffle and its z draws are the ones the uninterrupted run made.
    The data order needs no state of its own: the training DataLoader draws its sampler seed from
    the global torch generator when each epoch's iterator is created, and DDP's DistributedSampler
    is seeded by (seed, epoch). States are stored as tensors, numbers and lists, so a
    ``weights_only`` load accepts them. Under DDP every rank restores rank 0's states, then
    ``GAN.on_train_start`` re-offsets ranks > 0: exact resume is guaranteed for one process.
    """

    def state_dict(self) -> dict[str, Any]:
        # the legacy form: (kind, keys, pos, has_gauss, cached)
        legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
        kind, keys, pos, has_gauss, cached = legacy
        version, internal, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict["cuda"]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        n = state_dict["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        p = state_dict["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
