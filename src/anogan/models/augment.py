"""DiffAugment: differentiable augmentation of the images D sees, real and fake alike.

Zhao et al., NeurIPS 2020, "Differentiable Augmentation for Data-Efficient GAN Training"
(the official ``DiffAugment_pytorch.py``, same transforms and ranges). On small training sets
(4,500-5,000 images per CIFAR-10 class) D memorises the real images; augmenting both real and
generated images with the *same* family of random, differentiable transforms, in both the D and
the G step, keeps D from overfitting while G still receives gradients through the transform.

Policies (comma-separated in ``model.diffaugment``, applied in this order):

* ``color``: per image, brightness + U(−0.5, 0.5); saturation × U(0, 2) around the per-pixel
  channel mean; contrast × U(0.5, 1.5) around the image mean (images in [−1, 1]).
* ``translation``: per image, an integer shift of up to ±1/8 of the size in each direction,
  zero padding.
* ``cutout``: per image, one square of half the size (centre anywhere) set to zero.

Each call draws fresh random parameters per image (from ``generator`` when given), so real and
fake batches get independent draws, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) of shape (n, 1, 1, 1), drawn on the CPU generator then moved to x's device."""
    return torch.rand(n, 1, 1, 1, generator=generator).to(device=x.device, dtype=x.dtype)


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_rand(n, x, generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, x, generator) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(n, x, generator) + 0.5) + mean


def _translation(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=generator).to(x.device)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=generator).to(x.device)
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
    )
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # a zero border: shifted-in pixels read it
    return padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=generator).to(x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=generator).to(x.device)
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(ch, device=x.device), torch.arange(cw, device=x.device), indexing="ij"
    )
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, device=x.device, dtype=x.dtype)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch x (N×C×H×W, values in [−1, 1]) with ``policy`` (from ``parse_policy``).

    Differentiable in x (gradients flow to G through the fakes). ``policy=()`` returns x itself.
    ``generator``: a CPU ``torch.Generator`` for reproducible draws (default: the global RNG).
    """
    for name in policy:
        x = _TRANSFORMS[name](x, generator)
    return x
