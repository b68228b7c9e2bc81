"""compute_metrics and the score histogram on hand-built tables (no GAN)."""

import json
import math

import numpy as np
import pytest
import torch

from anogan.metrics.image import fit_thresholds
from anogan.metrics.stats import auroc
from anogan.reporting.figures import _figure_histogram
from anogan.reporting.report import add_p_values, compute_metrics, read_csv, rereport, write_csv
from anogan.utils.errors import CalibrationError, ThresholdRuleError


def make_table(val_scores, val_labels, test_scores, test_labels, seed=0):
    rng = np.random.default_rng(seed)
    score = np.r_[val_scores, test_scores].astype(np.float64)
    n = len(score)
    return {
        "id": np.arange(n),
        "split": np.array(["val"] * len(val_scores) + ["test"] * len(test_scores)),
        "label": np.r_[val_labels, test_labels].astype(np.int64),
        "score": score,
        "raw_score": score.copy(),
        "residual": score * 0.5,
        "discrimination": rng.random(n),
        "complexity": rng.random(n) + 0.5,
    }


def test_normal_only_metrics_on_a_hand_built_table():
    val = np.arange(1.0, 20.0)  # 19 normals: at a 10% target, at most 1 may reach the threshold
    test = np.array([0.5, 18.5, 19.5, 25.0])
    table = make_table(val, np.zeros(19), test, np.zeros(4))
    m = compute_metrics(table, "none", target_fpr=0.1)
    json.dumps(m, allow_nan=False)  # plain JSON: no numpy types, no NaN
    th = m["threshold"]
    assert th["rule"] == "fpr" and 18.0 < th["value"] == th["fpr"] < 18.0 + 1e-12
    assert th["f1"] is None and th["youden"] is None and m["val_at_f1"] is None and m["test_at_youden"] is None
    assert m["val"]["false_positive_rate"] == 1 / 19 and m["val"]["confusion_matrix"] == {"tn": 18, "fp": 1, "fn": 0, "tp": 0}
    assert m["test"]["false_positive_rate"] == 3 / 4  # 18.5, 19.5 and 25 are flagged
    for split in ("val", "test"):
        assert m[split]["auroc"] is None and m[split]["ap"] is None and m[split]["auroc_ci"] is None
        assert m[split]["note"] == "AUROC needs anomalous images"
    assert m["test_at_fpr"]["false_positive_rate"] == 3 / 4
    assert m["test_components_auroc"] == {} and m["random_baseline_interval"] is None
    assert m["versus_complexity_baseline"] == {}
    assert m["counts"] == {"val": {"normal": 19, "anomalous": 0}, "test": {"normal": 4, "anomalous": 0}}
    # p-values added to the table: (1 + #{val normals >= s}) / 20
    assert table["p_value"][19:].tolist() == [20 / 20, 2 / 20, 1 / 20, 1 / 20]
    assert table["p_value"][:19].tolist() == [(1 + 19 - i) / 20 for i in range(19)]
    assert ((table["p_value"] <= 0.1) == (table["score"] >= th["fpr"])).all()
    with pytest.raises(ThresholdRuleError, match="threshold=f1 needs anomalous validation images"):
        compute_metrics(table, "none", threshold_rule="f1")


def test_too_few_validation_normals_flag_nothing_and_say_so():
    table = make_table(np.arange(1.0, 11.0), np.zeros(10), np.array([100.0]), np.zeros(1))
    m = compute_metrics(table, "none", target_fpr=0.05)
    assert m["threshold"]["fpr"] == math.inf and m["test"]["false_positive_rate"] == 0.0
    assert "at least 19 are needed" in m["threshold"]["note"]


def test_no_validation_normal_is_refused():
    table = make_table(np.array([1.0, 2.0]), np.ones(2), np.array([1.0, 3.0]), np.array([0, 1]))
    with pytest.raises(CalibrationError, match="no normal validation image"):
        compute_metrics(table, "none")


def both_classes_table(seed=1):
    rng = np.random.default_rng(seed)
    y_val, y_test = (rng.random(300) < 0.3).astype(int), (rng.random(400) < 0.3).astype(int)
    return make_table(rng.normal(size=300) + 1.2 * y_val + 5, y_val, rng.normal(size=400) + 1.2 * y_test + 5, y_test, seed)


