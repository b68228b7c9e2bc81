"""train.py end to end in a subprocess, on the tiny CIFAR folder."""

import csv
import json
import subprocess
import sys

from conftest import REPO, tiny_overrides
from test_metrics import brute_force_auroc


def run_train(overrides, check=True):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_scores(run):
    """scores.csv rows, checked to hold exactly one row per evaluation image of the manifest."""
    manifest = json.loads((run / "splits.json").read_text())
    n_eval = manifest["splits"]["val"]["size"] + manifest["splits"]["test"]["size"]
    with open(run / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_eval
    assert {r["split"] for r in rows} == {"val", "test"}
    assert sorted(int(r["id"]) for r in rows if r["split"] == "test") == sorted(manifest["splits"]["test"]["ids"])
    return rows, manifest


def test_train_end_to_end(tiny_cifar, tmp_path):
    run_train(tiny_overrides(tiny_cifar, tmp_path))
    run = tmp_path / "run"
    rows, manifest = read_scores(run)
    n_eval = len(rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0 and metrics["images_scored"] == n_eval
    assert metrics["counts"]["test"]["normal"] == manifest["splits"]["test"]["normal"]
    for name in ("histogram_test", "roc_pr_test", "components_test", "reconstructions_normal", "reconstructions_anomalous"):
        assert (run / "figures" / f"{name}.png").is_file()
    assert (run / "gan" / "generator.pt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("epoch_*.png"))
    assert list((run / "tensorboard").glob("events.out.tfevents*"))
    info = json.loads((run / "run_info.json").read_text())
    assert info["versions"]["torch"] and (run / "config_resolved.yaml").is_file()
    assert metrics["primary_score"] == "raw_score"
    assert metrics["test"]["auroc"] == metrics["test_components_auroc"]["raw_score"]


def test_complexity_correction_is_the_primary_score_and_the_raw_one_is_kept(tiny_cifar, tmp_path):
    run_train([*tiny_overrides(tiny_cifar, tmp_path), "mapping.correction=complexity"])
    run = tmp_path / "run"
    rows, _ = read_scores(run)
    for r in rows:
        raw, c = float(r["raw_score"]), float(r["complexity"])
        assert abs(float(r["score"]) - raw / c) <= 1e-6 * float(r["score"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["primary_score"] == "complexity_corrected"
    components = metrics["test_components_auroc"]
    assert metrics["test"]["auroc"] == components["complexity_corrected"]
    test = [r for r in rows if r["split"] == "test"]
    labels = [int(r["label"]) for r in test]
    assert abs(components["raw_score"] - brute_force_auroc([float(r["raw_score"]) for r in test], labels)) < 1e-6

    # python -m anogan.report rebuilds the same metrics from scores.csv alone
    (run / "figures" / "components_test.png").unlink()
    proc = subprocess.run([sys.executable, "-m", "anogan.report", str(run)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((run / "metrics.json").read_text())
    assert again["wall_time_s"] == metrics["wall_time_s"] and again["primary_score"] == "complexity_corrected"
    for key in ("auroc", "ap", "f1"):
        assert abs(again["test"][key] - metrics["test"][key]) < 1e-6
    for key, value in components.items():
        assert abs(again["test_components_auroc"][key] - value) < 1e-6, key
    assert (run / "figures" / "components_test.png").is_file()


def test_auto_correction_is_chosen_on_validation_only(tiny_cifar, tmp_path):
    run_train([*tiny_overrides(tiny_cifar, tmp_path), "mapping.correction=auto"])
    run = tmp_path / "run"
    rows, _ = read_scores(run)
    val = [r for r in rows if r["split"] == "val"]
    labels = [int(r["label"]) for r in val]
    raw = brute_force_auroc([float(r["raw_score"]) for r in val], labels)
    corrected = brute_force_auroc([float(r["raw_score"]) / float(r["complexity"]) for r in val], labels)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["correction"] == ("complexity" if corrected > raw else "none")
    key = "complexity_corrected" if corrected > raw else "raw_score"
    assert metrics["primary_score"] == key and metrics["test"]["auroc"] == metrics["test_components_auroc"][key]
