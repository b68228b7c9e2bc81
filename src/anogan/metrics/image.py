"""Thresholds (fitted on validation only) and test metrics at a threshold.

Convention: a higher score means more anomalous; an image is predicted anomalous when
``score >= threshold``. Labels: normal 0, anomalous 1. Scores are compared in float64.
The statistics these build on (conformal p-values, AUROC by ranks, bootstrap, DeLong) are in
``anogan.metrics.stats``.

Reference for the false-positive-rate threshold: Bates, Candès, Lei, Romano & Sesia, "Testing for
outliers with conformal p-values", Ann. Statist. 51(1), 2023.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_confusion_matrix,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_roc,
)

from anogan.config.fields import parse_threshold
from anogan.metrics.stats import ScoresLike, _as_float64, _check_both_classes
from anogan.utils.errors import CalibrationError, ThresholdRuleError


# ---------------------------------------------------------------------- thresholds
def _cut_points(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each distinct score t (descending): the true and false positives (float64 counts) when
    predicting score >= t, read off torchmetrics' ROC curve. ``labels`` hold both classes.

    torchmetrics applies a sigmoid to predictions outside [0, 1] and would merge scores that map
    to one float: it is given each score's rank among the distinct scores, scaled into [0, 1]
    (order and distinctness kept). Its rates are float32 ratios of whole counts, so the counts
    come back exactly up to 2^23 images per class."""
    distinct, rank = torch.unique(scores.double(), return_inverse=True)  # ascending
    fpr, tpr, _ = binary_roc(rank.double() / max(len(distinct) - 1, 1), labels.long())
    positives = labels.sum().double()
    negatives = len(labels) - positives
    # the curve's first point is the (0, 0) of a threshold above every score
    return distinct.flip(0), (tpr[1:].double() * positives).round(), (fpr[1:].double() * negatives).round()


def min_normals_for_fpr(target_fpr: float) -> int:
    """The fewest calibration normals n for which ``fpr_threshold`` is finite: the smallest n with
    ⌊target_fpr·(n+1)⌋ ≥ 1, i.e. ⌈1/target_fpr⌉ − 1 (19 at 5%, 99 at 1%). With fewer, no p-value can
    reach the target: the threshold is +inf and nothing is flagged. ``ValueError`` outside (0, 1)."""
    if not 0.0 < float(target_fpr) < 1.0:
        raise ValueError(f"target_fpr={target_fpr!r} must lie strictly between 0 and 1")
    n = max(1, math.floor(1.0 / target_fpr) - 2)
    while math.floor(target_fpr * (n + 1) + 1e-12) < 1:  # the same expression as fpr_threshold's k
        n += 1
    return n


def fpr_threshold(normal_scores: ScoresLike, target_fpr: float = 0.05) -> float:
    """The smallest threshold t such that ``(1 + #{normals ≥ t}) / (n + 1) ≤ target_fpr``.

    Exact relation to the conformal p-values (same normals as calibration): for every float64
    score s, ``s ≥ t  ⟺  conformal_p_values(normals, s) ≤ target_fpr``. So a new normal image
    exchangeable with these normals is flagged with probability ≤ target_fpr (Bates et al. 2023).
    Concretely t = nextafter(v, +inf) with v the (k+1)-th largest normal score,
    k = ⌊target_fpr·(n+1)⌋ − 1: the fraction of these normals flagged is k/n < target_fpr.
    (The plain empirical rule, #{normals ≥ t}/n ≤ target_fpr, flags ⌊target_fpr·n⌋ of them and a
    new normal with probability (⌊target_fpr·n⌋+1)/(n+1), which exceeds target_fpr: 5.9% for
    n = 100 at 5%.)

    When ``target_fpr·(n+1) < 1`` no p-value can be that small and t = +inf (nothing flagged):
    at least ⌈1/target_fpr⌉ − 1 normals are needed (``min_normals_for_fpr``). Raises ``CalibrationError`` without normals,
    ``ValueError`` for a target outside (0, 1).
    """
    if not 0.0 < float(target_fpr) < 1.0:
        raise ValueError(f"target_fpr={target_fpr!r} must lie strictly between 0 and 1")
    normals = _as_float64(normal_scores, "the normal scores")
    n = len(normals)
    if n == 0:
        raise CalibrationError("the validation split has no normal image: the false-positive-rate threshold needs some")
    k = math.floor(target_fpr * (n + 1) + 1e-12) - 1  # normals that may score >= t (1e-12: 0.29 * 100 is 28.999999999999996)
    if k < 0:
        return math.inf
    v = torch.sort(normals, descending=True).values[k]  # k < n since target_fpr < 1
    return float(torch.nextafter(v, torch.tensor(math.inf, dtype=torch.float64)))


