"""Stage 1: the GAN as a LightningModule with manual optimization.

Per batch: one discriminator (critic) step; every ``critic_steps``-th batch (and on an epoch's last
batch) then ``g_steps`` generator steps with the same z. The defaults (``objective=bce``,
``critic_steps=1``, ``g_steps=3``) are the guidebook's ``train_G_D``: one D step on
BCE(D(x), 1) + BCE(D(G(z)), 0), then 3 G steps on BCE(D(G(z)), 1).

Options (``conf/model/dcgan.yaml``; docs/gan_training.md says what each does and what it measured):

* ``objective=wgan_gp``: the Wasserstein loss with gradient penalty (Gulrajani et al., NeurIPS 2017,
  "Improved training of Wasserstein GANs", Algorithm 1; f-AnoGAN's choice): critic loss
  E[D(G(z))] − E[D(x)] + λ·E[(‖∇D(x̂)‖₂ − 1)²] with x̂ = εx + (1 − ε)G(z), ε ~ U(0, 1) per image,
  λ = ``gp_weight``; generator loss −E[D(G(z))]. The paper's n_critic = 5 is ``critic_steps=5``
  with ``g_steps=1`` (each critic step on a fresh real batch), Adam lr 1e-4, betas (0, 0.9):
  ``experiment=cifar_car_cpu_wgan_gp``. ``gp_weight > 0`` with ``objective=bce`` adds the same
  penalty to the BCE discriminator loss.
* ``d_norm`` / ``spectral_norm``: the discriminator's normalisation (see ``dcgan.py``).
* ``diffaugment``: DiffAugment (Zhao et al. 2020) on real and fake before D, in D and G steps.
* ``ema_decay``: an exponential moving average of G's weights, updated after every G step
  (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``; BatchNorm running
  statistics are copied from G, not averaged). ``scoring_generator`` is then the EMA copy: it makes
  the sample grids, is what checkpoint selection scores and what the run saves as its generator.
* ``self_supervised`` (a set of ``transforms.py``: ``rotations`` or ``geotrans``): D gets a head
  that names the transformation an image was given (Chen et al., CVPR 2019, "Self-Supervised GANs
  via Auxiliary Rotation Loss"): D's loss += ``ss_weight_d`` (β) · CE on real images, G's loss +=
  ``ss_weight_g`` (α) · CE on generated ones (compare_gan's defaults β = 1, α = 0.2). See
  ``_transform_loss`` for which images and how many transformations per batch.
* ``nda``: negative data augmentation (Sinha et al., ICLR 2021; ``nda.py``): D's fake distribution is
  (1 − w)·p_G + w·P̄, P̄ = jigsaw / cutout / rotated copies of the real batch, w = ``nda_weight``;
  ``_d_loss`` has the formula. D's own logit then scores anomalies (``mapping=dlogit``).
* ``health``: thresholds of the one-line warning of a failed GAN (mode collapse, D overpowering G;
  ``health.py``), checked at every epoch's end.
* ``selection``: every N epochs, a validation-only criterion keeps the best G/D (``anogan.engine.selection``:
  a callback the pipeline attaches; the settings are checked here).
* ``divergence``: training stops with ``DivergenceError`` when a loss is NaN/inf or
  |loss| > ``max_abs_loss``, or (BCE only) when D has separated real from generated images
  (epoch means D(x) > 1 − ``saturation`` and D(G(z)) < ``saturation``) for ``saturated_epochs``
  epochs in a row, where G's gradient vanishes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from anogan.config.gan_options import DEFAULT_DIVERGENCE, DEFAULT_HEALTH, check_gan_options, parse_nda, parse_policy
from anogan.models.augment import diff_augment
from anogan.models.dcgan import Discriminator, Generator
from anogan.models.health import HealthMonitor, diversity_ratio
from anogan.models.nda import negatives
from anogan.models.transforms import apply_one_each, balanced_labels, transform_count
from anogan.utils.errors import DivergenceError

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.utilities.types import OptimizerLRScheduler
    from torch.optim.lr_scheduler import LRScheduler


log = logging.getLogger(__name__)


def gradient_penalty(
    critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """E[(‖∇ₓ̂ D(x̂)‖₂ − 1)²] over the batch, x̂ = εx + (1 − ε)x̃ with ε ~ U(0, 1) per image
    (Gulrajani et al. 2017, eq. 3). real, fake: N×C×H×W; returns a scalar with a graph to D's
    weights (``create_graph``), so it can be minimised. ``generator`` seeds ε (CPU generator)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).float().norm(dim=1) - 1.0) ** 2).mean()


