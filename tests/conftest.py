"""Shared fixtures: a tiny CIFAR-10 folder in torchvision's exact on-disk layout, so the real
loading code runs, and helpers to compose the project's real Hydra configs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import anogan.config.schema  # noqa: F401  (registers the config schemas in Hydra's ConfigStore)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
REPO = Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS_PER_BATCH = 4  # 5 batches -> 20 training images per class, 200 in all
TEST_PER_CLASS = 10  # 100 test images


# Trainer arguments for in-process scoring in tests: one CPU, fp32, quiet.
CPU = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False, "precision": "32-true"}


def write_tiny_cifar(root: Path, seed: int = 0) -> Path:
    """CIFAR-10 pickles with class-dependent images (class c has mean brightness ~ c)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(per_class: int, name: str) -> dict:
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        base = (labels[:, None] * 20 + 30).astype(np.float64)
        data = np.clip(base + rng.normal(0, 25, (len(labels), 3072)), 0, 255).astype(np.uint8)
        return {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": data,
            "filenames": [f"{i}.png" for i in range(len(labels))],
        }

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(TRAIN_PER_CLASS_PER_BATCH, f"training batch {i} of 5"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(TEST_PER_CLASS, "testing batch 1 of 1"), f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 40, "num_vis": 3072}, f)
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"))


def tiny_overrides(root: Path, out: Path | None = None, mapping: str = "latent") -> list[str]:
    """Overrides that make any experiment run in seconds on the tiny data, with the scorer
    ``mapping`` (its own keys only: each scorer's config holds only what it reads)."""
    o = [
        f"data.root={root}",
        "data.verify_checksums=false",
        "data.download=false",
        "data.image_size=32",
        "data.batch_size=16",
        "data.val_subset=null",
        "data.test_subset=null",
        "model.latent_dim=16",
        "model.g_width=8",
        "model.d_width=8",
        "trainer.max_epochs=1",
        "trainer.precision=32",  # exactness tests compare fp32 scores, whatever the default precision
        "trainer.enable_progress_bar=false",
        "trainer.limit_train_batches=2",
        "mapping.batch_size=32",
    ]
    o += {
        "latent": ["mapping.iterations=3"],
        "encoder": ["mapping=encoder", "mapping.epochs=2"],
        "encoder_search": ["mapping=encoder_search", "mapping.encoder.epochs=1", "mapping.iterations=2"],
        "transformations": ["model.self_supervised=rotations", "mapping=transformations"],
        "dfeatures": ["mapping=dfeatures", "mapping.bank_size=20", "mapping.patch_bank_size=200"],
        "dlogit": ["model.nda='jigsaw,cutout,rotation'", "mapping=dlogit"],
        "dcombined": [
            "model.self_supervised=rotations",
            "mapping=dcombined",
            "mapping.bank_size=20",
            "mapping.patch_bank_size=200",
        ],
    }[mapping]
    if out is not None:
        o += [f"paths.log_dir={out}", f"hydra.run.dir={out}/run"]
    return o


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def run_train(overrides: list[str], check: bool = True):
    """``python train.py <overrides>`` in a subprocess (for exit codes, messages and DDP)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides], capture_output=True, text=True, cwd=REPO, timeout=900
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train_in_process(overrides: list[str]):
    """The real config composed with ``overrides`` and run in this process (``anogan.engine.pipeline.run``),
    as ``python train.py`` would, minus the interpreter start: returns its ``RunResult`` (None for plan=true)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from anogan.engine.pipeline import run

    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.run.dir).resolve())
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return run(cfg)


def read_scores(run: Path):
    """scores.csv rows, checked to hold exactly one row per evaluation image of the manifest."""
    import csv
    import json

    manifest = json.loads((run / "splits.json").read_text())
    n_eval = manifest["splits"]["val"]["size"] + manifest["splits"]["test"]["size"]
    with open(run / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_eval
    assert sorted(int(r["id"]) for r in rows if r["split"] == "test") == sorted(manifest["splits"]["test"]["ids"])
    return rows, manifest


def brute_force_auroc(scores, labels) -> float:
    """AUROC by counting every (anomalous, normal) pair: 1 when the anomaly scores higher, 1/2 on a tie."""
    import itertools

    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.fixture(scope="session")
def fitted_run(tiny_cifar, tmp_path_factory):
    """A tiny complexity-corrected run made by ``anogan.fit`` (the Python API), shared by the API,
    server and notebook tests: ``anogan.deploy.api.TrainResult`` (``run_dir``, ``metrics``, ``objective``)."""
    import anogan

    out = tmp_path_factory.mktemp("fitted_run")
    overrides = [o for o in tiny_overrides(tiny_cifar, out) if not o.startswith("hydra.run.dir")]
    return anogan.fit([*overrides, "mapping.correction=complexity"], run_dir=out / "run")


def small_nets(latent: int = 16, size: int = 32, width: int = 8, transform_classes: int = 0):
    """A small G and D (D with a transformation head when ``transform_classes``) whose BatchNorm
    running statistics are exact averages over a few batches of G's images, in eval mode: G then
    makes varied images, as a trained one does."""
    import torch

    from anogan.models.dcgan import Discriminator, Generator

    torch.manual_seed(0)
    g, d = Generator(latent, 3, size, width), Discriminator(3, size, width, transform_classes=transform_classes)
    for m in list(g.modules()) + list(d.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    g.train(), d.train()
    with torch.no_grad():
        for _ in range(3):
            d(g(torch.randn(64, latent, 1, 1)))
    return g.eval(), d.eval()


def random_split(n: int = 10, seed: int = 1):
    """An ``AnomalySplit`` of ``n`` random 32 px colour images, all normal."""
    import torch

    from anogan.data.splits import AnomalySplit

    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    return AnomalySplit(images, np.zeros(n, dtype=np.int64), np.arange(n), 0)
