"""f-AnoGAN's izi_f encoder (Schlegl et al., Medical Image Analysis 2019; tSchlegl/f-AnoGAN).

An encoder E is trained once on the normal training images, with G and D frozen in eval mode, on

    loss = MSE(x, G(E(x))) + kappa·MSE(f(x), f(G(E(x))))

(f = the discriminator's feature stack). ``EncoderScorer`` scores in one forward pass per image,
with the same two terms per image:

    R(x) = mean over pixels of (x − G(E(x)))²          (column ``residual``)
    D(x) = mean over features of (f(x) − f(G(E(x))))²  (column ``discrimination``)
    A(x) = R(x) + kappa·D(x)                           (column ``score``)

These are *mean squared* errors, not the latent search's *sums of absolute* errors: the two
scorers' scores are on different scales (thresholds are fitted per run on validation anyway).
E has no BatchNorm, so an image's score never depends on the other images of its batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import nn

from anogan.scorers.base import Scorer
from anogan.utils.console import quiet_lightning
from anogan.utils.errors import ScoreDivergenceError
from anogan.utils.progress import progress_callbacks

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from anogan.models.dcgan import Discriminator, Generator


def izif_components(
    x: torch.Tensor, fx: torch.Tensor, generated: torch.Tensor, f_generated: torch.Tensor, kappa: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (score, residual, discrimination), float32 — the one place the f-AnoGAN formula lives."""
    residual = (x - generated).float().pow(2).flatten(1).mean(1)
    discrimination = (fx - f_generated).float().pow(2).flatten(1).mean(1)
    return residual + kappa * discrimination, residual, discrimination


