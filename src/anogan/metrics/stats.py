"""Statistics of scores: AUROC by ranks (Mann-Whitney U), stratified bootstrap, DeLong's test, conformal p-values.

Everything here is about numbers, not about runs: ``metrics`` (thresholds, metrics at a
threshold) and ``compare`` (the ``anogan-compare`` command line) build on it.
Labels: normal 0, anomalous 1; a higher score means more anomalous. Scores are compared in float64.

References
- Conformal p-values: Vovk, Gammerman & Shafer, "Algorithmic Learning in a Random World"
  (2005); Bates, Candès, Lei, Romano & Sesia, "Testing for outliers with conformal p-values",
  Ann. Statist. 51(1), 2023.
- AUROC as the Mann-Whitney statistic: Hanley & McNeil, Radiology 143, 1982.
- Bootstrap intervals: Efron & Tibshirani, "An Introduction to the Bootstrap" (1993), percentile
  interval, resampling each class separately (stratified).
- DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated receiver
  operating characteristic curves: a nonparametric approach", Biometrics 44, 1988, in the
  O(n log n) form of Sun & Xu, "Fast implementation of DeLong's algorithm for comparing the areas
  under correlated receiver operating characteristic curves", IEEE Signal Process. Lett. 21, 2014.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, TypeAlias

import numpy as np
import torch
from scipy.stats import mannwhitneyu, rankdata

from anogan.utils.errors import CalibrationError, OneClassSplitError

# Scores or labels as callers hold them: a tensor, an array or a list (converted to float64 inside).
ScoresLike: TypeAlias = "torch.Tensor | np.ndarray | Sequence[float]"


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


# ---------------------------------------------------------------------- AUROC by ranks, bootstrap
def auroc(scores: ScoresLike, labels: ScoresLike) -> float:
    """AUROC as the Mann-Whitney statistic P(anomalous > normal) + ½ P(equal) (Hanley & McNeil
    1982): scipy's U of the anomalies, computed from average ranks, divided by n0·n1 (float64,
    exact up to that one division). ``scores``, ``labels``: shape (n,). Raises
    ``OneClassSplitError`` for one class, ``ValueError`` on NaN."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    if np.isnan(s).any():
        raise ValueError("the scores hold NaN")
    _check_both_classes(torch.from_numpy(y.astype(np.int64)), "the split")
    n1, n0 = int(y.sum()), int((~y).sum())
    u = mannwhitneyu(s[y], s[~y], method="asymptotic").statistic  # the p-value's method does not change U
    return float(u / (n0 * n1))


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


# ---------------------------------------------------------------------- two scorers of the same images
def _inputs(scores_a: ScoresLike, scores_b: ScoresLike, labels: ScoresLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.asarray(scores_a, dtype=np.float64).ravel(), np.asarray(scores_b, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if not len(a) == len(b) == len(y):
        raise ValueError(f"scores_a, scores_b and labels differ in length ({len(a)}, {len(b)}, {len(y)})")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("the scores hold NaN")
    _check_both_classes(torch.from_numpy(y.astype(np.int64)), "the compared images")
    return a, b, y


def paired_bootstrap(
    scores_a: ScoresLike, scores_b: ScoresLike, labels: ScoresLike, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Stratified paired bootstrap of AUROC(a) − AUROC(b) on the same images.

    ``scores_a``, ``scores_b``, ``labels``: shape (n,), row i the same image under both runs,
    labels in {0, 1} with both classes. Each resample draws the normals and the anomalies
    separately with replacement (keeping their counts) and scores the same draw under a and b.

    Returns ``{"auroc_a", "auroc_b", "difference", "ci": [low, high], "p_value", "significant",
    "n_resamples", "level"}``: ``difference`` is on the full data, ``ci`` the percentile interval
    of the resampled differences, ``p_value`` the two-sided bootstrap p-value
    min(1, 2·min(#{d* ≤ 0}+1, #{d* ≥ 0}+1)/(n_resamples+1)) — the smallest 1 − level whose
    percentile interval would exclude 0 — and ``significant`` = p_value < 1 − level.
    """
    a, b, y = _inputs(scores_a, scores_b, labels)
    rng = np.random.default_rng(seed)
    w_neg, w_pos = stratified_counts(int((~y).sum()), int(y.sum()), n_resamples, rng)
    d = _weighted_auroc(a[~y], a[y], w_neg, w_pos) - _weighted_auroc(b[~y], b[y], w_neg, w_pos)
    auroc_a, auroc_b = auroc(a, y), auroc(b, y)
    tail = min(int((d <= 0).sum()) + 1, int((d >= 0).sum()) + 1) / (n_resamples + 1)
    p = min(1.0, 2.0 * tail)
    return {
        "auroc_a": auroc_a,
        "auroc_b": auroc_b,
        "difference": auroc_a - auroc_b,
        "ci": list(percentile_interval(d, level)),
        "p_value": p,
        "significant": p < 1 - level,
        "n_resamples": n_resamples,
        "level": level,
    }


def delong_components(scores: ScoresLike, labels: ScoresLike) -> tuple[float, np.ndarray, np.ndarray]:
    """Sun & Xu's (2014) structural components of one scorer's AUROC: (auroc, V10 (n1,), V01 (n0,))
    with V10_i = P(anomaly i > a normal) and V01_j = P(an anomaly > normal j), ties counted ½."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    x, z = s[y], s[~y]  # anomalies (m), normals (n)
    m, n = len(x), len(z)
    t_all = rankdata(np.concatenate([x, z]))  # average ranks: ties share theirs
    t_x, t_z = rankdata(x), rankdata(z)
    v10 = (t_all[:m] - t_x) / n
    v01 = 1.0 - (t_all[m:] - t_z) / m
    return auroc(s, y), v10, v01


def delong(scores_a: ScoresLike, scores_b: ScoresLike, labels: ScoresLike, level: float = 0.95) -> dict[str, Any]:
    """DeLong's test (1988) of AUROC(a) = AUROC(b) for two scorers of the same images, by the
    O(n log n) algorithm of Sun & Xu (2014).

    ``scores_a``, ``scores_b``, ``labels``: shape (n,), labels in {0, 1}, both classes (else
    ``OneClassSplitError``). Var(difference) = (S10_aa + S10_bb − 2 S10_ab)/n1 + (same for S01)/n0,
    with S10, S01 the sample covariances (ddof 1) of the structural components. Returns
    ``{"auroc_a", "auroc_b", "difference", "se", "z", "ci": [low, high], "p_value", "significant"}``;
    the p-value is two-sided from the normal approximation (1.0 when the difference and its
    variance are both 0, e.g. identical scores).
    """
    a, b, y = _inputs(scores_a, scores_b, labels)
    auc_a, v10_a, v01_a = delong_components(a, y)
    auc_b, v10_b, v01_b = delong_components(b, y)
    m, n = len(v10_a), len(v01_a)
    d10, d01 = v10_a - v10_b, v01_a - v01_b
    var = (d10.var(ddof=1) if m > 1 else 0.0) / m + (d01.var(ddof=1) if n > 1 else 0.0) / n
    diff = auc_a - auc_b
    se = math.sqrt(max(var, 0.0))
    if se > 0:
        z = diff / se
        p = math.erfc(abs(z) / math.sqrt(2))
    else:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    half = NormalDist().inv_cdf((1 + level) / 2) * se
    return {
        "auroc_a": auc_a,
        "auroc_b": auc_b,
        "difference": diff,
        "se": se,
        "z": z,
        "ci": [diff - half, diff + half],
        "p_value": p,
        "significant": p < 1 - level,
    }
