"""The folder DataModule (data=folder): your own images, split like CIFAR-10's."""

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from anogan.data.cifar10 import DataError
from anogan.data.folder import FolderAnomalyDataModule
from conftest import compose_config


def _write(folder, n, brightness, size=40, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(brightness + start)
    for i in range(start, start + n):
        pixels = np.clip(brightness + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")


@pytest.fixture
def image_root(tmp_path):
    _write(tmp_path / "normal", 20, 60)
    _write(tmp_path / "normal" / "more", 5, 60, start=20)  # searched recursively
    _write(tmp_path / "abnormal" / "crack", 6, 200)
    _write(tmp_path / "abnormal" / "scratch", 6, 140, size=24)
    (tmp_path / "normal" / "broken.png").write_bytes(b"not a png")
    return tmp_path


def test_folder_splits_are_disjoint_seeded_and_labelled(image_root, tmp_path):
    cfg = compose_config(["data=folder", f"data.root={image_root}", "data.image_size=32", "data.abnormal_dir=[abnormal/crack,abnormal/scratch]"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    m = dm.manifest
    s = m["splits"]
    assert s["train"]["size"] == 20 and s["train"]["anomalous"] == 0  # 25 readable normals, 20% held out
    assert s["val"]["size"] + s["test"]["size"] == 5 + 12
    assert s["val"]["normal"] >= 1 and s["val"]["anomalous"] >= 1 and s["test"]["normal"] >= 1 and s["test"]["anomalous"] >= 1
    assert s["val"]["class_counts"]["abnormal/crack"] == 3 and s["test"]["class_counts"]["abnormal/scratch"] == 3  # stratified
    ids = [set(s[k]["ids"]) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert [x["file"].rsplit("/", 1)[-1] for x in m["skipped"]] == ["broken.png"]
    assert dm.train_set.images.dtype == torch.uint8 and tuple(dm.train_set.images.shape[1:]) == (3, 32, 32)
    assert len(dm.eval_set) == len(dm.eval_split) == 17 and set(dm.eval_split) == {"val", "test"}
    labels = dm.eval_set.labels.numpy()
    files = [m["files"][i] for i in dm.eval_set.ids.tolist()]
    assert all((lab == 1) == f.startswith("abnormal/") for lab, f in zip(labels, files))
    item = dm.eval_set[0]
    assert set(item) == {"image", "label", "id", "row", "key"} and -1 <= item["image"].min() <= item["image"].max() <= 1
    assert next(iter(dm.train_dataloader()))["image"].shape[1:] == (3, 32, 32)
    json.loads(dm.write_manifest(tmp_path).read_text())

    again = FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir=["abnormal/crack", "abnormal/scratch"])
    again.setup()
    assert again.manifest["splits"] == m["splits"]
    other = FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir=["abnormal/crack", "abnormal/scratch"], split_seed=1)
    other.setup()
    assert other.manifest["splits"]["val"]["ids"] != m["splits"]["val"]["ids"]


def test_folder_with_a_normal_test_dir_trains_on_every_normal_image(image_root):
    _write(image_root / "good_test", 4, 60, start=50)
    dm = FolderAnomalyDataModule(root=str(image_root), image_size=32, channels=1, normal_test_dir="good_test")
    dm.setup()
    s = dm.manifest["splits"]
    assert s["train"]["size"] == 25 and s["val"]["normal"] + s["test"]["normal"] == 4
    assert tuple(dm.eval_set.images.shape[1:]) == (1, 32, 32)


def test_folder_errors_say_what_to_fix(image_root):
    with pytest.raises(DataError, match="is not a folder"):
        FolderAnomalyDataModule(root=str(image_root), abnormal_dir="missing").prepare_data()
    with pytest.raises(DataError, match="only normal"):  # too few evaluation images for both splits
        FolderAnomalyDataModule(root=str(image_root), image_size=32, abnormal_dir="abnormal/crack", val_subset=1).setup()


def test_train_py_runs_on_a_folder_of_images(image_root, tmp_path):
    import csv

    from test_train_e2e import run_train

    overrides = [
        "data=folder", f"data.root={image_root}", "data.image_size=32", "data.batch_size=8",
        "model.latent_dim=8", "model.g_width=8", "model.d_width=8", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "mapping.iterations=2", f"paths.log_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}/run",
    ]
    run_train(overrides)
    with open(tmp_path / "run" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    manifest = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert len(rows) == manifest["splits"]["val"]["size"] + manifest["splits"]["test"]["size"]
    assert all(r["source"].endswith(".png") for r in rows)
    assert {r["class_name"] for r in rows} == {"normal", "abnormal"}
