"""Paired comparison of two runs: DeLong against brute force, paired bootstrap, the command."""

import csv
import json

import numpy as np
import pytest

from anogan.metrics.compare import join_runs, main, read_split_scores
from anogan.metrics.stats import auroc, delong, delong_components, paired_bootstrap
from anogan.utils.errors import CompareError


def brute_force_delong(a, b, y):
    """DeLong et al. (1988) with the O(n0·n1) structural components."""
    out = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        out.append((psi.mean(), psi.mean(1), psi.mean(0)))
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = out
    m, n = len(v10_a), len(v01_a)
    s10, s01 = np.cov(np.stack([v10_a, v10_b])), np.cov(np.stack([v01_a, v01_b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc_a, auc_b, np.sqrt(var), (v10_a, v01_a)


def test_delong_matches_the_brute_force_structural_components():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(8, 80))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        if trial % 2:  # ties within and across classes
            a, b = rng.integers(0, 5, n).astype(float), rng.integers(0, 5, n).astype(float)
        else:
            a = rng.normal(size=n) + y
            b = 0.6 * a + rng.normal(size=n)  # correlated scorers, as two runs on the same images are
        got = delong(a, b, y)
        auc_a, auc_b, se, (v10, v01) = brute_force_delong(a, b, y)
        assert abs(got["auroc_a"] - auc_a) < 1e-12 and abs(got["auroc_b"] - auc_b) < 1e-12
        assert abs(got["se"] - se) < 1e-12
        _, fast_v10, fast_v01 = delong_components(a, y)
        assert np.allclose(fast_v10, v10, atol=1e-12) and np.allclose(fast_v01, v01, atol=1e-12)
        if se > 0:
            assert abs(got["z"] - (auc_a - auc_b) / se) < 1e-9


def test_delong_on_identical_and_on_clearly_different_scorers():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(200), np.ones(100)]
    good = rng.normal(size=300) + 2 * y
    same = delong(good, good, y)
    assert same["difference"] == 0 and same["p_value"] == 1.0 and not same["significant"]
    bad = rng.normal(size=300) + 0.2 * y
    diff = delong(good, bad, y)
    assert diff["significant"] and diff["p_value"] < 1e-6 and diff["ci"][0] > 0


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(200), np.ones(100)]
    a = rng.normal(size=300) + 1.0 * y
    b = a + rng.normal(size=300) * 0.8  # a noisier copy: lower AUROC, strongly paired
    r = paired_bootstrap(a, b, y, n_resamples=1000, seed=0)
    assert r == paired_bootstrap(a, b, y, n_resamples=1000, seed=0)  # seeded
    assert r["auroc_a"] == auroc(a, y) and r["difference"] == r["auroc_a"] - r["auroc_b"]
    lo, hi = r["ci"]
    assert lo < r["difference"] < hi
    # its spread agrees with DeLong's standard error (both estimate the same sampling variance)
    dl = delong(a, b, y)
    assert abs((hi - lo) / (2 * 1.96) / dl["se"] - 1) < 0.2
    assert r["significant"] == (r["p_value"] < 0.05)
    # away from the 0.05 boundary the p-value and the percentile interval agree, both ways
    far = paired_bootstrap(a, a + np.random.default_rng(3).normal(size=300) * 2.0, y, n_resamples=1000, seed=0)
    near = paired_bootstrap(a, a + np.random.default_rng(4).normal(size=300) * 0.05, y, n_resamples=1000, seed=0)
    assert far["p_value"] < 0.01 and far["significant"] and far["ci"][0] > 0
    assert near["p_value"] > 0.1 and not near["significant"] and near["ci"][0] < 0 < near["ci"][1]
    same = paired_bootstrap(a, a, y, n_resamples=200)
    assert same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0 and not same["significant"]
    clear = paired_bootstrap(a, rng.normal(size=300), y, n_resamples=500)
    assert clear["significant"] and clear["p_value"] == 2 / 501  # no resample reaches 0


def write_scores(folder, ids, labels, scores, splits=None):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "source", "split", "label", "score", "raw_score"])
        for i, (k, y, s) in enumerate(zip(ids, labels, scores)):
            w.writerow([k, "cifar10_test", (splits[i] if splits else "test"), y, repr(float(s)), 0.0])


