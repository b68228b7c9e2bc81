"""DCGAN generator and discriminator (the guidebook's model.py, generalised and fixed).

Sizes 32/64/128 px and 1 or 3 channels. The discriminator exposes ``features(x)``, the
feature stack f(·) used by the discrimination (feature-matching) loss, and returns *logits*
(the seed's Sigmoid is folded into BCEWithLogits, which is the same loss, stable in bf16).
"""

from __future__ import annotations

import math

import torch
from torch import nn

SUPPORTED_SIZES = (32, 64, 128)


def _n_doublings(image_size: int) -> int:
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"image_size={image_size} is not supported; use one of {SUPPORTED_SIZES}")
    return int(math.log2(image_size // 4))


def init_weights(module: nn.Module) -> None:
    """The seed's init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (N×latent×1×1) -> image (N×C×S×S) in [-1, 1]. Widths halve from width·2^(k-1) to width."""

    def __init__(self, latent_dim: int = 128, channels: int = 3, image_size: int = 64, width: int = 64):
        super().__init__()
        k = _n_doublings(image_size)
        widths = [width * 2 ** (k - 1 - i) for i in range(k)]  # 64 px: 8W, 4W, 2W, W
        layers = [nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.net(z)


class Discriminator(nn.Module):
    """image -> logit. ``features`` halves the size down to 4×4 with widths W, 2W, 4W, ..."""

    def __init__(self, channels: int = 3, image_size: int = 64, width: int = 64):
        super().__init__()
        k = _n_doublings(image_size)
        layers, w_in = [], channels
        for i in range(k):
            w_out = width * 2**i
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, True)]
            w_in = w_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(w_in, 1, 4, 1, 0, bias=False)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()
