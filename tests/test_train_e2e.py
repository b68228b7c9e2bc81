"""train.py end to end in a subprocess, on the tiny CIFAR folder."""

import json
import subprocess
import sys

from conftest import REPO, brute_force_auroc, read_scores, run_train, tiny_overrides, train_in_process


def test_train_end_to_end(tiny_cifar, tmp_path):
    run_train(tiny_overrides(tiny_cifar, tmp_path))
    run = tmp_path / "run"
    rows, manifest = read_scores(run)
    n_eval = len(rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images_scored"] == n_eval
    test = [r for r in rows if r["split"] == "test"]
    labels = [int(r["label"]) for r in test]
    assert abs(metrics["test"]["auroc"] - brute_force_auroc([float(r["score"]) for r in test], labels)) < 1e-6
    low, high = metrics["test"]["auroc_ci"]
    assert low <= metrics["test"]["auroc"] <= high and low < high
    assert metrics["counts"]["test"]["normal"] == manifest["splits"]["test"]["normal"]
    # the label column follows the run's threshold rule; p-values against the validation normals
    t = metrics["threshold"][metrics["threshold"]["rule"]]
    assert all(int(r["prediction"]) == int(float(r["score"]) >= t) for r in rows)
    normals = sorted(float(r["score"]) for r in rows if r["split"] == "val" and r["label"] == "0")
    for r in test[:10]:
        want = (1 + sum(v >= float(r["score"]) for v in normals)) / (len(normals) + 1)
        assert abs(float(r["p_value"]) - want) < 1e-9
    assert (run / "scorer.pt").is_file() and metrics["scorer_file"] == "scorer.pt"
    for name in ("histogram_test", "roc_pr_test", "components_test", "examples_most_anomalous", "examples_least_anomalous"):
        assert (run / "figures" / f"{name}.png").is_file()
    assert (run / "gan" / "generator.pt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("epoch_*.png"))
    assert list((run / "tensorboard").glob("events.out.tfevents*"))
    info = json.loads((run / "run_info.json").read_text())
    assert info["versions"]["torch"] and (run / "config_resolved.yaml").is_file()
    assert metrics["primary_score"] == "raw_score"
    assert metrics["test"]["auroc"] == metrics["test_components_auroc"]["raw_score"]


def test_complexity_correction_is_the_primary_score_and_the_raw_one_is_kept(tiny_cifar, tmp_path):
    train_in_process([*tiny_overrides(tiny_cifar, tmp_path), "mapping.correction=complexity"])
    run = tmp_path / "run"
    rows, _ = read_scores(run)
    for r in rows:
        raw, c = float(r["raw_score"]), float(r["complexity"])
        assert abs(float(r["score"]) - raw / c) <= 1e-6 * float(r["score"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["primary_score"] == "complexity_corrected"
    cpu = metrics["cpu_time_s"]  # CPU seconds of the same phases as the wall times
    assert set(cpu) == set(metrics["wall_time_s"]) == {"gan", "scoring", "total"}
    assert all(v >= 0 for v in cpu.values()) and cpu["total"] > 0 and cpu["total"] >= cpu["gan"]
    components = metrics["test_components_auroc"]
    assert metrics["test"]["auroc"] == components["complexity_corrected"]
    test = [r for r in rows if r["split"] == "test"]
    labels = [int(r["label"]) for r in test]
    assert abs(components["raw_score"] - brute_force_auroc([float(r["raw_score"]) for r in test], labels)) < 1e-6

    # python -m anogan.reporting.report rebuilds the same metrics from scores.csv alone
    (run / "figures" / "components_test.png").unlink()
    proc = subprocess.run([sys.executable, "-m", "anogan.reporting.report", str(run)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((run / "metrics.json").read_text())
    assert again["wall_time_s"] == metrics["wall_time_s"] and again["cpu_time_s"] == cpu
    assert again["primary_score"] == "complexity_corrected"
    for key in ("auroc", "ap", "f1"):
        assert abs(again["test"][key] - metrics["test"][key]) < 1e-6
    for key, value in components.items():
        assert abs(again["test_components_auroc"][key] - value) < 1e-6, key
    assert (run / "figures" / "components_test.png").is_file()


def test_auto_correction_is_chosen_on_validation_only(tiny_cifar, tmp_path):
    train_in_process([*tiny_overrides(tiny_cifar, tmp_path), "mapping.correction=auto"])
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
