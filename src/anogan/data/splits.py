"""The in-memory split every data module produces, and the per-image key that seeds z."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch.utils.data import Dataset


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
