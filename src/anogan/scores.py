"""The run's anomaly score: the scorer's raw score, optionally corrected for input complexity.

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

import torch

CORRECTIONS = ("none", "complexity", "auto")
RECONSTRUCTION_COMPONENTS = ("residual", "discrimination")
# the per-image components of the scorers that read D (anogan.scorers.discriminator)
D_COMPONENTS = ("transformations", "dfeatures", "dpatches")


def score_components(results) -> list[str]:
    """The named per-image score components among the keys of ``results`` (scorer outputs or a
    scores table), in a fixed order: the reconstruction scorers' ``residual``/``discrimination``,
    the D readers' ``transformations``/``dfeatures``/``dpatches`` (columns of scores.csv)."""
    return [k for k in (*RECONSTRUCTION_COMPONENTS, *D_COMPONENTS) if k in results]


def complexity(images_uint8: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, in [0, 2]: the simplest measure of
    input complexity (low = plain image). Also a baseline that knows nothing of the normal class."""
    x = images_uint8.float() / 255.0
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def corrected_score(raw: torch.Tensor, image_complexity: torch.Tensor) -> torch.Tensor:
    """Raw score per unit of complexity (float64); a flat image (complexity 0) gets the largest."""
    return raw.double() / image_complexity.double().clamp_min(1e-6)


def resolve_auto(raw: torch.Tensor, image_complexity: torch.Tensor, labels: torch.Tensor) -> str:
    """``none`` or ``complexity``: the one with the higher AUROC on these (validation) images."""
    from anogan.metrics import ranking_metrics

    auroc = {
        c: ranking_metrics(primary_score(raw, image_complexity, c), labels, "the validation split")["auroc"]
        for c in ("none", "complexity")
    }
    return "complexity" if auroc["complexity"] > auroc["none"] else "none"


def primary_score(raw: torch.Tensor, image_complexity: torch.Tensor, correction: str) -> torch.Tensor:
    """The score thresholds and metrics use, as ``mapping.correction`` says (``auto`` resolved)."""
    if correction == "none":
        return raw.double()
    if correction == "complexity":
        return corrected_score(raw, image_complexity)
    raise ValueError(f"mapping.correction={correction!r} is not a resolved correction; use none or complexity")


def apply_calibration(
    raw: torch.Tensor, image_complexity: torch.Tensor, calibration: dict, rule: str | float | None = None
) -> dict:
    """The run's post-processing of raw scores, the same in the run's report and in ``predict.py``:
    primary score (the resolved correction), conformal p-value against the validation normals, and
    the label at the threshold of ``rule`` (``fpr`` | ``f1`` | ``youden`` | a number; default the
    run's rule). Returns ``{"score", "p_value", "label", "threshold"}`` (label: 1 = anomalous)."""
    from anogan.metrics import conformal_p_values, resolve_threshold

    score = primary_score(raw, image_complexity, calibration["correction"])
    normals = calibration.get("normal_scores")
    p_value = conformal_p_values(normals, score) if normals is not None and len(normals) else torch.full_like(score, float("nan"))
    threshold = resolve_threshold(calibration["thresholds"], calibration.get("threshold_rule", "fpr") if rule is None else rule)
    label = (score >= threshold).long()
    return {"score": score, "p_value": p_value, "label": label, "threshold": threshold}
