"""train.py end to end in a subprocess, on the tiny CIFAR folder."""

import csv
import json
import subprocess
import sys

from conftest import REPO, tiny_overrides


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
    for name in ("histogram_test", "roc_pr_test", "reconstructions_normal", "reconstructions_anomalous"):
        assert (run / "figures" / f"{name}.png").is_file()
    assert (run / "gan" / "generator.pt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("epoch_*.png"))
    assert list((run / "tensorboard").glob("events.out.tfevents*"))
    info = json.loads((run / "run_info.json").read_text())
    assert info["versions"]["torch"] and (run / "config_resolved.yaml").is_file()
