"""Localisation metrics on anomaly maps and ground-truth masks (MVTec AD protocol), and image
AUROC per defect type.

- Pixel AUROC: every pixel of every image is one sample (torchmetrics ``binary_auroc``).
- AUPRO: Bergmann, Batzner, Fauser, Sattlegger & Steger, "The MVTec Anomaly Detection Dataset: A
  Comprehensive Real-World Dataset for Unsupervised Anomaly Detection", IJCV 129, 2021, sec. 4.2:
  the per-region overlap (PRO, the mean over ground-truth regions of the fraction of the region
  flagged) as a function of the pixel false-positive rate, integrated from FPR 0 to ``fpr_limit``
  (0.3) and divided by ``fpr_limit`` so that a perfect map scores 1.

Shapes: ``maps`` float (N, H, W), higher = more anomalous; ``masks`` (N, H, W) in {0, 1}
(1 = defect). A region is a connected component (8-connectivity) of one image's mask; an image
with an all-zero mask contributes only to the false-positive rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import torch
from scipy import ndimage

from anogan.metrics.image import trapezoid_auroc
from anogan.metrics.stats import ScoresLike, auroc
from anogan.utils.errors import MaskError

# Anomaly maps or masks, (N, H, W): a tensor or an array.
MapsLike: TypeAlias = "torch.Tensor | np.ndarray"


def _check(maps: MapsLike, masks: MapsLike) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps.detach().cpu() if isinstance(maps, torch.Tensor) else maps, dtype=np.float64)
    g = np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks)
    if m.ndim != 3 or m.shape != g.shape:
        raise MaskError(f"anomaly maps {tuple(m.shape)} and masks {tuple(g.shape)} must both be N×H×W and of one shape")
    if not np.isin(g, (0, 1)).all():
        raise MaskError("masks must hold only 0 (normal) and 1 (defect)")
    if np.isnan(m).any():
        raise MaskError("the anomaly maps hold NaN")
    g = g.astype(bool)
    if not g.any():
        raise MaskError("no mask has a defect pixel: pixel metrics need anomalous images with masks")
    if g.all():
        raise MaskError("every mask pixel is a defect: pixel metrics need normal pixels too")
    return m, g


def pixel_auroc(maps: MapsLike, masks: MapsLike) -> float:
    """AUROC over all pixels of all images (``anogan.metrics.image.trapezoid_auroc``: torchmetrics'
    ``binary_auroc`` on the flattened maps, mapped monotonically into [0, 1]). Raises ``MaskError``."""
    m, g = _check(maps, masks)
    return trapezoid_auroc(torch.from_numpy(m.ravel()), torch.from_numpy(g.ravel().astype(np.int64)))


def connected_components(masks: MapsLike) -> np.ndarray:
    """Labels of the 8-connected components of each image's mask: int64 (N, H, W), 0 for
    background, 1..R for the R regions of all images, numbered in the order their first pixel
    comes in a row-major scan (``scipy.ndimage.label``; no region spans two images)."""
    g = np.asarray(masks).astype(bool)
    if g.ndim != 3:
        raise ValueError(f"masks must be N×H×W, got shape {g.shape}")
    within_an_image = np.zeros((3, 3, 3), dtype=bool)
    within_an_image[1] = True  # the 8 neighbours in the same image, none in the images before or after
    labels, _ = ndimage.label(g, structure=within_an_image)
    return labels.astype(np.int64)


def pro_curve(maps: MapsLike, masks: MapsLike, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """False-positive rate and per-region overlap of flagging ``map ≥ t`` for every threshold t:
    all distinct map values (exact) or, with ``num_thresholds``, that many evenly spaced between
    the smallest and the largest value. Returns (fpr, pro), float64 arrays ordered by decreasing
    threshold, starting at (0, 0) (nothing flagged). Raises ``MaskError``."""
    m, g = _check(maps, masks)
    regions = connected_components(g)
    n_regions = int(regions.max())
    size = np.bincount(regions.ravel(), minlength=n_regions + 1)
    # weight of each pixel: 1/n_normal towards the FPR, 1/(|region| · R) towards the PRO
    fpr_weight = np.where(g, 0.0, 1.0 / (~g).sum()).ravel()
    pro_weight = np.where(g, 1.0 / (np.maximum(size[regions], 1) * n_regions), 0.0).ravel()
    values = m.ravel()
    # each pixel is flagged at thresholds[:k], k = #{thresholds <= its value}; the mass flagged at
    # thresholds[i] is the sum over the pixels with k > i
    if num_thresholds is None:
        thresholds, position = np.unique(values, return_inverse=True)
        k = position.ravel() + 1
    else:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds={num_thresholds} must be at least 2 (or None for every distinct value)")
        thresholds = np.linspace(values.min(), values.max(), num_thresholds)
        k = np.searchsorted(thresholds, values, side="right")
    per_k_fpr = np.bincount(k, weights=fpr_weight, minlength=len(thresholds) + 1)
    per_k_pro = np.bincount(k, weights=pro_weight, minlength=len(thresholds) + 1)
    fpr = np.cumsum(per_k_fpr[::-1])[:-1][::-1]  # at thresholds[i]: sum over k >= i + 1
    pro = np.cumsum(per_k_pro[::-1])[:-1][::-1]
    fpr, pro = np.r_[0.0, fpr[::-1]], np.r_[0.0, pro[::-1]]  # decreasing threshold
    return np.minimum(fpr, 1.0), np.minimum(pro, 1.0)


def integrate_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) from x[0] to ``limit``, x non-decreasing (vertical steps allowed);
    y interpolated linearly at ``limit`` between the last point before it and the first after."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    j = int(inside.sum())
    if j < len(x) and xs[-1] < limit:
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        xs, ys = np.r_[xs, limit], np.r_[ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def aupro(maps: MapsLike, masks: MapsLike, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Area under the per-region-overlap curve up to the pixel false-positive rate ``fpr_limit``,
    divided by ``fpr_limit`` (Bergmann et al., IJCV 2021), in [0, 1].

    ``maps`` float (N, H, W); ``masks`` (N, H, W) in {0, 1}; regions: 8-connected components of
    each mask. ``num_thresholds=None`` evaluates the curve at every distinct map value (exact);
    an integer uses that many evenly spaced thresholds (faster on very large sets, an
    underestimate by at most the curve's missing steps). Raises ``MaskError`` when the masks hold
    no defect or no normal pixel, ``ValueError`` for ``fpr_limit`` outside (0, 1]."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit={fpr_limit!r} must lie in (0, 1]")
    fpr, pro = pro_curve(maps, masks, num_thresholds)
    return integrate_to(fpr, pro, fpr_limit) / fpr_limit


def per_defect_auroc(scores: ScoresLike, labels: ScoresLike, defect_names: Sequence[str] | np.ndarray) -> dict[str, float]:
    """Image AUROC of each defect type against all normal images: ``{defect: auroc}``.

    ``scores``, ``labels`` (1 = anomalous), ``defect_names``: shape (n,); the names of normal
    images are ignored. Ties count ½ (average ranks). Raises ``MaskError`` without normal images."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    names = np.asarray(defect_names).ravel()
    if not len(s) == len(y) == len(names):
        raise ValueError(f"scores, labels and defect_names differ in length ({len(s)}, {len(y)}, {len(names)})")
    if y.all():
        raise MaskError("per-defect AUROC needs normal images")
    out = {}
    for defect in sorted(set(names[y].tolist())):
        keep = ~y | (names == defect)
        out[str(defect)] = auroc(s[keep], y[keep])
    return out
