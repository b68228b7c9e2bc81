"""Stage 2, alternative scorer: f-AnoGAN's izi_f encoder (Schlegl et al. 2019) as a LightningModule.

Instead of searching a latent per image (``LatentMapping``), an encoder E is trained once on the
normal training images, with G and D frozen and in eval mode, on

    loss = MSE(x, G(E(x))) + kappa·MSE(f(x), f(G(E(x))))

(f = the discriminator's feature stack). Scoring is one forward pass per image, with the same two
terms taken per image, as in f-AnoGAN:

    R(x) = mean over pixels of (x − G(E(x)))²      (column ``residual``)
    D(x) = mean over features of (f(x) − f(G(E(x))))²   (column ``discrimination``)
    A(x) = R(x) + kappa·D(x)                       (column ``score``)

so the training loss of a batch is exactly the mean of its images' scores. Note these are *mean
squared* errors, not the latent search's *sums of absolute* errors: scores of the two scorers are on
different scales and are not comparable (thresholds are refitted per run on validation anyway).

E has no BatchNorm, so an image's score never depends on the other images of its batch. Scoring
runs with ``trainer.test`` and fills ``self.results`` exactly like ``LatentMapping`` (same keys,
one entry per row, sorted by row, gathered and deduplicated across DDP ranks by the same code).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn

from anogan.models.dcgan import _n_doublings
from anogan.gan_store import atomic_save
from anogan.models.latent_mapping import ScoreCollector, ScoreDivergenceError, check_finite_scores

ENCODER_ARCH_KEYS = ("latent_dim", "channels", "image_size", "width")


def izif_components(
    x: torch.Tensor, fx: torch.Tensor, generated: torch.Tensor, f_generated: torch.Tensor, kappa: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (score, residual, discrimination) — the one place the f-AnoGAN formula lives."""
    residual = (x - generated).float().pow(2).flatten(1).mean(1)
    discrimination = (fx - f_generated).float().pow(2).flatten(1).mean(1)
    return residual + kappa * discrimination, residual, discrimination


class Encoder(nn.Module):
    """image (N×C×S×S) -> z (N×latent_dim): the discriminator's conv stack, then a linear head.

    Widths W, 2W, 4W, ... halve the size down to 4×4 (like ``Discriminator``); no BatchNorm (see the
    module docstring) and no Tanh: the GAN's z is standard normal, not bounded.
    """

    def __init__(self, latent_dim: int = 128, channels: int = 3, image_size: int = 64, width: int = 64):
        super().__init__()
        k = _n_doublings(image_size)
        layers, w_in = [], channels
        for i in range(k):
            w_out = width * 2**i
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            w_in = w_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(w_in * 4 * 4, latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class EncoderScorer(ScoreCollector, L.LightningModule):
    """Fit with ``trainer.fit`` on normal images, then score with ``trainer.test``."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        channels: int = 3,
        image_size: int = 64,
        width: int = 64,
        kappa: float = 1.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        seed: int = 0,
    ):
        super().__init__()
        # logger=False: the run's logger keeps the GAN's hparams; the run logs its own at the end.
        self.save_hyperparameters(ignore=["generator", "discriminator"], logger=False)
        self.generator = generator
        self.discriminator = discriminator
        for p in list(generator.parameters()) + list(discriminator.parameters()):
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the same E on every rank, whatever ran before
            torch.manual_seed(seed)
            self.encoder = Encoder(generator.latent_dim, channels, image_size, width)
        self.train()
        self._outputs: list[dict] = []

    def train(self, mode: bool = True):
        # Only E ever trains: G and D stay in eval mode (BatchNorm on running statistics).
        super().train(mode)
        self.generator.eval()
        self.discriminator.eval()
        return self

    def configure_optimizers(self):
        return torch.optim.Adam(self.encoder.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas))

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """E(x), G(E(x)) and the per-image score components (differentiable w.r.t. E)."""
        features = self.discriminator.features
        with torch.no_grad():
            fx = features(x)
        z = self.encoder(x)
        generated = self.generator(z)
        score, residual, discrimination = izif_components(x, fx, generated, features(generated), self.hparams.kappa)
        return {"score": score, "residual": residual, "discrimination": discrimination, "z": z}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.components(batch["image"])["score"].mean()
        if not torch.isfinite(loss):
            raise ScoreDivergenceError(f"the encoder loss is {loss.item()} at step {self.global_step}: lower mapping.lr.")
        self.log("encoder/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        return loss

    @torch.no_grad()
    def score_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image score, residual, discrimination and z = E(x), like ``LatentMapping.search``."""
        out = {k: v.detach() for k, v in self.components(x).items()}
        check_finite_scores(out["score"], "the encoder or GAN weights are broken.")
        return out

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.collect(self.score_batch(batch["image"]), batch)


# ---------------------------------------------------------------------- saving / loading E
def save_encoder(encoder: Encoder, hparams: dict, folder: Path) -> Path:
    """``folder/encoder.pt`` (plain state dict) and ``folder/encoder.json`` (arch + kappa)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save(encoder.state_dict(), folder / "encoder.pt")
    meta = {"latent_dim": encoder.latent_dim, **{k: hparams[k] for k in ("channels", "image_size", "width", "kappa")}}
    (folder / "encoder.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_encoder(folder: Path) -> tuple[Encoder, dict]:
    folder = Path(folder)
    meta = json.loads((folder / "encoder.json").read_text())
    encoder = Encoder(*(meta[k] for k in ENCODER_ARCH_KEYS))
    encoder.load_state_dict(torch.load(folder / "encoder.pt", map_location="cpu", weights_only=True))
    return encoder, meta


def fit_encoder(cfg, generator: nn.Module, discriminator: nn.Module, datamodule, logger=False) -> EncoderScorer:
    """Train E on ``datamodule.train_dataloader()`` (settings from ``cfg.mapping`` / ``cfg.trainer``)
    and save it in ``<run folder>/encoder``."""
    from hydra.utils import instantiate

    mp = cfg.mapping
    scorer = EncoderScorer(
        generator,
        discriminator,
        channels=cfg.data.channels,
        image_size=cfg.data.image_size,
        width=mp.width,
        kappa=mp.kappa,
        lr=mp.lr,
        betas=tuple(mp.betas),
        seed=cfg.seed,
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer, max_epochs=mp.epochs, logger=logger, callbacks=[], enable_checkpointing=False
    )
    with warnings.catch_warnings():  # G and D are in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
        trainer.fit(scorer, train_dataloaders=datamodule.train_dataloader())
    if trainer.is_global_zero:
        save_encoder(scorer.encoder, dict(scorer.hparams), Path(cfg.paths.output_dir) / "encoder")
    trainer.strategy.barrier()
    return scorer
