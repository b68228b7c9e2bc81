"""Input complexity and the complexity-corrected score (the calibration applies them: ``anogan.calibration``).

A GAN's reconstruction error grows with how detailed an image is, whatever its class: on
CIFAR-10 cars (busy images) the raw AnoGAN score ranks plain anomalies (sky, sea) as *more*
normal than cars, worse than chance. Serrà et al. (ICLR 2020, "Input complexity and
out-of-distribution detection with likelihood-based generative models") subtract the image's
complexity from the model's score in the log domain: log S − log C, i.e. the score S / C, the
anomaly score per unit of image detail. ``mapping.correction`` picks the primary score (``auto``:
whichever ranks the *validation* split better, since the correction helps busy normal classes and
hurts plain ones such as airplane or ship); the raw score is always reported beside it
(metrics.json, scores.csv).
"""

from __future__ import annotations

from collections.abc import Container

import torch

CORRECTIONS = ("none", "complexity", "auto")
RECONSTRUCTION_COMPONENTS = ("residual", "discrimination")
# the per-image components of the scorers that read D (anogan.scorers.discriminator)
D_COMPONENTS = ("transformations", "dfeatures", "dpatches", "dlogit")


def score_components(results: Container[str]) -> list[str]:
    """The named per-image score components among the keys of ``results`` (scorer outputs or a
    scores table), in a fixed order: the reconstruction scorers' ``residual``/``discrimination``,
    the D readers' ``transformations``/``dfeatures``/``dpatches`` (columns of scores.csv)."""
    return [k for k in (*RECONSTRUCTION_COMPONENTS, *D_COMPONENTS) if k in results]


def neighbour_difference(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontal plus vertical neighbours of N×C×H×W images with
    values in [0, 1]; shape (N,), in [0, 2]. The one formula behind ``complexity``."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def complexity(images_uint8: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, in [0, 2]: the simplest measure of
    input complexity (low = plain image). Also a baseline that knows nothing of the normal class."""
    return neighbour_difference(images_uint8.float() / 255.0)


def corrected_score(raw: torch.Tensor, image_complexity: torch.Tensor) -> torch.Tensor:
    """Raw score per unit of complexity (float64); a flat image (complexity 0) gets the largest."""
    return raw.double() / image_complexity.double().clamp_min(1e-6)
