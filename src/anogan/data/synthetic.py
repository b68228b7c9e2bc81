"""Synthetic anomalies made from normal images, each with its mask, for validation only.

When validation has no real anomalous images, a threshold cannot be fitted on it; these functions
turn held-out normal images into labelled anomalies whose masks are known:

* ``cutpaste``: CutPaste (Li, Sohn, Yoon, Pfister, "CutPaste: Self-Supervised Learning for Anomaly
  Detection and Localization", CVPR 2021): a rectangle of 2-15% of the image area, aspect ratio
  0.3-3.3, is cut from the image, colour-jittered and pasted at another place. Mask: the pasted
  rectangle.
* ``blend``: a DRAEM-style blend (Zavrtanik, Kristan, Skočaj, "DRAEM: A discriminatively trained
  reconstruction embedding for surface anomaly detection", ICCV 2021): a smooth random-noise field
  (bicubic value noise at a random scale; DRAEM uses Perlin noise) thresholded into blobs covering
  5-25% of the image, where another texture is blended in with opacity 0.5-1. DRAEM takes the texture
  from the DTD dataset; offline we take another image of the same set, rotated by a multiple of 90°
  and inverted (255 - x). Mask: the thresholded blobs.

Everything is seeded (``numpy.random.default_rng(seed)``): the same images and seed give the same
anomalies. Synthetic anomalies are for validation only: a test split must hold real images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from anogan.config.choices import SYNTHETIC_METHODS as METHODS


def class_name(method: str) -> str:
    """The class name of a synthetic row, as scores.csv shows it: ``synthetic_<method>``."""
    return f"synthetic_{method}"


def cutpaste(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One CutPaste anomaly (Li et al., CVPR 2021).

    ``image``: uint8 C×H×W. Returns the new uint8 C×H×W image and its uint8 {0,1} 1×H×W mask (the
    pasted rectangle). The patch keeps its own content, scaled by a brightness and a contrast factor
    in [0.9, 1.1] (the paper's colour jitter of 0.1), so it seldom matches the pixels it covers.
    """
    _, h, w = image.shape
    area = rng.uniform(0.02, 0.15) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    ph = int(np.clip(round(np.sqrt(area * aspect)), 1, h - 1))
    pw = int(np.clip(round(np.sqrt(area / aspect)), 1, w - 1))
    sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    while True:  # another place (h, w >= 2 so one exists)
        dy, dx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        if (dy, dx) != (sy, sx):
            break
    patch = image[:, sy : sy + ph, sx : sx + pw].float()
    brightness, contrast = rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)
    mean = patch.mean()
    patch = ((patch - mean) * contrast + mean) * brightness
    out = image.clone()
    out[:, dy : dy + ph, dx : dx + pw] = patch.round().clamp(0, 255).to(torch.uint8)
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    mask[:, dy : dy + ph, dx : dx + pw] = 1
    return out, mask


def smooth_noise(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """Smooth random noise, float32 H×W: uniform values on a random grid of 2-16 cells a side,
    upsampled bicubically (value noise, a simple stand-in for DRAEM's Perlin noise)."""
    cells = int(2 ** rng.integers(1, 5))
    grid = torch.from_numpy(rng.uniform(0.0, 1.0, (1, 1, cells + 1, cells + 1)).astype(np.float32))
    return F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True)[0, 0]


def blend(image: torch.Tensor, texture: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One DRAEM-style anomaly (Zavrtanik et al., ICCV 2021): ``texture`` blended into ``image``
    where thresholded smooth noise is high.

    ``image``, ``texture``: uint8 C×H×W. Returns the new uint8 C×H×W image and its uint8 {0,1}
    1×H×W mask: the noise above its (1 - a) quantile, a uniform in [0.05, 0.25] (so the blobs cover
    a share a of the image), blended with opacity uniform in [0.5, 1].
    """
    _, h, w = image.shape
    noise = smooth_noise(h, w, rng)
    share = rng.uniform(0.05, 0.25)
    mask = (noise >= torch.quantile(noise.flatten(), 1.0 - share)).to(torch.uint8)[None]
    opacity = rng.uniform(0.5, 1.0)
    mixed = image.float() * (1 - opacity) + texture.float() * opacity
    out = torch.where(mask.bool(), mixed.round().clamp(0, 255).to(torch.uint8), image)
    return out, mask


def synthetic_anomalies(images: torch.Tensor, method: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic anomaly per image.

    ``images``: uint8 N×C×H×W normal images (H, W >= 2). ``method``: ``cutpaste`` or ``blend``.
    Returns uint8 N×C×H×W anomalous images and their uint8 {0,1} N×1×H×W masks, row-aligned; the
    same images, method and seed give the same result. For ``blend`` the texture of image i is
    another image of the set (itself when N = 1), rotated by 90°, 180° or 270° and inverted.
    Raises ``ValueError`` for an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown synthetic anomaly method {method!r}; use one of {METHODS}")
    n = len(images)
    if not n:
        return images.clone(), torch.zeros((0, 1, *images.shape[2:]), dtype=torch.uint8)
    rng = np.random.default_rng(seed)
    out, masks = [], []
    for i in range(n):
        if method == "cutpaste":
            image, mask = cutpaste(images[i], rng)
        else:
            other = images[(i + 1 + int(rng.integers(0, n - 1))) % n] if n > 1 else images[i]
            texture = 255 - torch.rot90(other, int(rng.integers(1, 4)), dims=(1, 2))
            if texture.shape != other.shape:  # non-square: rotate by 180° only
                texture = 255 - torch.rot90(other, 2, dims=(1, 2))
            image, mask = blend(images[i], texture, rng)
        out.append(image)
        masks.append(mask)
    return torch.stack(out), torch.stack(masks)
