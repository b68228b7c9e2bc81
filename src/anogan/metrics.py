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


def fit_thresholds(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The F1-maximising and the Youden's-J-maximising thresholds on (validation) scores."""
    _check_both_classes(labels, "the validation split")
    t, tp, fp = _cut_points(scores, labels)
    positives, negatives = labels.sum().double(), (1 - labels).sum().double()
    precision, recall = tp / (tp + fp), tp / positives
    f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    youden = recall - fp / negatives
    best_f1, best_j = int(torch.argmax(f1)), int(torch.argmax(youden))
    return {
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