def test_compare_command(tmp_path, capsys):
    rng = np.random.default_rng(3)
    ids = np.arange(120)
    y = (ids % 3 == 0).astype(int)
    a, b = rng.normal(size=120) + 1.5 * y, rng.normal(size=120) + 0.5 * y
    write_scores(tmp_path / "a", ids, y, a)
    order = rng.permutation(120)  # another row order: joined on id
    write_scores(tmp_path / "b", ids[order], y[order], b[order])
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--n-resamples", "500"]) == 0
    out = capsys.readouterr().out
    body, sentence = out.rsplit("}\n", 1)
    result = json.loads(body + "}")
    boot = result["paired_bootstrap"]
    assert result["images"] == 120 and result["anomalous"] == 40
    assert abs(boot["auroc_a"] - auroc(a, y)) < 1e-12 and abs(boot["auroc_b"] - auroc(b, y)) < 1e-12
    start = f"run A's AUROC {auroc(a, y):.3f} vs run B's {auroc(b, y):.3f}: difference {boot['difference']:+.3f}, 95% CI ["
    assert sentence.startswith(start)
    assert ("not significant at 0.05" in sentence) == (not boot["significant"])
    # other images: refused with one line and exit status 2
    write_scores(tmp_path / "c", ids[:-1], y[:-1], b[:-1])
    assert main([str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scored different test images (1 only in" in err
    assert main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "has no scores.csv" in capsys.readouterr().err


def test_compare_ignores_validation_rows(tmp_path, capsys):
    ids = np.arange(40)
    y = (ids % 2).astype(int)
    splits = ["val" if i < 10 else "test" for i in ids]
    write_scores(tmp_path / "a", ids, y, np.arange(40.0), splits)
    write_scores(tmp_path / "b", ids[5:], y[5:], np.arange(35.0), splits[5:])  # differs only in val rows
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--n-resamples", "100"]) == 0
    assert json.loads(capsys.readouterr().out.rsplit("}\n", 1)[0] + "}")["images"] == 30


def test_compare_on_validation_uses_only_the_validation_rows(tmp_path, capsys):
    """--split val: the rows a setting may be chosen on; the test rows (here reversed in run b) do not count."""
    ids = np.arange(60)
    y = (ids % 2).astype(int)
    splits = ["val" if i < 20 else "test" for i in ids]
    a = np.where(y == 1, 1.0, 0.0) + ids * 1e-3  # perfect on both splits
    b = np.where(ids < 20, a, -a)  # perfect on val, inverted on test
    write_scores(tmp_path / "a", ids, y, a, splits)
    write_scores(tmp_path / "b", ids, y, b, splits)
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--split", "val", "--n-resamples", "100"]) == 0
    result = json.loads(capsys.readouterr().out.rsplit("}\n", 1)[0] + "}")
    assert result["split"] == "val" and result["images"] == 20
    assert result["paired_bootstrap"]["auroc_a"] == result["paired_bootstrap"]["auroc_b"] == 1.0
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--n-resamples", "100"]) == 0
    result = json.loads(capsys.readouterr().out.rsplit("}\n", 1)[0] + "}")
    assert result["split"] == "test" and result["paired_bootstrap"]["auroc_b"] == 0.0


def test_join_runs_pairs_rows_by_id_and_refuses_what_cannot_be_paired(tmp_path):
    ids = np.array([7, 3, 5, 1])
    y = np.array([1, 0, 1, 0])
    write_scores(tmp_path / "a", ids, y, [0.7, 0.3, 0.1 + 0.2, 0.1])
    write_scores(tmp_path / "b", ids[::-1], y[::-1], [1.0, 5.0, 3.0, 7.0])  # scores equal to the ids, other row order
    got_ids, labels, a, b = join_runs(tmp_path / "a", tmp_path / "b")
    assert got_ids.tolist() == [1, 3, 5, 7] and labels.tolist() == [0, 0, 1, 1]
    assert a.tolist() == [0.1, 0.3, 0.1 + 0.2, 0.7] and b.tolist() == [1.0, 3.0, 5.0, 7.0]  # repr(float) read back exactly
    assert got_ids.dtype == labels.dtype == np.int64 and a.dtype == b.dtype == np.float64
    write_scores(tmp_path / "relabelled", ids, 1 - y, [0.0] * 4)
    with pytest.raises(CompareError, match=r"^the runs label 4 test image\(s\) differently \(first id 1\): not the same data$"):
        join_runs(tmp_path / "a", tmp_path / "relabelled")
    write_scores(tmp_path / "twice", [1, 3, 1], [0, 0, 0], [0.0] * 3)
    with pytest.raises(CompareError, match="lists the test image id 1 twice"):
        read_split_scores(tmp_path / "twice")
    with pytest.raises(CompareError, match="has no val rows"):
        read_split_scores(tmp_path / "a", "val")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "scores.csv").write_text("id,split\n1,test\n")
    with pytest.raises(CompareError, match="lacks the column"):
        read_split_scores(tmp_path / "bare")
