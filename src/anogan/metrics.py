"""Thresholds (fitted on validation only), conformal p-values, test metrics and their uncertainty.

Convention: a higher score means more anomalous; an image is predicted anomalous when
``score >= threshold``. Labels: normal 0, anomalous 1. Scores are compared in float64.

References
- Conformal p-values: Vovk, Gammerman & Shafer, "Algorithmic Learning in a Random World"
  (2005); Bates, Candès, Lei, Romano & Sesia, "Testing for outliers with conformal p-values",
  Ann. Statist. 51(1), 2023.
- AUROC as the Mann-Whitney statistic: Hanley & McNeil, Radiology 143, 1982.
- Bootstrap intervals: Efron & Tibshirani, "An Introduction to the Bootstrap" (1993), percentile
  interval, resampling each class separately (stratified).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import TypeAlias

import numpy as np
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

THRESHOLD_RULES = ("fpr", "f1", "youden")

# Scores or labels as callers hold them: a tensor, an array or a list (converted to float64 inside).
ScoresLike: TypeAlias = "torch.Tensor | np.ndarray | Sequence[float]"


class OneClassSplitError(UserError):
    """A split holds a single class, so a threshold or a ranking metric is undefined."""


class ThresholdRuleError(UserError):
    """``threshold=`` names no known rule, or a rule this run could not fit."""


class CalibrationError(UserError):
    """No normal images to calibrate p-values or the false-positive-rate threshold on."""


def _check_both_classes(labels: torch.Tensor, what: str) -> None:
    n_anom = int(labels.sum())
    if n_anom == 0 or n_anom == len(labels):
        only = "anomalous" if n_anom else "normal"
        raise OneClassSplitError(
            f"{what} has only {only} images ({len(labels)}): it cannot rank or separate normal from anomalous. "
            "Give it images of both classes (see data.val_fraction / data.val_anomaly_ratio / data.*_subset)."
        )


def _as_float64(x: ScoresLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).double().flatten()
    if torch.isnan(t).any():
        raise ValueError(f"{name} holds NaN scores")
    return t


# ---------------------------------------------------------------------- conformal p-values
def conformal_p_values(calibration_normal_scores: ScoresLike, scores: ScoresLike) -> torch.Tensor:
    """Conformal p-value of each score against normal calibration scores (Vovk et al. 2005;
    Bates et al., Ann. Statist. 2023, eq. 2):

        p(s) = (1 + #{calibration scores >= s}) / (n_cal + 1),   in [1/(n_cal+1), 1].

    Guarantee: if a new normal image's score and the ``n_cal`` calibration scores are
    exchangeable (same distribution, e.g. the validation normals of the same run), then for every
    α in [0, 1], P(p ≤ α) ≤ α — flagging ``p ≤ α`` marks a normal image with probability at most α
    (exactly ⌊α(n_cal+1)⌋/(n_cal+1) for continuous scores). A small p-value means few normals score
    as high.

    ``calibration_normal_scores``: shape (n_cal,), n_cal ≥ 1; ``scores``: any shape. Returns
    float64 of ``scores``' shape. O((n_cal + n) log n_cal). Raises ``CalibrationError`` when there
    is no calibration score, ``ValueError`` on NaN.
    """
    cal = _as_float64(calibration_normal_scores, "the calibration scores")
    if len(cal) == 0:
        raise CalibrationError("no normal validation image to calibrate p-values on: give the validation split normal images")
    s = torch.as_tensor(scores).double()
    if torch.isnan(s).any():
        raise ValueError("the scores hold NaN")
    below = torch.searchsorted(torch.sort(cal).values, s.flatten().contiguous(), side="left")  # #{cal < s}
    n = len(cal)
    return ((1 + n - below).double() / (n + 1)).reshape(s.shape)


# ---------------------------------------------------------------------- thresholds
def _cut_points(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each distinct score t (descending): true/false positives when predicting score >= t."""
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, y = scores.double()[order], labels.double()[order]
    tp, fp = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    last_of_value = torch.ones_like(s, dtype=torch.bool)
    last_of_value[:-1] = s[:-1] != s[1:]
    return s[last_of_value], tp[last_of_value], fp[last_of_value]


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
    result) or a number (float, or a string that parses as one, used as it is).

    Raises ``ThresholdRuleError`` (one line) for an unknown name or a rule this run could not fit
    (F1 and Youden need anomalous validation images)."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return float(rule)
    text = str(rule).strip()
    if text in THRESHOLD_RULES:
        value = thresholds.get(text)
        if value is None:
            raise ThresholdRuleError(
                f"threshold={text} needs anomalous validation images, which this run has none of: use threshold=fpr or a number"
            )
        return float(value)
    try:
        value = float(text)
    except ValueError:
        raise ThresholdRuleError(f"threshold={text!r} is neither a rule ({'|'.join(THRESHOLD_RULES)}) nor a number") from None
    if math.isnan(value):
        raise ThresholdRuleError("threshold=nan is not a usable threshold")
    return value