def test_metrics_with_anomalies_report_every_rule():
    table = both_classes_table()
    m = compute_metrics(table, "none", n_resamples=300)
    json.dumps(m, allow_nan=False)
    val, test = table["split"] == "val", table["split"] == "test"
    t = fit_thresholds(torch.from_numpy(table["score"][val]), torch.from_numpy(table["label"][val]))
    assert m["threshold"]["rule"] == "fpr" and m["threshold"]["value"] == t["fpr"]
    assert {m["threshold"][k] for k in ("fpr", "f1", "youden")} == {t["fpr"], t["f1"], t["youden"]}
    s, y = table["score"][test], table["label"][test]
    for rule in ("fpr", "f1", "youden"):
        block = m[f"test_at_{rule}"]
        flagged = s >= t[rule]
        assert block["threshold"] == t[rule]
        assert block["confusion_matrix"] == {
            "tn": int((~flagged & (y == 0)).sum()),
            "fp": int((flagged & (y == 0)).sum()),
            "fn": int((~flagged & (y == 1)).sum()),
            "tp": int((flagged & (y == 1)).sum()),
        }
        assert m[f"val_at_{rule}"]["threshold"] == t[rule]
    # the "test" block: ranking metrics, their intervals and the default rule's threshold metrics
    assert m["test"]["confusion_matrix"] == m["test_at_fpr"]["confusion_matrix"] and m["test"]["f1"] == m["test_at_fpr"]["f1"]
    assert abs(m["test"]["auroc"] - auroc(s, y)) < 1e-6 and m["val"]["auroc"] is not None
    for split in ("val", "test"):
        lo, hi = m[split]["auroc_ci"]
        assert lo < m[split]["auroc"] < hi and m[split]["ap_ci"][0] < m[split]["ap"] < m[split]["ap_ci"][1]
    c = m["test_components_auroc"]
    assert c["raw_score"] == m["test"]["auroc"] and c["random_baseline"] == 0.5
    n0, n1 = int((y == 0).sum()), int((y == 1).sum())
    half = 1.959964 * math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))
    interval = m["random_baseline_interval"]
    assert abs(interval[0] - (0.5 - half)) < 1e-6 and abs(interval[1] - (0.5 + half)) < 1e-6
    assert all(isinstance(v, float) for v in c.values())  # one number per component
    for key in ("primary_score", "correction", "counts"):
        assert key in m
    # the rule behind "test" is selectable
    by_youden = compute_metrics(table, "none", threshold_rule="youden", n_resamples=300)
    assert by_youden["threshold"]["rule"] == "youden" and by_youden["test"]["threshold"] == t["youden"]
    fixed = compute_metrics(table, "none", threshold_rule=5.5, n_resamples=300)
    assert fixed["threshold"]["rule"] == "number" and fixed["test"]["threshold"] == 5.5
    with pytest.raises(ThresholdRuleError, match="use fpr, f1, youden or a finite number"):
        compute_metrics(table, "none", threshold_rule="median")


def test_the_score_is_compared_with_the_complexity_baseline_on_the_same_images():
    """metrics.json says whether the score beats input complexity alone, per split, by DeLong's
    paired test; a score that is the baseline itself differs by exactly 0."""
    table = both_classes_table()
    val, test = table["split"] == "val", table["split"] == "test"
    rng = np.random.default_rng(5)
    # complexity low for anomalies (the car case): the baseline ranks by -complexity
    table["complexity"] = 1.0 + rng.random(len(table["score"])) - 0.4 * table["label"]
    m = compute_metrics(table, "none", n_resamples=100)
    versus = m["versus_complexity_baseline"]
    assert set(versus) == {"val", "test"} and m["complexity_baseline_direction"] == "low = anomalous"
    t = versus["test"]
    y = table["label"][test]
    assert abs(t["auroc"] - m["test"]["auroc"]) < 1e-6
    assert abs(t["auroc_complexity_only"] - m["test_components_auroc"]["complexity_baseline"]) < 1e-6
    assert abs(t["auroc_complexity_only"] - auroc(-table["complexity"][test], y)) < 1e-6
    assert abs(t["difference"] - (t["auroc"] - t["auroc_complexity_only"])) < 1e-12
    assert t["ci"][0] < t["difference"] < t["ci"][1] and 0 <= t["p_value"] <= 1
    # the baseline against itself: no difference, p = 1
    table["score"] = -table["complexity"]
    table.pop("p_value")
    same = compute_metrics(table, "none", n_resamples=100)["versus_complexity_baseline"]
    assert same["test"]["difference"] == 0.0 and same["test"]["p_value"] == 1.0 and same["val"]["difference"] == 0.0
    # validation without anomalies: only the test split is compared
    table["label"][val] = 0
    table.pop("p_value")
    assert set(compute_metrics(table, "none", n_resamples=100)["versus_complexity_baseline"]) == {"test"}