class Encoder(nn.Module):
    """image (N×C×S×S) -> z (N×latent_dim): the discriminator's conv stack, then a linear head.

    Widths W, 2W, 4W, ... halve the size down to 4×4; no BatchNorm (see the module docstring) and
    no Tanh: the GAN's z is standard normal, not bounded.
    """

    def __init__(self, latent_dim: int = 128, channels: int = 3, image_size: int = 64, width: int = 64):
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size={image_size}: the encoder needs a power of two >= 8")
        layers, w_in = [], channels
        for i in range(int(math.log2(image_size // 4))):
            w_out = width * 2**i
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            w_in = w_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(w_in * 4 * 4, latent_dim)
        self.latent_dim = latent_dim

    @classmethod
    def for_generator(cls, generator: Generator, width: int) -> Encoder:
        """An encoder whose input is G's output shape and whose output is G's latent size."""
        with torch.no_grad():
            was = generator.training
            generator.eval()
            p = next(generator.parameters())
            shape = generator(torch.zeros(1, generator.latent_dim, 1, 1, dtype=p.dtype, device=p.device)).shape
            generator.train(was)
        return cls(generator.latent_dim, shape[1], shape[-1], width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class _EncoderTraining(L.LightningModule):
    """izi_f training of E with G and D frozen (``trainer.fit`` on the normal training images)."""

    def __init__(
        self,
        encoder: Encoder,
        generator: Generator,
        discriminator: Discriminator,
        kappa: float,
        lr: float,
        betas: Sequence[float],
    ):
        super().__init__()
        self.encoder, self.generator, self.discriminator = encoder, generator, discriminator
        self.kappa, self.lr, self.betas = kappa, lr, (float(betas[0]), float(betas[1]))

    def train(self, mode: bool = True) -> _EncoderTraining:
        super().train(mode)
        self.generator.eval()
        self.discriminator.eval()
        return self

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.encoder.parameters(), lr=self.lr, betas=self.betas)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        with torch.no_grad():
            fx = self.discriminator.features(x)
        generated = self.generator(self.encoder(x))
        loss = izif_components(x, fx, generated, self.discriminator.features(generated), self.kappa)[0].mean()
        if not torch.isfinite(loss):
            raise ScoreDivergenceError(f"the encoder loss is {loss.item()} at step {self.global_step}: lower the encoder's lr.")
        self.log("encoder/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        return loss


def train_encoder(
    encoder: Encoder,
    generator: Generator,
    discriminator: Discriminator,
    train_loader: DataLoader,
    trainer_kwargs: dict[str, Any],
    *,
    kappa: float,
    epochs: int,
    lr: float,
    betas: Sequence[float],
    seed: int,
) -> Encoder:
    """Train ``encoder`` in place with izi_f (module docstring) for ``epochs`` over ``train_loader``,
    under a Trainer built from ``trainer_kwargs`` (devices, precision, logger)."""
    for p in [*generator.parameters(), *discriminator.parameters()]:
        p.requires_grad_(False)
    encoder.requires_grad_(True)
    module = _EncoderTraining(encoder, generator, discriminator, kappa, lr, betas)
    bar = progress_callbacks("encoder training", trainer_kwargs.get("enable_progress_bar", True))
    callbacks = [*(trainer_kwargs.get("callbacks") or []), *bar]
    with quiet_lightning():
        trainer = L.Trainer(**{**trainer_kwargs, "max_epochs": epochs, "enable_checkpointing": False, "callbacks": callbacks})
    with warnings.catch_warnings():  # G and D are in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
        L.seed_everything(seed, workers=True, verbose=False)
        trainer.fit(module, train_dataloaders=train_loader)
    encoder.requires_grad_(False)
    return encoder


class EncoderScorer(Scorer):
    """f-AnoGAN's izi_f scorer: one forward pass per image (module docstring).

    Args (besides ``Scorer``'s): ``kappa`` (weight of the feature term, in training and scoring),
    ``width`` (encoder widths W, 2W, ...), ``epochs``, ``lr``, ``betas`` (encoder training).
    """

    needs_fit = True

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        kappa: float = 1.0,
        width: int = 64,
        epochs: int = 20,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        batch_size: int = 256,
        correction: str = "none",
        map_sigma: float = 1.0,
        map_features: bool = False,
        maps: bool = True,
        seed: int = 0,
    ):
        super().__init__(generator, discriminator, batch_size, correction, map_sigma, map_features, maps, seed)
        self.save_hyperparameters(ignore=["generator", "discriminator"], logger=False)
        with torch.random.fork_rng(devices=[]):  # the same E on every rank, whatever ran before
            torch.manual_seed(seed)
            self.encoder = Encoder.for_generator(generator, width)

    def summary(self) -> str:
        return "f-AnoGAN encoder, one forward pass"

    def fit_settings(self) -> dict[str, Any]:
        hp = self.hparams
        return {"width": hp.width, "kappa": hp.kappa, "epochs": hp.epochs, "lr": hp.lr, "betas": list(hp.betas), "seed": hp.seed}

    def fit(self, train_loader: DataLoader, trainer_kwargs: dict[str, Any]) -> None:
        hp = self.hparams
        train_encoder(
            self.encoder,
            self.generator,
            self.discriminator,
            train_loader,
            trainer_kwargs,
            kappa=hp.kappa,
            epochs=hp.epochs,
            lr=hp.lr,
            betas=hp.betas,
            seed=hp.seed,
        )

    @torch.no_grad()
    def infer(self, x: torch.Tensor, keys: torch.Tensor | None) -> dict[str, torch.Tensor]:
        features = self.discriminator.features
        fx = features(x)
        z = self.encoder(x)
        generated = self.generator(z)
        f_gen = features(generated)
        score, residual, discrimination = izif_components(x, fx, generated, f_gen, self.hparams.kappa)
        return {
            "score": score,
            "residual": residual,
            "discrimination": discrimination,
            "z": z.float().flatten(1),
            "steps": torch.zeros(len(x), dtype=torch.long, device=x.device),
            "generated": generated,
            "fx": fx,
            "f_generated": f_gen,
        }
