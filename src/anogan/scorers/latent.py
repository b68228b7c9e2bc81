"""AnoGAN's latent search (Schlegl et al., IPMI 2017) and its encoder-initialised variant.

For every image x, a latent z is optimised with Adam so that G(z) matches x, on a frozen G and D:

    R(x) = Σ|x − G(z)|,   D(x) = Σ|f(x) − f(G(z))|,   A(x) = (1 − alpha)·R(x) + alpha·D(x)

with f the discriminator's feature stack. Every image has its own z and its own Adam moments, G and
D are in eval mode and the loss of a batch is the sum of the images' losses, so a batch of N follows
exactly the trajectories each image would follow alone (recipe §6). Each image's starting z is drawn
from a generator seeded by ``seed`` and a hash of its pixels (``LatentMapping``), or is E(x) from an
f-AnoGAN encoder (``EncoderSearch``).

Per-image early stopping (``early_stop``): an image stops once its loss has not improved on its best
by more than ``rel_tol`` (relative) for ``patience`` consecutive steps; from then on its z and Adam
moments never change and it leaves the batch. The rule reads only the image's own loss history, so
batched scoring stays exactly equivalent to scoring one image at a time. ``steps`` reports the
steps each image used.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from anogan.scorers.base import Scorer
from anogan.scorers.encoder import Encoder, train_encoder

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from anogan.models.dcgan import Discriminator, Generator

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def initial_latents(keys: torch.Tensor, latent_dim: int, seed: int) -> torch.Tensor:
    """One standard-normal z per image (N×latent_dim, float32), seeded by (seed, image key)."""
    out = torch.empty(len(keys), latent_dim)
    for i, key in enumerate(keys.tolist()):
        gen = torch.Generator().manual_seed((int(key) ^ (seed * 0x9E3779B97F4A7C15)) % (2**63))
        out[i] = torch.randn(latent_dim, generator=gen)
    return out


def score_components(
    x: torch.Tensor, fx: torch.Tensor, generated: torch.Tensor, f_generated: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (score, residual, discrimination), float32 — the one place the AnoGAN formula lives."""
    residual = (x - generated).abs().flatten(1).sum(1, dtype=torch.float32)
    discrimination = (fx - f_generated).abs().flatten(1).sum(1, dtype=torch.float32)
    return (1.0 - alpha) * residual + alpha * discrimination, residual, discrimination


def search_copy(module: ModuleT, channels_last: bool = True) -> ModuleT:
    """A frozen eval-mode copy of a network for the search, the same function up to float rounding.

    Every Conv→BatchNorm pair inside an ``nn.Sequential`` is folded into one convolution (eval-mode
    BatchNorm is an affine map per channel), which spares the BatchNorm passes forward and backward;
    on CPU the copy is in channels_last memory format, whose convolutions are faster (`make bench`).
    """
    module = copy.deepcopy(module).eval()
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if (
                isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
                and isinstance(bn, nn.BatchNorm2d)
                and bn.running_mean is not None
                and bn.running_var is not None
                and not hasattr(conv, "parametrizations")
            ):
                seq[i] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                seq[i + 1] = nn.Identity()
    module.requires_grad_(False)
    return module.to(memory_format=torch.channels_last) if channels_last else module