def test_rereport_keeps_the_runs_threshold_rule_and_what_scores_csv_cannot_give(tmp_path):
    """python -m anogan.reporting.report recomputes metrics.json from scores.csv with the run's own threshold
    rule and target, adds new metrics, and keeps keys it cannot recompute (pixel metrics, scorer file)."""
    table = both_classes_table()
    table["class_name"] = np.array(["n"] * len(table["score"]))
    write_csv(table, tmp_path / "scores.csv")
    saved = read_csv(tmp_path / "scores.csv")
    first = compute_metrics(saved, "none", target_fpr=0.1, threshold_rule="youden")
    del first["versus_complexity_baseline"]  # a metric this run was scored before
    kept = {"scorer_file": "scorer.pt", "pixel": {"auroc": 0.9}, "wall_time_s": {"total": 1.0}}
    (tmp_path / "metrics.json").write_text(json.dumps({**first, **kept}))
    again = rereport(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(again))
    assert again["threshold"]["rule"] == "youden" and again["threshold"]["fpr_target"] == 0.1
    assert again["threshold"] == first["threshold"] and again["test"] == first["test"]
    assert all(again[k] == v for k, v in kept.items()) and set(again["versus_complexity_baseline"]) == {"val", "test"}
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_a_p_value_column_in_the_table_is_kept():
    table = both_classes_table()
    table["p_value"] = np.full(len(table["score"]), 0.5)
    compute_metrics(table, "none", n_resamples=100)
    assert (table["p_value"] == 0.5).all()
    add_p_values(table)  # recomputes from the validation normals
    cal = np.sort(table["score"][(table["split"] == "val") & (table["label"] == 0)])
    assert table["p_value"][0] == (1 + (cal >= table["score"][0]).sum()) / (len(cal) + 1)


def test_histogram_clips_to_the_bulk_counts_the_tail_and_draws_every_rule():
    table = both_classes_table()
    table["score"][-3:] = [1e5, 2e5, -1e5]  # three far test scores
    m = compute_metrics(table, "none", n_resamples=100)
    fig = _figure_histogram(table, m["threshold"], "test", "raw_score")
    ax = fig.axes[0]
    s = table["score"][table["split"] == "test"]
    lo, hi = np.percentile(s, [0.5, 99.5])
    assert ax.get_xlim() == (lo, hi) and hi < 1e3
    beyond = int((s < lo).sum() + (s > hi).sum())
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"{beyond} beyond the axis" in " ".join(texts) and beyond >= 3
    for rule in ("fpr", "f1", "youden"):
        assert any(t.startswith(f"{rule} threshold {m['threshold'][rule]:.4g}") for t in texts), texts
    assert sum(t.endswith(", used") for t in texts) == 1
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata()) == 2]
    assert len(dashed) == sum(lo <= m["threshold"][r] <= hi for r in ("fpr", "f1", "youden"))
    # normal-only: one histogram, the fpr line alone
    normal_only = make_table(np.arange(1.0, 41.0), np.zeros(40), np.arange(1.0, 21.0), np.zeros(20))
    mo = compute_metrics(normal_only, "none")
    fig = _figure_histogram(normal_only, mo["threshold"], "val", "raw_score")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[0] == "normal (40)" and not any("anomalous" in t or "f1 threshold" in t for t in texts)


def test_the_report_modules_select_no_matplotlib_backend(monkeypatch, tmp_path):
    """Importing the report and drawing its figures leaves the backend alone (a notebook keeps
    showing its own figures inline): no ``matplotlib.use``, figures not registered with pyplot."""
    import importlib

    import matplotlib

    import anogan.reporting.figures
    import anogan.reporting.report

    def refuse(*args, **kwargs):
        raise AssertionError(f"matplotlib.use{args} called")

    monkeypatch.setattr(matplotlib, "use", refuse)
    importlib.reload(anogan.reporting.figures)
    importlib.reload(anogan.reporting.report)
    table = both_classes_table()
    m = compute_metrics(table, "none", n_resamples=100)
    fig = anogan.reporting.figures._figure_histogram(table, m["threshold"], "test", "raw_score")
    assert fig.canvas.manager is None  # not a pyplot figure: nothing to close, no window
    anogan.reporting.figures.write_score_figures(table, m, tmp_path / "figures")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "components_test.png",
        "histogram_test.png",
        "histogram_val.png",
        "roc_pr_test.png",
    ]
