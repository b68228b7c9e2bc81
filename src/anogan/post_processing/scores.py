"""Input complexity and the complexity-corrected score (the calibration applies them: ``anogan.post_processing.calibration``).

A GAN's reconstruction error grows with how detailed an image is, whatever its class: on
CIFAR-10 cars (busy images) the raw AnoGAN score ranks plain anomalies (sky, sea) as *more*
normal than cars, worse than chance. Serrà et al. (ICLR 2020, "Input complexity and
out-of-distribution detection with likelihood-based generative models") subtract the image's
complexity from the model's score in the log domain: log S − log C, i.e. the score S / C, the
anomaly score per unit of image detail. The opposite case exists too: where the normal class is
plainer than what is anomalous (CIFAR-10 birds on open sky against the other classes), detail is
itself evidence, and ``times_complexity`` (S · C, log S + log C) uses it. ``mapping.correction``
picks the primary score (``auto``: whichever of none, complexity and times_complexity ranks the
*validation* split best); the raw score is always reported beside it (metrics.json, scores.csv).

A flat image has (almost) no complexity, and S / C would grow without bound (an all-black
6000×6000 image once scored 3e9). The denominator is therefore floored at ``COMPLEXITY_FLOOR``
= 1/255: the complexity of an image whose neighbouring pixels differ, on average, by one grey level
in one direction. Below that, the difference between images is quantisation noise, not detail; a
flat image's corrected score is then at most 255 × its raw score. Every image of real content has
a complexity well above it (the flattest of the 10,000 CIFAR-10 test images: 0.015), so the floor changes no
score of a natural image. ``corrected_score`` is the one place it is applied: the pipeline's
calibration, ``anogan-predict``, the Python API, the server and the exported ONNX graph all call it.
Scorer files written before the floor (1e-6 then) keep their thresholds and normals' scores: those
were computed on real images, above the floor; only images flatter than 1/255 score lower than
they did (docs/deploy.md).
"""

from __future__ import annotations

from collections.abc import Container

import torch

RECONSTRUCTION_COMPONENTS = ("residual", "discrimination")
# the per-image components of the scorers that read D (anogan.scorers.discriminator)
D_COMPONENTS = ("transformations", "dfeatures", "dpatches", "dlogit")
COMPLEXITY_FLOOR = 1.0 / 255.0  # the smallest complexity the correction divides by (module docstring)


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


def complexity(images_uint8: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, in [0, 2]: the simplest measure of
    input complexity (low = plain image). Also a baseline that knows nothing of the normal class.
    Float64 (N,), computed ``chunk`` images at a time: exact up to summation order (about 1e-16
    relative), so the exported graph, which computes it from its input
    (``anogan.post_processing.calibration.complexity_of_model_input``), gives the same values."""
    if not len(images_uint8):
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([neighbour_difference(part.double() / 255.0) for part in images_uint8.split(chunk)])


def corrected_score(raw: torch.Tensor, image_complexity: torch.Tensor) -> torch.Tensor:
    """Raw score per unit of complexity (float64), the complexity floored at ``COMPLEXITY_FLOOR``:
    a flat image (complexity 0) scores 255 × its raw score, not an unbounded number."""
    return raw.double() / image_complexity.double().clamp_min(COMPLEXITY_FLOOR)


def times_complexity_score(raw: torch.Tensor, image_complexity: torch.Tensor) -> torch.Tensor:
    """Raw score times complexity (float64): busier images score higher (log S + log C)."""
    return raw.double() * image_complexity.double()
