"""A run that fails on validation says so: below chance or below the complexity-only baseline (hand-built tables)."""

import json

import numpy as np

from anogan.metrics.stats import auroc
from anogan.reporting.report import compute_metrics, rereport, write_csv
from anogan.reporting.run_checks import WEAK_PREFIX, weak_detector_warnings


def table(score_of, complexity_of, seed=0, n_val=200, n_test=200):
    """val + test rows, 30% anomalous; the score and the complexity are functions of (label, noise)."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n_val + n_test) < 0.3).astype(np.int64)
    score = score_of(label, rng.normal(size=len(label)))
    return {
        "id": np.arange(len(label)),
        "split": np.array(["val"] * n_val + ["test"] * n_test),
        "label": label,
        "score": score,
        "raw_score": score.copy(),
        "complexity": complexity_of(label, rng.random(len(label))),
    }


def weak(t, correction="none"):
    m = compute_metrics(t, correction, n_resamples=50)
    return m, weak_detector_warnings(m)


def plain(label, u):  # complexity unrelated to the labels: the baseline near 0.5
    return u + 0.5


def test_an_anti_correlated_score_warns_below_chance_naming_both_numbers_and_what_to_try():
    t = table(lambda y, e: e - 1.5 * y, plain)  # anomalies score lower: AUROC well below 0.5
    m, lines = weak(t)
    val = t["split"] == "val"
    want = auroc(t["score"][val], t["label"][val])
    assert want < 0.3 and abs(m["val"]["auroc"] - want) < 1e-6
    base = m["versus_complexity_baseline"]["val"]["auroc_complexity_only"]
    assert len(lines) == 1 and lines[0].startswith(f"{WEAK_PREFIX}{m['val']['auroc']:.4f} is below chance (0.5)")
    assert f"{base:.4f}" in lines[0]  # both numbers, whichever is the failure
    assert "mapping.correction=auto" in lines[0] and "trainer.max_epochs" in lines[0] and "\n" not in lines[0]
    # a run already complexity-corrected is not told to correct
    assert "mapping.correction=auto" not in weak(t, "complexity")[1][0]


def test_a_score_that_ranks_but_below_complexity_alone_warns_with_both_aurocs():
    # complexity separates perfectly (low = anomalous, the car case); the score only somewhat
    t = table(lambda y, e: e + 1.0 * y, lambda y, u: 1.0 + u - 1.5 * y)
    m, lines = weak(t)
    val = t["split"] == "val"
    base = auroc(-t["complexity"][val], t["label"][val])
    assert 0.5 < m["val"]["auroc"] < base
    assert len(lines) == 1 and "below chance" not in lines[0]
    assert f"{WEAK_PREFIX}{m['val']['auroc']:.4f} is below the complexity-only baseline's {base:.4f}" in lines[0]


def test_a_working_detector_and_a_validation_without_anomalies_warn_nothing():
    good = table(lambda y, e: e + 3.0 * y, plain)
    assert weak(good)[1] == []
    normals_only = table(lambda y, e: e + 3.0 * y, plain)
    normals_only["label"][normals_only["split"] == "val"] = 0
    m, lines = weak(normals_only)
    assert m["val"].get("auroc") is None and lines == []


def test_rereport_replaces_the_weak_line_and_keeps_the_calibrations(tmp_path):
    t = table(lambda y, e: e - 1.5 * y, plain)
    t["class_name"] = np.array(["n"] * len(t["score"]))
    write_csv(t, tmp_path / "scores.csv")
    old = compute_metrics(t, "none", n_resamples=50)
    old["warnings"] = ["threshold.target_fpr=0.001 is unreachable ...", f"{WEAK_PREFIX}0.1 is an old line"]
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    again = rereport(tmp_path)
    assert again["warnings"][0] == old["warnings"][0] and len(again["warnings"]) == 2
    assert again["warnings"][1] == weak_detector_warnings(again)[0] and "old line" not in again["warnings"][1]
