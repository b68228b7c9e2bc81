"""Is run A's test AUROC really different from run B's? Two tests for two scorers of the same images.

- ``paired_bootstrap``: stratified paired bootstrap of the AUROC difference (the same resampled
  images score under both runs; Efron & Tibshirani 1993), percentile interval and two-sided p-value.
- ``delong``: DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated
  receiver operating characteristic curves: a nonparametric approach", Biometrics 44, 1988, in the
  O(n log n) form of Sun & Xu, "Fast implementation of DeLong's algorithm for comparing the areas
  under correlated receiver operating characteristic curves", IEEE Signal Process. Lett. 21, 2014.

Command line::

    python -m anogan.compare <run_a> <run_b> [--n-resamples 2000] [--seed 0] [--level 0.95]

reads both runs' ``scores.csv`` (columns id, split, label, score), joins the test rows on ``id``,
refuses (exit 2, one line) when the two runs did not score the same test images, and prints JSON
and one sentence.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from anogan.errors import UserError
from anogan.metrics import (
    ScoresLike,
    _check_both_classes,
    _weighted_auroc,
    auroc,
    midranks,
    percentile_interval,
    stratified_counts,
)


class CompareError(UserError):
    """The two runs cannot be compared (missing file, other images, one class)."""


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
    t_all = midranks(np.concatenate([x, z]))
    t_x, t_z = midranks(x), midranks(z)
    v10 = (t_all[:m] - t_x) / n
    v01 = 1.0 - (t_all[m:] - t_z) / m
    return float((t_all[:m].sum() - m * (m + 1) / 2) / (m * n)), v10, v01


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


# ---------------------------------------------------------------------- command line
def read_test_scores(run_dir: Path) -> dict[int, tuple[int, float]]:
    """``{id: (label, score)}`` of the test rows of a run's scores.csv; raises ``CompareError``."""
    path = Path(run_dir) / "scores.csv"
    if not path.is_file():
        raise CompareError(f"{run_dir} has no scores.csv: give the folder of a finished train.py run")
    rows: dict[int, tuple[int, float]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "split", "label", "score"} - set(reader.fieldnames or ())
        if missing:
            raise CompareError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        for r in reader:
            if r["split"] != "test":
                continue
            key = int(r["id"])
            if key in rows:
                raise CompareError(f"{path} lists the test image id {key} twice")
            rows[key] = (int(r["label"]), float(r["score"]))
    if not rows:
        raise CompareError(f"{path} has no test rows")
    return rows


def join_runs(run_a: Path, run_b: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Test scores of both runs on the same images, sorted by id: (ids, labels, scores_a, scores_b).
    Raises ``CompareError`` when the image sets or their labels differ."""
    a, b = read_test_scores(run_a), read_test_scores(run_b)
    if a.keys() != b.keys():
        only_a, only_b = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        raise CompareError(
            f"the runs scored different test images ({only_a} only in {run_a}, {only_b} only in {run_b}): "
            "compare runs of the same data and split"
        )
    ids = sorted(a)
    bad = [i for i in ids if a[i][0] != b[i][0]]
    if bad:
        raise CompareError(f"the runs label {len(bad)} test image(s) differently (first id {bad[0]}): not the same data")
    labels = np.array([a[i][0] for i in ids])
    return np.array(ids), labels, np.array([a[i][1] for i in ids]), np.array([b[i][1] for i in ids])


def sentence(result: dict, level: float) -> str:
    """The one-line verdict printed under the JSON."""
    lo, hi = result["ci"]
    verdict = "significant" if result["significant"] else "not significant"
    return (
        f"run A's AUROC {result['auroc_a']:.3f} vs run B's {result['auroc_b']:.3f}: difference {result['difference']:+.3f}, "
        f"{level:.0%} CI [{lo:+.3f}, {hi:+.3f}], p = {result['p_value']:.2g}, {verdict} at {1 - level:.2g}"
    )


def compare_runs(run_a: Path, run_b: Path, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap and DeLong on the test images both runs scored."""
    ids, labels, a, b = join_runs(run_a, run_b)
    try:
        boot = paired_bootstrap(a, b, labels, n_resamples, seed, level)
        dl = delong(a, b, labels, level)
    except UserError as e:
        raise CompareError(str(e)) from None
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "images": len(ids),
        "normal": int((labels == 0).sum()),
        "anomalous": int((labels == 1).sum()),
        "paired_bootstrap": boot,
        "delong": dl,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anogan.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--n-resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", type=float, default=0.95)
    args = parser.parse_args(argv)
    try:
        result = compare_runs(args.run_a, args.run_b, args.n_resamples, args.seed, args.level)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    print(sentence(result["paired_bootstrap"], args.level) + f" (DeLong p = {result['delong']['p_value']:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