class LatentMapping(Scorer):
    """AnoGAN scoring by a per-image latent search from a random start.

    Args (besides ``Scorer``'s):
        alpha: weight of the discrimination term in [0, 1] (guidebook 0.5, paper 0.1). At 0, D
            leaves the search loop (the term is still computed once at the end and reported).
        iterations: Adam steps per image (the most, with early stopping).
        lr, betas, eps: Adam's settings for z (z and its moments are float32 under any precision).
        early_stop: ``None`` or ``{"patience": int, "rel_tol": float}`` (module docstring).
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        alpha: float = 0.5,
        iterations: int = 400,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        early_stop: dict | None = None,
        batch_size: int = 128,
        correction: str = "none",
        map_sigma: float = 1.0,
        map_features: bool = False,
        maps: bool = True,
        seed: int = 0,
    ):
        super().__init__(generator, discriminator, batch_size, correction, map_sigma, map_features, maps, seed)
        self.save_hyperparameters(ignore=["generator", "discriminator"], logger=False)
        # (fingerprint, G copy, D copy): a tuple, not submodules
        self._search_nets: tuple[tuple[object, ...], Generator, Discriminator] | None = None

    def summary(self) -> str:
        stop = " (early stopping)" if self.hparams.early_stop else ""
        return f"latent search, {self.hparams.iterations} steps{stop}"

    def start(self, x: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        """The starting z of each image (N×latent_dim, float32), from its key (``ValueError`` without keys)."""
        if keys is None:
            raise ValueError("the random-start search needs each image's key (it seeds the image's starting z)")
        return initial_latents(keys.cpu(), self.latent_dim, self.hparams.seed).to(x.device)

    def infer(self, x: torch.Tensor, keys: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return self.search(x, self.start(x, keys))

    def search_networks(self, channels_last: bool) -> tuple[Generator, Discriminator]:
        """The search copies of G and D (``search_copy``), made again only when a weight or buffer
        of G or D changed: in place (``load_state_dict``), moved (``.to``) or replaced."""
        tensors = [*self.generator.parameters(), *self.generator.buffers()]
        tensors += [*self.discriminator.parameters(), *self.discriminator.buffers()]
        key: tuple[object, ...] = (channels_last, id(self.generator), id(self.discriminator))
        key += tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if self._search_nets is None or self._search_nets[0] != key:
            nets = (search_copy(self.generator, channels_last), search_copy(self.discriminator, channels_last))
            self._search_nets = (key, *nets)
        return self._search_nets[1], self._search_nets[2]

    def search(self, x: torch.Tensor, z0: torch.Tensor) -> dict[str, torch.Tensor]:
        """Optimise z for a batch (x: N×C×S×S, z0: N×latent); per-image score components, final z,
        steps used and the final G(z)."""
        hp = self.hparams
        cpu = x.device.type == "cpu"
        generator, discriminator = self.search_networks(channels_last=cpu)
        features = discriminator.features
        dtype = next(generator.parameters()).dtype  # bf16 under *-true precisions; z stays float32
        if cpu:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            fx = features(x)  # once per image, not at every step
        n = len(x)
        z = z0.detach().float().clone().view(n, -1, 1, 1)
        m, v = torch.zeros_like(z), torch.zeros_like(z)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)  # rows still searching
        best = torch.full((n,), float("inf"), device=x.device)
        stale = torch.zeros(n, dtype=torch.long, device=x.device)
        stop = hp.early_stop
        b1, b2 = hp.betas
        # alpha 0: the loss is the residual alone, so D is left out of the loop (`make bench`).
        use_d = hp.alpha > 0
        xa, fxa = x, fx
        with torch.enable_grad():
            for t in range(1, hp.iterations + 1):
                if len(active) == 0:
                    break
                za = z[active].requires_grad_(True)
                generated = generator(za.to(dtype))
                f_gen = features(generated) if use_d else fxa
                loss, _, _ = score_components(xa, fxa, generated, f_gen, hp.alpha)
                (grad,) = torch.autograd.grad(loss.sum(), za)
                with torch.no_grad():
                    # Adam, as torch.optim.Adam computes it (single-tensor path), per image.
                    ma = m[active].lerp_(grad, 1 - b1)
                    va = v[active].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    denom = (va.sqrt() / (1 - b2**t) ** 0.5).add_(hp.eps)
                    z[active] = za.detach().addcdiv(ma, denom, value=-hp.lr / (1 - b1**t))
                    m[active], v[active] = ma, va
                    steps[active] += 1
                    if stop:
                        lo = loss.detach()
                        improved = lo < best[active] * (1 - stop["rel_tol"])
                        best[active] = torch.minimum(best[active], lo)
                        stale[active] = torch.where(improved, 0, stale[active] + 1)
                        keep = stale[active] < stop["patience"]
                        if not keep.all():
                            active = active[keep]
                            xa, fxa = x[active], fx[active]
        with torch.no_grad():
            generated = generator(z.to(dtype))
            f_gen = features(generated)
            score, residual, discrimination = score_components(x, fx, generated, f_gen, hp.alpha)
        return {
            "score": score,
            "residual": residual,
            "discrimination": discrimination,
            "z": z.flatten(1),
            "steps": steps,
            "generated": generated,
            "fx": fx,
            "f_generated": f_gen,
        }


class EncoderSearch(LatentMapping):
    """The hybrid: start each image's search at z = E(x) from an f-AnoGAN izi_f encoder (trained
    first on the normal training images, ``anogan.scorers.encoder``), then refine it with a few
    latent-search steps (``iterations``, e.g. 5-50 instead of 200-400 from a random start).

    Args (besides ``LatentMapping``'s): ``encoder``: ``{"width", "kappa", "epochs", "lr", "betas"}``
    of the encoder and its training (as ``mapping=encoder``).
    """

    needs_fit = True

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        encoder: dict,
        alpha: float = 0.0,
        iterations: int = 10,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        early_stop: dict | None = None,
        batch_size: int = 128,
        correction: str = "none",
        map_sigma: float = 1.0,
        map_features: bool = False,
        maps: bool = True,
        seed: int = 0,
    ):
        super().__init__(
            generator,
            discriminator,
            alpha,
            iterations,
            lr,
            betas,
            eps,
            early_stop,
            batch_size,
            correction,
            map_sigma,
            map_features,
            maps,
            seed,
        )
        self.save_hyperparameters(ignore=["generator", "discriminator"], logger=False)
        with torch.random.fork_rng(devices=[]):  # the same E on every rank, whatever ran before
            torch.manual_seed(seed)
            self.encoder = Encoder.for_generator(generator, encoder["width"])

    def summary(self) -> str:
        return f"encoder + {self.hparams.iterations} search steps" + (" (early stopping)" if self.hparams.early_stop else "")

    def fit_settings(self) -> dict[str, Any]:
        e = self.hparams.encoder
        return {
            "width": e["width"],
            "kappa": e["kappa"],
            "epochs": e["epochs"],
            "lr": e["lr"],
            "betas": list(e["betas"]),
            "seed": self.hparams.seed,
        }

    def fit(self, train_loader: DataLoader, trainer_kwargs: dict[str, Any]) -> None:
        e = self.hparams.encoder
        train_encoder(
            self.encoder,
            self.generator,
            self.discriminator,
            train_loader,
            trainer_kwargs,
            kappa=e["kappa"],
            epochs=e["epochs"],
            lr=e["lr"],
            betas=tuple(e["betas"]),
            seed=self.hparams.seed,
        )

    def start(self, x: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(x).float()