class GAN(L.LightningModule):
    """G and D trained on normal images; ``scoring_generator`` is the G the run scores with.

    Raises ``UserError`` (via ``check_gan_options``) for an invalid option combination.
    """

    if TYPE_CHECKING:  # save_hyperparameters stores an AttributeDict (Lightning declares a wider type)

        @property
        def hparams(self) -> AttributeDict: ...

    def __init__(
        self,
        latent_dim: int = 128,
        channels: int = 3,
        image_size: int = 64,
        g_width: int = 64,
        d_width: int = 64,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        weight_decay: float = 1e-5,
        g_steps: int = 3,
        scheduler: str | None = "cosine_warm_restarts",
        scheduler_t0: int = 15,
        scheduler_t_mult: int = 2,
        n_samples: int = 64,
        sample_seed: int = 1234,
        objective: str = "bce",
        gp_weight: float = 0.0,
        critic_steps: int = 1,
        d_norm: str = "batch",
        spectral_norm: bool = False,
        diffaugment: str | None = None,
        ema_decay: float | None = None,
        self_supervised: str | None = None,
        ss_weight_d: float = 1.0,
        ss_weight_g: float = 0.2,
        nda: str | None = None,
        nda_weight: float = 0.5,
        divergence: dict | None = None,
        health: dict | None = None,
        selection: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_gan_options(self.hparams)
        self.automatic_optimization = False
        self.generator = Generator(latent_dim, channels, image_size, g_width)
        self.discriminator = Discriminator(
            channels,
            image_size,
            d_width,
            norm=d_norm,
            spectral_norm=spectral_norm,
            transform_classes=transform_count(self_supervised) if self_supervised else 0,
        )
        self.generator_ema: AveragedModel | None = None
        if ema_decay is not None:
            self.generator_ema = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=False)
            self.generator_ema.requires_grad_(False)
        self.augment_policy = parse_policy(diffaugment)
        self.nda_transforms = parse_nda(nda)
        self.divergence = dict(divergence or DEFAULT_DIVERGENCE)
        self._saturated_epochs = 0
        self.health_monitor = HealthMonitor(health or DEFAULT_HEALTH, bce=objective == "bce")
        self._health_reals: torch.Tensor | None = None  # the first n_samples training images (health check)
        self._saved_epoch: int | None = None  # epoch of the last checkpoint written (for DivergenceError)
        # Fixed noise: the sample grid of every epoch shows the same z, so epochs compare.
        noise = torch.randn(n_samples, latent_dim, 1, 1, generator=torch.Generator().manual_seed(sample_seed))
        self.register_buffer("fixed_noise", noise, persistent=False)

    @property
    def scoring_generator(self) -> Generator:
        """The EMA generator when ``ema_decay`` is set, else the trained one."""
        return self.generator if self.generator_ema is None else cast(Generator, self.generator_ema.module)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scoring_generator(z)

    def setup(self, stage: str) -> None:
        # On CPU, oneDNN's convolutions are faster in channels_last memory format: +17% images/s
        # for a training step at 32 px on 2 cores (+15% in bf16; see `make bench`). Only the layout
        # of weights and activations changes, not the maths. Done before the optimizers and DDP exist.
        if stage == "fit" and self.trainer.strategy.root_device.type == "cpu":
            self.to(memory_format=torch.channels_last)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        hp = self.hparams
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if not hp.scheduler:
            return [opt_g, opt_d]
        if hp.scheduler != "cosine_warm_restarts":
            raise ValueError(f"model.scheduler={hp.scheduler!r} is not supported; use cosine_warm_restarts or null")
        scheds = [
            torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=hp.scheduler_t0, T_mult=hp.scheduler_t_mult)
            for o in (opt_g, opt_d)
        ]
        return [opt_g, opt_d], scheds

    @staticmethod
    def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, target, dtype=torch.float32))

    def _d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor, d_negative: torch.Tensor | None = None) -> torch.Tensor:
        """D's adversarial loss. With negatives (``nda``; w = ``nda_weight``): BCE(D(x), 1) +
        (1 − w)·BCE(D(G(z)), 0) + w·BCE(D(nda(x)), 0); wgan_gp: (1 − w)·E[D(G(z))] + w·E[D(nda(x))] − E[D(x)]."""
        wgan = self.hparams.objective == "wgan_gp"

        def fake_term(d: torch.Tensor) -> torch.Tensor:
            return d.float().mean() if wgan else self._bce(d, 0.0)

        fake = fake_term(d_fake)
        if d_negative is not None:
            w = float(self.hparams.nda_weight)
            fake = (1.0 - w) * fake + w * fake_term(d_negative)
        return fake - d_real.float().mean() if wgan else self._bce(d_real, 1.0) + fake

    def _g_loss(self, d_gen: torch.Tensor) -> torch.Tensor:
        if self.hparams.objective == "wgan_gp":
            return -d_gen.float().mean()
        return self._bce(d_gen, 1.0)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.augment_policy) if self.augment_policy else x

    def _transform_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The self-supervised loss of a batch (Chen et al. 2019): each image gets one transformation
        of the set, drawn so that all T are used equally often (``balanced_labels``), and D's head
        must name it. Returns (mean cross-entropy, with a graph; accuracy of the head, detached).

        The images are the clean ones, not DiffAugment'ed: the scorers that read the head see clean
        images, and the transformation is already an augmentation D cannot undo (DiffAugment's own
        translation is not a transformation to be named). One transformation per image, not all T,
        keeps the cost at one extra D pass per loss term (docs/gan_training.md, measured)."""
        labels = balanced_labels(images.shape[0], self.hparams.self_supervised).to(images.device)
        logits = self.discriminator.transform_logits(apply_one_each(images, labels, self.hparams.self_supervised)).float()
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return F.cross_entropy(logits, labels), accuracy

    def _kept(self) -> str:
        """What survives a stop now, in words (for DivergenceError)."""
        trainer = self._trainer
        callbacks = trainer.checkpoint_callbacks if trainer else []
        paths = [Path(cb.best_model_path) for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.best_model_path]
        paths = [p for p in paths if p.is_file()]
        if paths and self._saved_epoch is not None:
            return f"kept: {paths[0]}, written at the end of epoch {self._saved_epoch} (no gan/ folder is written for this run)"
        return "nothing is kept: no checkpoint was written before this point, and no gan/ folder is written for this run"

    def _diverged(self, what: str, fix: str = "lower model.lr, or try trainer.precision=32") -> DivergenceError:
        return DivergenceError(
            f"{what} at epoch {self.current_epoch}, step {self.global_step}: the GAN diverged; {self._kept()}. Fix: {fix}."
        )

    def _check_loss(self, name: str, value: torch.Tensor) -> None:
        v = float(value.detach())
        if v != v or abs(v) == float("inf"):
            raise self._diverged(f"{name} is {v}")
        if abs(v) > self.divergence["max_abs_loss"]:
            raise self._diverged(f"|{name}| = {abs(v):.3g} > model.divergence.max_abs_loss={self.divergence['max_abs_loss']:g}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._saved_epoch = checkpoint.get("epoch")

    def training_step(self, batch: dict, batch_idx: int) -> None:
        hp = self.hparams
        opt_g, opt_d = cast("list[LightningOptimizer]", self.optimizers())  # configure_optimizers: [G's, D's]
        x = batch["image"]
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # as the weights (see setup)
        z = torch.randn(x.shape[0], hp.latent_dim, 1, 1, device=x.device, dtype=x.dtype)
        have = 0 if self._health_reals is None else len(self._health_reals)
        if have < hp.n_samples:  # the real images the samples' diversity is compared with
            more = x[: hp.n_samples - have].detach().float().cpu().contiguous()
            self._health_reals = more if self._health_reals is None else torch.cat([self._health_reals, more])
        values: dict[str, torch.Tensor] = {}
        loss_d, d_real, d_fake = self._discriminator_step(x, z, opt_d, values)
        # G steps after every critic_steps-th D step; an epoch's last batch too, so that a short
        # epoch (or limit_train_batches) never leaves G untrained.
        last = batch_idx + 1 == self.trainer.num_training_batches
        if (batch_idx + 1) % hp.critic_steps == 0 or last:
            self._generator_steps(z, opt_g, values)
        wgan = hp.objective == "wgan_gp"  # critic values are unbounded scores, not probabilities
        values["train/loss_d"] = loss_d.detach()
        values["train/d_real"] = (d_real if wgan else torch.sigmoid(d_real)).detach().float().mean()
        values["train/d_fake"] = (d_fake if wgan else torch.sigmoid(d_fake)).detach().float().mean()
        # Step values are this process's own (no communication at every step); epoch means are
        # averaged over all DDP processes once per epoch (sync_dist on an epoch-only log).
        # Everything goes to the logger; the progress bar shows the two losses only (it fits 100 columns).
        self.log_dict({f"{k}_step": v for k, v in values.items()}, on_step=True, on_epoch=False)
        self.log_dict({f"{k}_epoch": v for k, v in values.items()}, on_step=False, on_epoch=True, sync_dist=True)
        bar = {name: values[key] for name, key in (("d", "train/loss_d"), ("g", "train/loss_g")) if key in values}
        self.log_dict(bar, on_step=True, on_epoch=False, prog_bar=True, logger=False)

    def _discriminator_step(
        self, x: torch.Tensor, z: torch.Tensor, opt_d: LightningOptimizer, values: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One D step on the real batch ``x`` and G(``z``) (plus negatives, gradient penalty and the
        self-supervised term where configured, their values added to ``values``). Returns (D's loss, D(x), D(G(z)))."""
        hp = self.hparams
        self.toggle_optimizer(opt_d)  # G's weights need no gradients here
        real_in, fake_in = self._augment(x), self._augment(self.generator(z).detach())
        d_real = self.discriminator(real_in)
        d_fake = self.discriminator(fake_in)
        d_negative = None
        if self.nda_transforms:  # real images made implausible, shown to D as fake (nda.py)
            d_negative = self.discriminator(self._augment(negatives(x, self.nda_transforms)))
        loss_d = self._d_loss(d_real, d_fake, d_negative)
        if d_negative is not None:
            wgan_nda = hp.objective == "wgan_gp"
            values["train/d_negative"] = (d_negative if wgan_nda else torch.sigmoid(d_negative)).detach().float().mean()
        if hp.gp_weight > 0:
            penalty = gradient_penalty(self.discriminator, real_in, fake_in)
            loss_d = loss_d + hp.gp_weight * penalty
            values["train/gradient_penalty"] = penalty.detach()
        if hp.self_supervised and hp.ss_weight_d > 0:
            ss_real, accuracy = self._transform_loss(x)
            loss_d = loss_d + hp.ss_weight_d * ss_real
            values["train/ss_loss_real"], values["train/ss_accuracy_real"] = ss_real.detach(), accuracy
        self._check_loss("discriminator loss", loss_d)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        return loss_d, d_real, d_fake

    def _generator_steps(self, z: torch.Tensor, opt_g: LightningOptimizer, values: dict[str, torch.Tensor]) -> None:
        """``model.g_steps`` G steps on ``z`` (the EMA generator updated after each); their last loss
        (and self-supervised term) added to ``values``."""
        hp = self.hparams
        self.toggle_optimizer(opt_g)
        for _ in range(hp.g_steps):
            generated = self.generator(z)
            d_gen = self.discriminator(self._augment(generated))
            loss_g = self._g_loss(d_gen)
            if hp.self_supervised and hp.ss_weight_g > 0:
                ss_fake, _ = self._transform_loss(generated)
                loss_g = loss_g + hp.ss_weight_g * ss_fake
                values["train/ss_loss_fake"] = ss_fake.detach()
            self._check_loss("generator loss", loss_g)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
            if self.generator_ema is not None:
                self.generator_ema.update_parameters(self.generator)
        self.untoggle_optimizer(opt_g)
        values["train/loss_g"] = loss_g.detach()

    def on_train_start(self) -> None:
        # seed_everything gives every DDP process the same seed, so each would draw the same z and
        # the global batch would hold world_size copies of the same fakes: offset the torch seed of
        # ranks > 0. (Weights need no care: DDP copies rank 0's; the DistributedSampler has its own seed.)
        if self.global_rank:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def on_train_epoch_end(self) -> None:
        for sched in cast("list[LRScheduler]", self.lr_schedulers() or []):  # G's and D's, or none
            sched.step()
        # the epoch means are synced across ranks (see training_step): every rank stops together
        metrics = self.trainer.callback_metrics
        self._check_health(metrics)
        for key in ("train/loss_d_epoch", "train/loss_g_epoch"):
            if key in metrics:
                self._check_loss(key, metrics[key])
        patience = self.divergence["saturated_epochs"]
        if self.hparams.objective != "bce" or patience is None or "train/d_real_epoch" not in metrics:
            return
        s = self.divergence["saturation"]
        real, fake = float(metrics["train/d_real_epoch"]), float(metrics["train/d_fake_epoch"])
        self._saturated_epochs = self._saturated_epochs + 1 if (real > 1 - s and fake < s) else 0
        if self._saturated_epochs >= patience:
            raise self._diverged(
                f"D saturated: mean D(x) > {1 - s:g} and mean D(G(z)) < {s:g} for {patience} epochs in a row "
                f"(model.divergence.saturated_epochs; now {real:.4f} / {fake:.4f}), so G's gradient vanishes",
                fix="try model.diffaugment, model.spectral_norm=true or experiment=cifar_car_cpu_wgan_gp, or raise model.divergence.saturated_epochs",
            )

    def _check_health(self, metrics: Mapping) -> None:
        """One epoch of the health check (``health.py``): the fixed-noise samples' diversity against the
        real images', D(x), D(G(z)) and G's loss; a warning line (rank 0) when a failure is first flagged."""
        diversity = None
        if self._health_reals is not None and len(self._health_reals) >= 2:
            diversity = diversity_ratio(self.sample().float(), self._health_reals)
            self.log("train/sample_diversity", diversity, on_epoch=True, sync_dist=True)

        def value(key: str) -> float | None:
            return float(metrics[key]) if key in metrics else None

        before = self.health_monitor.flags()
        new = self.health_monitor.update(
            self.current_epoch, diversity, value("train/d_real_epoch"), value("train/d_fake_epoch"), value("train/loss_g_epoch")
        )
        if self.global_rank == 0 and new:
            log.warning("%s", self.health_monitor.warning())
        elif self.global_rank == 0 and before and not self.health_monitor.flags():
            log.info("the GAN recovered at epoch %d (no longer flagged: %s)", self.current_epoch, ", ".join(before))

    def health_summary(self) -> dict:
        """``HealthMonitor.summary()`` of this training (saved in ``gan.json``; ``gan_health`` in metrics.json)."""
        return self.health_monitor.summary()

    @torch.no_grad()
    def sample(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """Images (N×C×S×S in [−1, 1]) from the fixed noise (or ``z``) with the scoring generator in eval mode."""
        generator = self.scoring_generator
        was_training = generator.training
        generator.eval()
        images = generator(self.fixed_noise if z is None else z)
        generator.train(was_training)
        return images
