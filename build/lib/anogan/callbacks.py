"""Lightning callbacks of the GAN stage."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


class SampleGrid(L.Callback):
    """Every ``every_n_epochs``: G(fixed noise) as a grid in TensorBoard and as a PNG."""

    def __init__(self, folder: str, every_n_epochs: int = 1, nrow: int = 8):
        self.folder = Path(folder)
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs:
            return
        images = pl_module.sample().float().cpu()
        grid = make_grid(images, nrow=self.nrow, normalize=True, value_range=(-1, 1))
        self.folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.folder / f"epoch_{epoch:04d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("gan/samples", grid, global_step=epoch)
