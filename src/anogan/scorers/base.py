"""What every scorer shares: frozen G and D, the anomaly map, the finite check, ``predict_step``.

A scorer is a LightningModule run with ``Trainer.predict(inference_mode=False)`` (see
``anogan.engine.inference``), by the run's stage 2 and by ``predict.py`` alike. Its ``infer`` maps a batch of
images (N×C×S×S in [-1, 1]) to per-image score components and the final reconstruction G(z); the
base turns that into the rows of ``scores.csv`` and one anomaly map per image.

Anomaly map (Schlegl et al. 2017 mark anomalous regions with the residual |x − G(z)|): the absolute
residual averaged over channels (N×S×S, units of the [-1, 1] pixel range), optionally plus the
discriminator-feature residual averaged over channels and upsampled bilinearly to S×S
(``map_features``), then smoothed with a Gaussian of standard deviation ``map_sigma`` pixels (0: none).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F

from anogan.utils.errors import ScoreDivergenceError

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict
    from torch.utils.data import DataLoader

    from anogan.models.dcgan import Discriminator, Generator


def check_finite_scores(score: torch.Tensor, cause: str) -> None:
    """Raise ``ScoreDivergenceError`` (naming ``cause``) if any score is NaN/inf."""
    if not torch.isfinite(score).all():
        bad = (~torch.isfinite(score)).sum().item()
        raise ScoreDivergenceError(f"{bad} anomaly score(s) are NaN/inf: {cause}")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D Gaussian of standard deviation ``sigma`` pixels, truncated at 3 sigma, summing to 1."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N×H×W maps with reflected borders (exportable to ONNX)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel(sigma).to(maps)
    r = (len(k) - 1) // 2
    x = maps[:, None]
    pad_h, pad_w = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else x
    x = F.conv2d(x, k[r - pad_w : r + pad_w + 1].view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else x
    x = F.conv2d(x, k[r - pad_h : r + pad_h + 1].view(1, 1, -1, 1))
    return x[:, 0]


def anomaly_map(
    x: torch.Tensor,
    generated: torch.Tensor,
    sigma: float,
    fx: torch.Tensor | None = None,
    f_generated: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel anomaly map N×S×S (float32) from images and reconstructions (both N×C×S×S)."""
    maps = (x.float() - generated.float()).abs().mean(1)
    if fx is not None and f_generated is not None:
        feat = (fx.float() - f_generated.float()).abs().mean(1, keepdim=True)
        maps = maps + F.interpolate(feat, size=maps.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return smooth(maps, sigma)


class Scorer(L.LightningModule):
    """Base of every scorer. Subclasses implement ``infer``; those with a training phase (an
    encoder, ``self.encoder``) set ``needs_fit = True`` and implement ``fit(train_loader,
    trainer_kwargs)`` and ``fit_settings()`` (what, besides G, D and the images, determines what
    ``fit`` learns: the key of the encoder cache, ``anogan.engine.gan_cache.encoder_cache_key``).

    Args:
        generator: the trained GAN's generator (frozen here, always in eval mode).
        discriminator: the trained GAN's discriminator (frozen here, always in eval mode).
        batch_size: images scored together (the scores never depend on the batch).
        correction: ``none`` | ``complexity`` | ``auto`` — the primary score (``anogan.post_processing.scores``).
        map_sigma: Gaussian smoothing of the anomaly map, in pixels of the model's resolution.
        map_features: add the upsampled discriminator-feature residual to the map.
        maps: compute anomaly maps at all (``false`` spares their small cost).
        seed: seeds anything random in the scorer (starting z, encoder initialisation).
    """

    if TYPE_CHECKING:  # save_hyperparameters stores an AttributeDict (Lightning declares a wider type)

        @property
        def hparams(self) -> AttributeDict: ...

    needs_fit = False
    sized_by_fit: tuple[str, ...] = ()  # state-dict keys whose shape fit sets (memory banks), not the constructor

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        batch_size: int = 128,
        correction: str = "none",
        map_sigma: float = 1.0,
        map_features: bool = False,
        maps: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        for p in [*generator.parameters(), *discriminator.parameters()]:
            p.requires_grad_(False)
        self.generator.eval()
        self.discriminator.eval()

    def train(self, mode: bool = True) -> Scorer:
        # G and D stay in eval mode: BatchNorm on running statistics, so no image in a batch
        # influences another and batching stays exact. Subclasses with trainable parts override.
        super().train(mode)
        self.generator.eval()
        self.discriminator.eval()
        return self

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim

    def infer(self, x: torch.Tensor, keys: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per image: ``score``, ``residual``, ``discrimination``, ``z`` (N×latent), ``steps``
        (search steps used), ``generated`` (G(z), N×C×S×S) and, for feature maps, ``fx``/``f_generated``.
        A scorer without a reconstruction (``anogan.scorers.discriminator``) returns its own named
        components instead of ``residual``/``discrimination``/``z``/``generated``, and its own ``map`` (N×S×S)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The scorer's whole path on model inputs x (N×C×S×S in [-1, 1]): ``infer``'s per-image
        components (``score``, ``residual``, ...) plus ``map`` (N×S×S, when ``maps``), on x's device.
        ``predict_step`` and the exported ONNX graph (``anogan.deploy.export``) both run this."""
        out = self.infer(x, keys)
        generated, fx, fg = out.pop("generated", None), out.pop("fx", None), out.pop("f_generated", None)
        if self.hparams.maps and "map" not in out and generated is not None:  # a scorer may give its own map
            use_features = self.hparams.map_features
            out["map"] = anomaly_map(
                x, generated, self.hparams.map_sigma, fx if use_features else None, fg if use_features else None
            )
        return out

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        out = self(batch["image"], batch["key"])
        check_finite_scores(
            out["score"], "the GAN (or encoder) weights are broken (check the GAN stage's losses), or mapping.lr is too high."
        )
        out["row"] = batch["row"]
        return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu() for k, v in out.items()}

    def summary(self) -> str:
        """A few words for the progress bar and the log (what one image costs)."""
        return type(self).__name__

    def fit(self, train_loader: DataLoader, trainer_kwargs: dict[str, Any]) -> None:
        """Train the scorer's own parts (scorers with ``needs_fit``) on the normal training images."""
        raise NotImplementedError

    def fit_settings(self) -> dict[str, Any]:
        """What, besides G, D and the images, determines what ``fit`` learns (the encoder cache's key)."""
        raise NotImplementedError
