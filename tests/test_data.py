import json

import numpy as np
import pytest
import torch

from anogan.data import CIFAR10AnomalyDataModule, class_index, stratified_subset
from anogan.utils.errors import DataError
from conftest import TEST_PER_CLASS, TRAIN_PER_CLASS_PER_BATCH

TRAIN_PER_CLASS = 5 * TRAIN_PER_CLASS_PER_BATCH  # 20


def make(root, **kw):
    dm = CIFAR10AnomalyDataModule(root=str(root), download=False, verify_checksums=False, image_size=32, **kw)
    dm.setup()
    return dm


def split_ids(dm):
    s = dm.manifest["splits"]
    return {k: set(v["ids"]) for k, v in s.items()}


def test_one_class_protocol_sizes_and_counts(tiny_cifar):
    dm = make(tiny_cifar, protocol="one_class", normal_class=1, val_fraction=0.1, val_anomaly_ratio=9.0)
    s = dm.manifest["splits"]
    assert s["train"]["size"] == TRAIN_PER_CLASS - 2 and s["train"]["anomalous"] == 0
    assert s["train"]["class_counts"]["automobile"] == 18
    assert s["val"]["normal"] == 2 and s["val"]["anomalous"] == 18
    assert all(s["val"]["class_counts"][c] == 2 for c in s["val"]["class_counts"])  # stratified
    assert s["test"]["size"] == 10 * TEST_PER_CLASS
    assert s["test"]["normal"] == TEST_PER_CLASS and s["test"]["anomalous"] == 9 * TEST_PER_CLASS
    ids = split_ids(dm)
    assert all(i >= 50_000 for i in ids["test"])  # the CIFAR-10 test set, offset ids
    assert not ids["train"] & ids["val"] and not ids["val"] & ids["test"] and not ids["train"] & ids["test"]


def test_seed_protocol_is_the_guidebooks_split(tiny_cifar):
    dm = make(tiny_cifar, protocol="seed", normal_class="car", train_fraction=0.8, val_fraction=0.2)
    s = dm.manifest["splits"]
    ids = split_ids(dm)
    assert (dm.train_set.classes == 1).all() and s["train"]["size"] == 16

    # evaluation pool = everything else: 4 held-out cars + 180 other training images + 100 test images
    assert s["val"]["size"] + s["test"]["size"] == 200 - 16 + 100
    assert not ids["train"] & (ids["val"] | ids["test"]) and not ids["val"] & ids["test"]
    assert s["val"]["size"] == round(0.2 * 284)


def test_seed_protocol_trains_on_the_first_normal_images_in_order(tiny_cifar):
    dm = make(tiny_cifar, protocol="seed", normal_class=1)
    import pickle

    labels = []
    for i in range(1, 6):
        with open(tiny_cifar / "cifar-10-batches-py" / f"data_batch_{i}", "rb") as f:
            labels += pickle.load(f, encoding="latin1")["labels"]
    cars = [i for i, c in enumerate(labels) if c == 1]
    assert dm.train_set.ids.tolist() == cars[: int(len(cars) * 0.8)]


def test_subsets_are_stratified_and_seeded(tiny_cifar):
    dm = make(tiny_cifar, protocol="one_class", test_subset=50)
    s = dm.manifest["splits"]["test"]
    assert s["size"] == 50 and all(v == 5 for v in s["class_counts"].values())
    again = make(tiny_cifar, protocol="one_class", test_subset=50)
    assert again.manifest["splits"]["test"]["ids"] == s["ids"]
    assert make(tiny_cifar, protocol="one_class", test_subset=0.3).manifest["splits"]["test"]["size"] == 30


def test_stratified_subset_exact_count_with_uneven_classes():
    classes = np.array([0] * 7 + [1] * 2 + [2] * 91)
    pos = stratified_subset(classes, 10, seed=3)
    assert len(pos) == 10 and len(set(pos)) == 10
    # exact shares 0.7 / 0.2 / 9.1 -> floors 0 / 0 / 9, the one left goes to the largest remainder
    assert np.bincount(classes[pos], minlength=3).tolist() == [1, 0, 9]


def test_images_range_channels_and_size(tiny_cifar):
    dm = make(tiny_cifar, protocol="one_class", channels=1)
    item = dm.eval_set[0]
    assert item["image"].shape == (1, 32, 32)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    dm64 = CIFAR10AnomalyDataModule(root=str(tiny_cifar), download=False, verify_checksums=False, image_size=64)
    dm64.setup()
    batch = next(iter(dm64.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 64, 64) and batch["image"].dtype == torch.float32


def test_labels_normal_zero_anomalous_one(tiny_cifar):
    dm = make(tiny_cifar, normal_class=3)
    assert ((dm.eval_set.classes == 3) == (dm.eval_set.labels == 0)).all()


def test_manifest_written(tiny_cifar, tmp_path):
    dm = make(tiny_cifar)
    manifest = json.loads(dm.write_manifest(tmp_path).read_text())
    assert manifest["normal_class_name"] == "automobile" and set(manifest["splits"]) == {"train", "val", "test"}


def test_missing_data_gives_one_clear_error(tmp_path):
    dm = CIFAR10AnomalyDataModule(root=str(tmp_path / "nothing"), download=False)
    with pytest.raises(DataError, match="data.root"):
        dm.prepare_data()


def test_checksum_mismatch_names_the_switch(tiny_cifar):
    dm = CIFAR10AnomalyDataModule(root=str(tiny_cifar), download=False, verify_checksums=True)
    with pytest.raises(DataError, match="verify_checksums=false"):
        dm.prepare_data()


def test_single_class_validation_is_refused_up_front(tiny_cifar):
    with pytest.raises(DataError, match="only"):
        make(tiny_cifar, protocol="one_class", val_anomaly_ratio=0.0)


@pytest.mark.parametrize("value,index", [(1, 1), ("automobile", 1), ("car", 1), ("9", 9), ("truck", 9)])
def test_class_index(value, index):
    assert class_index(value) == index


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="not a CIFAR-10 class"):
        class_index("unicorn")


def test_the_data_package_has_no_import_circle():
    """Every ``anogan.data.*`` import inside the package (also those inside functions) points one way."""
    import ast
    from pathlib import Path

    import anogan.data

    package = Path(anogan.data.__file__).parent
    graph = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anogan.data."):
                found.add(node.module.split(".")[2])
        graph[path.stem] = found
    assert graph["images"] and "splits" not in graph["images"]  # today: images <-> splits

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m)] == []


def test_min_normals_for_fpr_is_where_fpr_threshold_becomes_finite():
    import math

    from anogan.metrics.image import fpr_threshold, min_normals_for_fpr

    for rate in (0.5, 1 / 3, 0.3, 0.29, 0.25, 0.2, 0.1, 0.07, 0.05, 0.02, 0.01, 0.001):
        n = min_normals_for_fpr(rate)
        assert math.isfinite(fpr_threshold(torch.rand(n, dtype=torch.float64), rate)), rate
        assert n == 1 or fpr_threshold(torch.rand(n - 1, dtype=torch.float64), rate) == math.inf, rate
    assert min_normals_for_fpr(0.05) == 19 and min_normals_for_fpr(0.01) == 99
