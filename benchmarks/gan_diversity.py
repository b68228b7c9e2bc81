"""The health check's sample diversity of a GAN checkpoint (``models/health.py``), after the fact:

    python benchmarks/gan_diversity.py <run>/checkpoints/last.ckpt --cifar <root of cifar-10-batches-py> --cls 1
    python benchmarks/gan_diversity.py <run>/checkpoints/last.ckpt --folder <folder of training PNGs>

prints the checkpoint's epoch (0-based) and the mean pairwise distance of its 64 fixed-noise samples
over that of the first 64 real images, both 8×8-pooled (``diversity_ratio``, what training logs as
``train/sample_diversity``), and the same unpooled ("pixel"), on one line.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anogan.models.gan import GAN
from anogan.models.health import diversity_ratio, mean_pairwise_distance


def real_images(a: argparse.Namespace, n: int) -> torch.Tensor:
    if a.folder:
        paths = sorted(Path(a.folder).glob("*.png"))[:n]
        x = np.stack([np.array(Image.open(p)).reshape(*np.array(Image.open(p)).shape[:2], -1).transpose(2, 0, 1) for p in paths])
    else:
        with open(Path(a.cifar) / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        x = np.asarray(batch["data"])[np.asarray(batch["labels"]) == a.cls][:n].reshape(-1, 3, 32, 32)
    return torch.tensor(x).float() / 127.5 - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--cifar", type=Path, default=Path("data/cifar10"))
    p.add_argument("--cls", type=int, default=1, help="CIFAR-10 class of the real images (1: automobile)")
    p.add_argument("--folder", type=Path, default=None, help="a folder of the training PNGs instead")
    a = p.parse_args()
    ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
    model = GAN(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(ckpt["state_dict"], strict=False)  # the EMA copy too, when there is one
    samples = model.sample().float()
    reals = real_images(a, len(samples))
    pixel = mean_pairwise_distance(samples[: len(reals)]) / mean_pairwise_distance(reals[: len(samples)])
    print(f"epoch {ckpt['epoch']}  diversity {diversity_ratio(samples, reals):.3f}  (pixel {pixel:.3f})")


if __name__ == "__main__":
    main()
