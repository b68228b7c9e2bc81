"""A GAN that failed says so: mode collapse and D overpowering G, in one warning line.

Two failures make every GAN-based score meaningless, and both are visible from what training
already has at hand:

* **mode collapse**: G maps every z to (nearly) the same image. Measured as the mean pairwise L2
  distance of the fixed-noise samples (the epoch's sample grid, ``GAN.fixed_noise``) over the mean
  pairwise L2 distance of as many real training images, both average-pooled to 8×8 first: ~1 when
  the samples vary as much as the data, 0 when they are all the same image. The pooling compares
  layouts, not pixels: a G that draws the same noisy checkerboard for every z (seen on a texture
  set) has samples that differ pixel by pixel (0.16 of the real images' pixel distance) but not
  in their 8×8 layout (0.04), while a healthy car GAN scores ~0.5 either way (docs/gan_training.md).
  Flagged below ``collapse_ratio``.
* **D overpowering G** (``objective=bce`` only: a WGAN critic's values are not probabilities):
  the epoch means D(x) > ``d_real_above`` and D(G(z)) < ``d_fake_below``, with G's epoch loss
  now higher than its lowest epoch loss so far (G is losing ground, not just starting out).

Either is flagged when it holds for ``epochs`` epochs in a row (an untrained G of the first
epochs is not a collapse). ``HealthMonitor`` follows the epochs; ``GAN`` logs the warning when a
failure is first flagged and keeps the summary (``summary()``) that ``gan.json`` (and so every
cache entry) and the run's ``metrics.json`` (``gan_health``) carry, with the TensorBoard text
``gan/health``. ``model.divergence`` is the hard stop; this is the warning that comes well before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from anogan.config.gan_options import DEFAULT_HEALTH


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance over all pairs i < j of the flattened images (N×..., N >= 2), in fp64."""
    flat = images.detach().double().flatten(1).cpu()
    if len(flat) < 2:
        raise ValueError("mean_pairwise_distance needs at least 2 images")
    return float(torch.pdist(flat).mean())


def diversity_ratio(samples: torch.Tensor, reals: torch.Tensor, grid: int = 8) -> float:
    """Mean pairwise distance of the generated ``samples`` (N×C×H×W) over that of the real images, both
    average-pooled to ``grid``×``grid`` (``adaptive_avg_pool2d``), on the same number of each (the
    smaller count): ~1 for samples as varied as the data, 0 for identical samples."""
    n = min(len(samples), len(reals))
    pooled = [F.adaptive_avg_pool2d(x[:n].detach().double().cpu(), grid) for x in (samples, reals)]
    real = mean_pairwise_distance(pooled[1])
    return mean_pairwise_distance(pooled[0]) / real if real > 0 else float("nan")


class HealthMonitor:
    """Follows a GAN's epochs (``update``) and says when it has failed (``flags``, ``warning``).

    ``thresholds``: the ``model.health`` keys (``DEFAULT_HEALTH``); ``bce``: whether D's outputs are
    probabilities (the overpowering check runs only then)."""

    def __init__(self, thresholds: Mapping | None = None, bce: bool = True):
        self.t = dict(thresholds or DEFAULT_HEALTH)
        self.bce = bce
        self.history: list[dict] = []

    def update(
        self, epoch: int, diversity: float | None, d_real: float | None, d_fake: float | None, loss_g: float | None
    ) -> list[str]:
        """Record one epoch; return the failures newly flagged by it (``"collapse"``, ``"overpowered"``)."""
        before = set(self.flags())
        self.history.append({"epoch": epoch, "diversity": diversity, "d_real": d_real, "d_fake": d_fake, "loss_g": loss_g})
        return [f for f in self.flags() if f not in before]

    def _streak(self, bad: Callable[[dict], bool]) -> list[dict]:
        """The last ``epochs`` epochs when every one of them is ``bad``, else []."""
        last = self.history[-self.t["epochs"] :]
        return last if len(last) == self.t["epochs"] and all(bad(h) for h in last) else []

    def _collapse(self) -> list[dict]:
        return self._streak(lambda h: h["diversity"] is not None and h["diversity"] < self.t["collapse_ratio"])

    def _overpowered(self) -> list[dict]:
        if not self.bce:
            return []
        streak = self._streak(
            lambda h: (
                None not in (h["d_real"], h["d_fake"], h["loss_g"])
                and h["d_real"] > self.t["d_real_above"]
                and h["d_fake"] < self.t["d_fake_below"]
            )
        )
        return streak if streak and streak[-1]["loss_g"] > self._lowest_loss_g() else []

    def _lowest_loss_g(self) -> float:
        return min(h["loss_g"] for h in self.history if h["loss_g"] is not None)

    def flags(self) -> list[str]:
        """The failures that hold now: ``"collapse"`` and/or ``"overpowered"``."""
        return [name for name, streak in (("collapse", self._collapse()), ("overpowered", self._overpowered())) if streak]

    def warning(self) -> str | None:
        """One line saying what failed, with the numbers and what to try; None when healthy."""
        parts, tries = [], []
        t = self.t
        if streak := self._collapse():
            parts.append(
                f"mode collapse (the fixed-noise samples' mean pairwise distance (8x8 pooled) is {streak[-1]['diversity']:.3f} x that of "
                f"real training images, below model.health.collapse_ratio={t['collapse_ratio']:g}, for {len(streak)} epochs)"
            )
            tries += ["model.diffaugment='color,translation,cutout'", "more training images or epochs"]
        if streak := self._overpowered():
            parts.append(
                f"D overpowering G (mean D(x) {streak[-1]['d_real']:.3f} > {t['d_real_above']:g} and D(G(z)) "
                f"{streak[-1]['d_fake']:.3f} < {t['d_fake_below']:g} for {len(streak)} epochs, G loss up from "
                f"{self._lowest_loss_g():.2f} to {streak[-1]['loss_g']:.2f})"
            )
            tries += ["model.diffaugment='color,translation,cutout'", "model.spectral_norm=true with model.d_norm=none"]
        if not parts:
            return None
        tries += ["a lower model.lr", "the WGAN-GP options of experiment=cifar_car_cpu_wgan_gp"]
        return (
            f"the GAN failed at epoch {self.history[-1]['epoch']}: {' and '.join(parts)}; scores and maps that use G "
            f"(latent search, encoder) are not to be trusted, those that read only D (transformations, dfeatures) judge by "
            f"their validation AUROC. Try {', '.join(dict.fromkeys(tries))}, and look at the sample grids (tensorboard gan/samples)."
        )

    def summary(self) -> dict:
        """What ``gan.json`` and ``metrics.json`` (``gan_health``) keep: the verdict, the warning line,
        the thresholds and the last epochs' values."""
        return {
            "ok": not self.flags(),
            "flags": self.flags(),
            "warning": self.warning(),
            "thresholds": dict(self.t),
            "last_epochs": self.history[-max(self.t["epochs"], 1) :],
        }
