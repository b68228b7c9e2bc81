"""DCGAN generator and discriminator (the guidebook's model.py, generalised and fixed).

Sizes 32/64/128 px and 1 or 3 channels. The discriminator exposes ``features(x)``, the
feature stack f(·) used by the discrimination (feature-matching) loss, and returns *logits*
(the seed's Sigmoid is folded into BCEWithLogits, which is the same loss, stable in bf16).

Two discriminator options (architecture keys, saved in ``gan.json`` so a saved GAN rebuilds exactly):

* ``norm``: the normalisation after each feature conv. ``batch`` (the guidebook's BatchNorm),
  ``layer`` (``GroupNorm(1, C)``: mean/variance over C×H×W of each image, per-channel affine, the
  conv form of layer normalisation used by Gulrajani et al. 2017's critic), ``instance``
  (``InstanceNorm2d(affine=True)``) or ``none``. A gradient penalty is per image, so it needs a
  per-image critic: BatchNorm (which mixes the images of a batch) is refused with it.
* ``spectral_norm``: every conv weight of D (features and head) is divided by its largest singular
  value, estimated by one power iteration per training forward (Miyato et al., ICLR 2018,
  "Spectral normalization for generative adversarial networks";
  ``torch.nn.utils.parametrizations.spectral_norm``). The state dict then holds
  ``parametrizations.weight.original`` and the power-iteration vectors ``_u``/``_v`` instead of
  ``weight``. Refused with ``norm=batch``: SN-GAN's discriminator has no BatchNorm, and the scorer
  folds Conv→BatchNorm pairs into one conv, which a spectrally normalised conv does not allow.

And one for self-supervision: ``transform_classes`` = T > 0 adds ``transform_head``, a
linear layer from D's flattened final feature stack (``features(x)``, the last width × 4×4) to T
logits, the auxiliary rotation head of Chen et al., CVPR 2019 ("Self-Supervised GANs via Auxiliary
Rotation Loss"; google/compare_gan ``ssgan.py``: a linear layer on the flattened last feature map,
spectrally normalised when D is). ``transform_logits(x)`` gives them; ``models/transforms.py`` names
the transformation sets. With 0 (the default) the network and its state dict are the plain DCGAN's.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from anogan.config.gan_options import check_discriminator_options

SUPPORTED_SIZES = (32, 64, 128)


def _n_doublings(image_size: int) -> int:
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"image_size={image_size} is not supported; use one of {SUPPORTED_SIZES}")
    return int(math.log2(image_size // 4))


def init_weights(module: nn.Module) -> None:
    """The seed's init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0.
    (GroupNorm/InstanceNorm keep PyTorch's weight 1, bias 0.)"""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _norm_layer(norm: str, width: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(width)
    if norm == "layer":
        return nn.GroupNorm(1, width)
    if norm == "instance":
        return nn.InstanceNorm2d(width, affine=True)
    return nn.Identity()


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
    """image (N×C×S×S) -> logit (N,). ``features`` halves the size down to 4×4 with widths W, 2W, 4W, ...

    ``norm``, ``spectral_norm`` and ``transform_classes``: see the module docstring; raises
    ``UserError`` for a norm outside ``D_NORMS`` or spectral norm with BatchNorm.
    """

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 64,
        width: int = 64,
        norm: str = "batch",
        spectral_norm: bool = False,
        transform_classes: int = 0,
    ):
        super().__init__()
        check_discriminator_options(norm, spectral_norm)
        k = _n_doublings(image_size)
        layers, w_in = [], channels
        for i in range(k):
            w_out = width * 2**i
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), _norm_layer(norm, w_out), nn.LeakyReLU(0.2, True)]
            w_in = w_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(w_in, 1, 4, 1, 0, bias=False)
        self.transform_classes = int(transform_classes)
        if self.transform_classes > 0:  # PyTorch's default Linear init (compare_gan: its own linear init)
            self.transform_head = nn.Linear(w_in * 4 * 4, self.transform_classes)
        self.apply(init_weights)
        if spectral_norm:  # after the init: SN's `original` starts from the N(0, 0.02) weights
            for module in list(self.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    _spectral_norm(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()

    def transform_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the transformation head: image N×C×S×S -> N×T. Raises ``ValueError`` when D was
        built without one (``transform_classes=0``)."""
        if self.transform_classes <= 0:
            raise ValueError("this discriminator has no transformation head (built with transform_classes=0)")
        return self.transform_head(self.features(x).flatten(1))