def fit_thresholds(scores: torch.Tensor, labels: torch.Tensor, target_fpr: float = 0.05) -> dict:
    """Thresholds fitted on (validation) scores, shape (n,), labels (n,) in {0, 1}.

    Returns ``{"fpr", "fpr_target", "fpr_observed", "f1", "f1_value", "youden", "youden_value"}``:
    - ``fpr``: see ``fpr_threshold`` (uses the normals only; ``score ≥ fpr ⟺ p-value ≤ target``),
      ``fpr_observed`` the fraction of these normals it flags;
    - ``f1``: the threshold maximising F1, ``f1_value`` that F1;
    - ``youden``: the threshold maximising Youden's J = TPR − FPR (Youden, Cancer 3, 1950),
      ``youden_value`` that J.
    With normals only, F1 and Youden are None (they need anomalies). Raises
    ``OneClassSplitError`` when there is no normal image.
    """
    scores, labels = _as_float64(scores, "the validation scores"), torch.as_tensor(labels).long().flatten()
    normals = scores[labels == 0]
    if len(normals) == 0 and len(labels) > 0:
        _check_both_classes(labels, "the validation split")  # only anomalies: says so
    t_fpr = fpr_threshold(normals, target_fpr)
    out = {
        "fpr": t_fpr,
        "fpr_target": float(target_fpr),
        "fpr_observed": float((normals >= t_fpr).double().mean()),
        "f1": None,
        "f1_value": None,
        "youden": None,
        "youden_value": None,
    }
    if int(labels.sum()) == 0:
        return out
    t, tp, fp = _cut_points(scores, labels)
    positives, negatives = labels.sum().double(), (1 - labels).sum().double()
    precision, recall = tp / (tp + fp), tp / positives
    f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    youden = recall - fp / negatives
    best_f1, best_j = int(torch.argmax(f1)), int(torch.argmax(youden))
    out.update(f1=float(t[best_f1]), f1_value=float(f1[best_f1]), youden=float(t[best_j]), youden_value=float(youden[best_j]))
    return out


def resolve_threshold(thresholds: dict, rule: str | float) -> float:
    """The threshold a rule selects: ``fpr``, ``f1``, ``youden`` (names in ``fit_thresholds``'
    result) or a number, used as it is (the calibration's own provisional rule is ``inf``). A
    string is read by ``anogan.config.fields.parse_threshold`` (a name in any case, or a finite number).

    Raises ``ThresholdRuleError`` (one line) for a string that is neither (``"nan"``, ``"median"``)
    or a rule this run could not fit (F1 and Youden need anomalous validation images)."""
    is_number = isinstance(rule, (int, float)) and not isinstance(rule, bool)
    chosen = float(rule) if is_number else parse_threshold(rule)
    if isinstance(chosen, float):
        return chosen
    value = thresholds.get(chosen)
    if value is None:
        raise ThresholdRuleError(
            f"threshold={chosen} needs anomalous validation images, which this run has none of: use threshold=fpr or a number"
        )
    return float(value)


# ---------------------------------------------------------------------- metrics at a threshold
def to_unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """A monotone map into [0, 1] (float64): torchmetrics would apply a sigmoid to raw scores,
    which saturates for scores in the hundreds and turns every ranking into ties."""
    s = scores.double()
    span = (s.max() - s.min()).clamp_min(torch.finfo(torch.float64).tiny)
    return (s - s.min()) / span


def trapezoid_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC by torchmetrics' ``binary_auroc``: the trapezoid area under the ROC curve of
    ``to_unit_interval(scores)``, in float32 (``anogan.metrics.stats.auroc`` is the same quantity
    as an exact float64 rank statistic). ``scores``, ``labels``: shape (n,), both classes."""
    return float(binary_auroc(to_unit_interval(scores), labels.long()))


def ranking_metrics(scores: torch.Tensor, labels: torch.Tensor, what: str) -> dict[str, float]:
    """AUROC (``trapezoid_auroc``) and average precision (torchmetrics); raises ``OneClassSplitError`` for one class."""
    _check_both_classes(labels, what)
    preds, target = to_unit_interval(scores), labels.long()
    return {"auroc": trapezoid_auroc(scores, labels), "ap": float(binary_average_precision(preds, target))}


def threshold_metrics(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict:
    """F1, precision, recall, accuracy and the confusion matrix when flagging ``score >= threshold``."""
    preds, target = (scores.double() >= threshold).long(), labels.long()
    (tn, fp), (fn, tp) = binary_confusion_matrix(preds, target).tolist()
    return {
        "f1": float(binary_f1_score(preds, target)),
        "precision": float(binary_precision(preds, target)),
        "recall": float(binary_recall(preds, target)),
        "accuracy": float(binary_accuracy(preds, target)),
        "false_positive_rate": fp / (fp + tn) if fp + tn else None,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def one_class_metrics(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict:
    """What a split of a single class (or none) allows at a threshold: the observed false-positive
    rate of its normals, or the recall of its anomalies; ranking metrics and F1 are None."""
    flagged = scores.double() >= threshold
    normal, anomalous = labels == 0, labels == 1
    fp, tp = int((flagged & normal).sum()), int((flagged & anomalous).sum())
    n0, n1 = int(normal.sum()), int(anomalous.sum())
    note = "AUROC needs anomalous images" if n1 == 0 else "AUROC needs normal images"
    return {
        "auroc": None,
        "ap": None,
        "f1": None,
        "precision": None,
        "recall": tp / n1 if n1 else None,
        "accuracy": (tp + n0 - fp) / (n0 + n1) if n0 + n1 else None,
        "false_positive_rate": fp / n0 if n0 else None,
        "confusion_matrix": {"tn": n0 - fp, "fp": fp, "fn": n1 - tp, "tp": tp},
        "threshold": threshold,
        "note": note if n0 + n1 else "no images in this split",
    }


def evaluate(scores: torch.Tensor, labels: torch.Tensor, threshold: float, what: str = "the test split") -> dict:
    """Everything reported for one split of both classes at a fixed threshold."""
    return {**ranking_metrics(scores, labels, what), **threshold_metrics(scores, labels, threshold), "threshold": threshold}
