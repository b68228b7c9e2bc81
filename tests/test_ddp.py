"""Both stages under DDP with two CPU processes (gloo), through train.py in a subprocess: Lightning
starts the second process by re-running train.py, which cannot happen inside pytest's process."""

import csv
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from anogan.data.cifar10 import CIFAR10AnomalyDataModule
from anogan.utils.errors import DataError
from conftest import REPO, tiny_overrides

DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
# 20 validation + 51 test images: an odd count, so the DistributedSampler pads one rank with a repeat
SMALL_EVAL = ["data.test_subset=51", "mapping.iterations=20", "mapping.batch_size=8"]


def run_train(overrides):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def read_scores(run_dir):
    with open(run_dir / "scores.csv") as f:
        return list(csv.DictReader(f))


def eval_ids(run_dir):
    splits = json.loads((run_dir / "splits.json").read_text())["splits"]
    return splits["val"]["ids"] + splits["test"]["ids"]


@pytest.fixture(scope="module")
def ddp_run(tiny_cifar, tmp_path_factory):
    """GAN fit + scoring with two processes (GAN cache on: rank 0 locks, trains with rank 1, publishes)."""
    out = tmp_path_factory.mktemp("ddp")
    run_train(tiny_overrides(tiny_cifar, out) + SMALL_EVAL + DDP)
    return out


def test_train_dataloader_splits_the_global_batch(tiny_cifar):
    dm = CIFAR10AnomalyDataModule(root=str(tiny_cifar), download=False, verify_checksums=False, image_size=32, batch_size=16)
    dm.setup("fit")
    assert dm.train_dataloader().batch_size == 16  # no trainer: one process
    dm.trainer = SimpleNamespace(world_size=2)
    loader = dm.train_dataloader()
    assert loader.batch_size == 8 and loader.drop_last  # 18 images > global batch 16
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(DataError, match="multiple of 3"):
        dm.train_dataloader()


@pytest.mark.slow
def test_ddp_fit_and_score(ddp_run):
    run = ddp_run / "run"
    ids = eval_ids(run)
    assert len(ids) % 2 == 1  # not divisible by the 2 processes
    assert (run / "train_ddp_process_1.log").is_file()  # the second process ran, in the same run folder
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "gan" / "generator.pt").is_file()
    assert list((run / "samples").glob("epoch_*.png"))
    cached = [p for p in (ddp_run / "gan_cache").iterdir() if p.is_dir()]
    assert len(cached) == 1 and (cached[0] / "gan.json").is_file()  # published once, no temp folders left
    rows = read_scores(run)
    assert sorted(int(r["id"]) for r in rows) == sorted(ids)  # every image exactly once
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images_scored"] == len(ids)
    command = json.loads((run / "run_info.json").read_text())["command"]
    assert not any("train_ddp_process" in arg for arg in command)  # written by rank 0, not rank 1


@pytest.mark.slow
def test_ddp_scores_equal_single_process(ddp_run, tiny_cifar, tmp_path):
    given = [f"gan.checkpoint={ddp_run / 'run'}"]
    run_train(tiny_overrides(tiny_cifar, tmp_path / "one") + SMALL_EVAL + given)
    run_train(tiny_overrides(tiny_cifar, tmp_path / "two") + SMALL_EVAL + given + DDP)
    one = {r["id"]: r for r in read_scores(tmp_path / "one" / "run")}
    two = {r["id"]: r for r in read_scores(tmp_path / "two" / "run")}
    assert len(two) == len(read_scores(tmp_path / "two" / "run")) and one.keys() == two.keys()
    for key, row in one.items():
        for column in ("score", "residual", "discrimination"):
            assert float(two[key][column]) == pytest.approx(float(row[column]), rel=1e-5), (key, column)
        assert two[key]["split"] == row["split"]
    m1 = json.loads((tmp_path / "one" / "run" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "run" / "metrics.json").read_text())
    for split in ("val", "test"):
        for name in ("auroc", "ap", "f1"):
            assert m2[split][name] == pytest.approx(m1[split][name], rel=1e-5)
