"""Thresholds (fitted on validation only) and test metrics (torchmetrics).

Convention: a higher score means more anomalous; an image is predicted anomalous when
``score >= threshold``. Labels: normal 0, anomalous 1.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_confusion_matrix,
    binary_f1_score,
    binary_precision,
    binary_recall,
)

from anogan.errors import UserError


class OneClassSplitError(UserError):
    """A split holds a single class, so a threshold or a ranking metric is undefined."""


def _check_both_classes(labels: torch.Tensor, what: str) -> None:
    n_anom = int(labels.sum())
    if n_anom == 0 or n_anom == len(labels):
        only = "anomalous" if n_anom else "normal"
        raise OneClassSplitError(
            f"{what} has only {only} images ({len(labels)}): it cannot rank or separate normal from anomalous. "
            "Give it images of both classes (see data.val_fraction / data.val_anomaly_ratio / data.*_subset)."
        )


def _cut_points(scores: torch.Tensor, labels: torch.Tensor):
    """For each distinct score t (descending): true/false positives when predicting score >= t."""
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, y = scores.double()[order], labels.double()[order]
    tp, fp = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    last_of_value = torch.ones_like(s, dtype=torch.bool)
    last_of_value[:-1] = s[:-1] != s[1:]
    return s[last_of_value], tp[last_of_value], fp[last_of_value]


def fpr_threshold(normal_scores: torch.Tensor, target_fpr: float) -> float:
    """The threshold that flags at most ``target_fpr`` of these (validation) normals: flagging
    ``score >= t`` equals flagging conformal ``p_value <= target_fpr`` on them."""
    s = torch.sort(normal_scores.double(), descending=True).values
    k = int(target_fpr * (len(s) + 1)) - 1  # p <= a  <=>  1 + #{>= score} <= a (n + 1)
    return float(s[k]) if k >= 0 else float("inf")


def fit_thresholds(scores: torch.Tensor, labels: torch.Tensor, target_fpr: float = 0.05) -> dict[str, float]:
    """The false-positive-rate, F1-maximising and Youden's-J-maximising thresholds on (validation) scores."""
    fpr = fpr_threshold(scores[labels == 0], target_fpr)
    _check_both_classes(labels, "the validation split")
    t, tp, fp = _cut_points(scores, labels)
    positives, negatives = labels.sum().double(), (1 - labels).sum().double()
    precision, recall = tp / (tp + fp), tp / positives
    f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    youden = recall - fp / negatives
    best_f1, best_j = int(torch.argmax(f1)), int(torch.argmax(youden))
    return {
        "fpr": fpr,
        "f1": float(t[best_f1]),
        "f1_value": float(f1[best_f1]),
        "youden": float(t[best_j]),
        "youden_value": float(youden[best_j]),
    }


def to_unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """A monotone map into [0, 1] (float64): torchmetrics would apply a sigmoid to raw scores,
    which saturates for scores in the hundreds and turns every ranking into ties."""
    s = scores.double()
    span = (s.max() - s.min()).clamp_min(torch.finfo(torch.float64).tiny)
    return (s - s.min()) / span


def ranking_metrics(scores: torch.Tensor, labels: torch.Tensor, what: str) -> dict[str, float]:
    _check_both_classes(labels, what)
    preds, target = to_unit_interval(scores), labels.long()
    return {"auroc": float(binary_auroc(preds, target)), "ap": float(binary_average_precision(preds, target))}


def threshold_metrics(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict:
    preds, target = (scores.double() >= threshold).long(), labels.long()
    (tn, fp), (fn, tp) = binary_confusion_matrix(preds, target).tolist()
    return {
        "f1": float(binary_f1_score(preds, target)),
        "precision": float(binary_precision(preds, target)),
        "recall": float(binary_recall(preds, target)),
        "accuracy": float(binary_accuracy(preds, target)),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def evaluate(scores: torch.Tensor, labels: torch.Tensor, threshold: float, what: str = "the test split") -> dict:
    """Everything reported for one split at a fixed threshold."""
    return {**ranking_metrics(scores, labels, what), **threshold_metrics(scores, labels, threshold), "threshold": threshold}


def conformal_p_values(calibration_normal_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Conformal p-values (Vovk et al. 2005; Bates et al., Ann. Statist. 2023), float64:
    p = (1 + #{calibration normals scoring >= s}) / (n + 1). For a normal image exchangeable with
    the n calibration normals, P(p <= alpha) <= alpha."""
    cal = torch.sort(calibration_normal_scores.double()).values
    s = scores.double()
    at_least = len(cal) - torch.searchsorted(cal, s, right=False)
    return (1.0 + at_least.double()) / (len(cal) + 1.0)


THRESHOLD_RULES = ("fpr", "f1", "youden")


def resolve_threshold(thresholds: dict, rule: str | float) -> float | None:
    """The threshold of ``rule``: a fitted rule's name (``fpr``, ``f1``, ``youden``) or a number."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return float(rule)
    name = str(rule).strip().lower()
    try:
        return float(name)
    except ValueError:
        pass
    if name not in THRESHOLD_RULES:
        raise UserError(f"threshold={rule!r} is not a rule: use fpr, f1, youden or a number.")
    value = thresholds.get(name)
    if value is None:
        raise UserError(f"threshold={name}: the run has no {name} threshold (its validation split holds no anomalous image); use fpr or a number.")
    return float(value)
