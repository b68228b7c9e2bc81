"""What every data module shares: the in-memory split, the loaders, the per-image key that seeds z."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from anogan.errors import UserError
from anogan.io import atomic_write_text


class DataError(UserError):
    """Data cannot be loaded as configured; the message says how to fix it."""


def image_key(image_uint8: torch.Tensor) -> int:
    """A 63-bit key of an image's pixels, independent of where the image comes from."""
    digest = hashlib.blake2b(image_uint8.contiguous().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class AnomalySplit(Dataset):
    """Images (uint8, N×C×H×W) with their labels, true classes and global ids."""

    def __init__(self, images: torch.Tensor, classes: np.ndarray, ids: np.ndarray, normal_class: int):
        self.images = images
        self.classes = torch.as_tensor(classes, dtype=torch.long)
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        self.labels = (self.classes != normal_class).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i].float().div_(127.5).sub_(1.0)
        return {"image": image, "label": self.labels[i], "id": self.ids[i], "row": i, "key": image_key(self.images[i])}


class AnomalyDataModule(L.LightningDataModule):
    """What every data module shares once ``setup`` has filled ``train_set``, ``eval_set``,
    ``eval_split`` ("val"/"test" per eval row) and ``manifest``: the loaders and the manifest file.
    Subclasses also provide ``eval_columns()`` (source and class name per eval row)."""

    train_set: AnomalySplit | None = None
    eval_set: AnomalySplit | None = None
    eval_split: np.ndarray | None = None
    manifest: dict | None = None

    def write_manifest(self, folder: str | Path) -> Path:
        """Write the split manifest to ``folder/splits.json`` (atomically).

        Raises:
            anogan.io.WriteError: the folder is read-only or the disk is full.
        """
        return atomic_write_text(Path(folder) / "splits.json", json.dumps(self.manifest, indent=1))

    def train_dataloader(self) -> DataLoader:
        """Batches of ``data.batch_size / world_size`` per process: ``data.batch_size`` is the global
        batch, the same GAN updates on one device or many (Lightning adds the DistributedSampler)."""
        batch_size, world_size = self.hparams.batch_size, self.trainer.world_size if self.trainer else 1
        if batch_size % world_size:
            raise DataError(
                f"data.batch_size={batch_size} is the global batch and must split evenly over the "
                f"{world_size} processes (trainer.devices x trainer.num_nodes). Fix: set data.batch_size to a "
                f"multiple of {world_size}, e.g. {max(world_size, batch_size // world_size * world_size)}."
            )
        return DataLoader(
            self.train_set,
            batch_size=batch_size // world_size,
            shuffle=True,
            drop_last=len(self.train_set) > batch_size,  # each process holds len/world_size images
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def eval_dataloader(self, batch_size: int) -> DataLoader:
        """Validation and test rows in one pass; ``eval_split`` says which row is which."""
        return DataLoader(self.eval_set, batch_size=batch_size, shuffle=False, num_workers=self.hparams.num_workers)