# ---------------------------------------------------------------------- metrics at a threshold
def to_unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """A monotone map into [0, 1] (float64): torchmetrics would apply a sigmoid to raw scores,
    which saturates for scores in the hundreds and turns every ranking into ties."""
    s = scores.double()
    span = (s.max() - s.min()).clamp_min(torch.finfo(torch.float64).tiny)
    return (s - s.min()) / span


def ranking_metrics(scores: torch.Tensor, labels: torch.Tensor, what: str) -> dict[str, float]:
    """AUROC and average precision (torchmetrics); raises ``OneClassSplitError`` for one class."""
    _check_both_classes(labels, what)
    preds, target = to_unit_interval(scores), labels.long()
    return {"auroc": float(binary_auroc(preds, target)), "ap": float(binary_average_precision(preds, target))}


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


# ---------------------------------------------------------------------- AUROC by ranks, bootstrap
def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (shape (n,)), tied values sharing their average rank. O(n log n)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], len(xs)]  # one past the last
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auroc(scores: ScoresLike, labels: ScoresLike) -> float:
    """AUROC as the Mann-Whitney statistic P(anomalous > normal) + ½ P(equal), from average ranks
    (Hanley & McNeil 1982). ``scores``, ``labels``: shape (n,). Raises ``OneClassSplitError``."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    _check_both_classes(torch.from_numpy(y.astype(np.int64)), "the split")
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((midranks(s)[y].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def _weighted_wins(neg: np.ndarray, pos: np.ndarray, w_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For weight rows ``w_neg`` (B, n0) over the normals: per anomaly, the weighted count of
    normals below it plus half of those tied (B, n1), and of normals at or above it (B, n1)."""
    order = np.argsort(neg, kind="stable")
    cum = np.zeros((w_neg.shape[0], len(neg) + 1))
    np.cumsum(w_neg[:, order], axis=1, out=cum[:, 1:])
    below = np.searchsorted(neg[order], pos, side="left")
    upto = np.searchsorted(neg[order], pos, side="right")
    cb, cu = cum[:, below], cum[:, upto]
    return 0.5 * (cb + cu), cum[:, -1:] - cb


def _weighted_auroc(neg: np.ndarray, pos: np.ndarray, w_neg: np.ndarray, w_pos: np.ndarray) -> np.ndarray:
    """AUROC of each weighted resample (rows of ``w_neg`` (B, n0), ``w_pos`` (B, n1))."""
    wins, _ = _weighted_wins(neg, pos, w_neg)
    return (w_pos * wins).sum(1) / (w_neg.sum(1) * w_pos.sum(1))


def _weighted_ap(neg: np.ndarray, pos: np.ndarray, w_neg: np.ndarray, w_pos: np.ndarray) -> np.ndarray:
    """Average precision of each weighted resample: mean over the anomalies of the precision at
    their own score as threshold (ties counted together, as torchmetrics / scikit-learn do)."""
    _, fp = _weighted_wins(neg, pos, w_neg)
    order = np.argsort(-pos, kind="stable")
    ps = pos[order]
    last_of_tie = np.r_[np.flatnonzero(ps[1:] != ps[:-1]), len(ps) - 1]
    group_end = np.repeat(last_of_tie, np.diff(np.r_[-1, last_of_tie]))  # per sorted anomaly
    tp_sorted = np.cumsum(w_pos[:, order], axis=1)[:, group_end]
    tp = np.empty_like(tp_sorted)
    tp[:, order] = tp_sorted
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=w_pos > 0)
    return (w_pos * precision).sum(1) / w_pos.sum(1)


_STATISTICS = {"auroc": _weighted_auroc, "ap": _weighted_ap}


def stratified_counts(n0: int, n1: int, n_resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicities of a stratified bootstrap: each row draws n0 normals and n1 anomalies with
    replacement. Returns ((B, n0), (B, n1)) float64 counts."""

    def counts(n: int) -> np.ndarray:
        idx = rng.integers(0, n, size=(n_resamples, n)) + n * np.arange(n_resamples)[:, None]
        return np.bincount(idx.ravel(), minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)

    return counts(n0), counts(n1)


def bootstrap_statistics(
    scores: ScoresLike, labels: ScoresLike, metrics: Sequence[str] = ("auroc", "ap"), n_resamples: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """The bootstrap distribution of each metric (``auroc``, ``ap``): {metric: (n_resamples,)}.
    Stratified: every resample keeps the numbers of normals and anomalies. Seeded (numpy PCG64)."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    _check_both_classes(torch.from_numpy(y.astype(np.int64)), "the split")
    unknown = set(metrics) - set(_STATISTICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}: use {sorted(_STATISTICS)}")
    neg, pos = s[~y], s[y]
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    chunk = max(1, min(n_resamples, 4_000_000 // len(s)))  # bound the memory of the count matrices
    for start in range(0, n_resamples, chunk):
        w_neg, w_pos = stratified_counts(len(neg), len(pos), min(chunk, n_resamples - start), rng)
        for m in metrics:
            out[m].append(_STATISTICS[m](neg, pos, w_neg, w_pos))
    return {m: np.concatenate(v) for m, v in out.items()}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of a bootstrap distribution."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must lie strictly between 0 and 1")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    scores: ScoresLike, labels: ScoresLike, metric: str = "auroc", n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Stratified percentile bootstrap interval ``(low, high)`` for AUROC or average precision
    (Efron & Tibshirani 1993, ch. 13): normals and anomalies are resampled separately with
    replacement, keeping their counts; the same seed gives the same interval.

    ``scores``, ``labels``: shape (n,), labels in {0, 1}, both classes present (else
    ``OneClassSplitError``). ``metric``: ``auroc`` or ``ap``. AUROC uses average ranks for ties.
    Cost O(n_resamples · n log n); 2,000 resamples of 2,000 images take about a second on one core.
    """
    values = bootstrap_statistics(scores, labels, (metric,), n_resamples, seed)[metric]
    return percentile_interval(values, level)


def random_auroc_interval(n_normal: int, n_anomalous: int, level: float = 0.95) -> tuple[float, float]:
    """Central interval of the AUROC of a score unrelated to the labels (null hypothesis) for these
    class counts, by the normal approximation of the Mann-Whitney statistic: mean ½,
    variance (n0 + n1 + 1) / (12 n0 n1) (Mann & Whitney, Ann. Math. Statist. 18, 1947; no ties).
    Its expectation is ½ whatever the counts."""
    if n_normal < 1 or n_anomalous < 1:
        raise OneClassSplitError("the random-baseline interval needs normal and anomalous images")
    sd = math.sqrt((n_normal + n_anomalous + 1) / (12.0 * n_normal * n_anomalous))
    z = NormalDist().inv_cdf((1 + level) / 2)
    return max(0.0, 0.5 - z * sd), min(1.0, 0.5 + z * sd)
