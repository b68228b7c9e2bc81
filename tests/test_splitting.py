"""Splitting is the base data module's (``anogan.data.splits.AnomalyDataModule``): CIFAR-10, folder
and MVTec AD only list their rows; the seeded subsets, the both-classes check, the shared manifest
entries and the calibration warning are one piece of code that behaves the same for all three."""

import logging
from contextlib import contextmanager

import numpy as np
import pytest

from anogan.data import splits
from anogan.data.cifar10 import CIFAR10AnomalyDataModule
from anogan.data.folder import FolderAnomalyDataModule
from anogan.data.mvtec import MVTecDataModule
from anogan.utils.errors import DataError
from test_folder import _write
from test_mvtec import write_tiny_mvtec

KINDS = ("cifar", "folder", "mvtec")
# The fix each module's both-classes error names (its own keys), and its logger.
FIX = {
    "cifar": "Fix: raise data.val_subset/data.test_subset or data.val_fraction/data.val_anomaly_ratio.",
    "folder": "Fix: add images, or change data.val_fraction / data.normal_test_fraction / data.val_subset / data.test_subset.",
    "mvtec": "Fix: change data.val_fraction / data.val_subset / data.test_subset, or check that test/ holds good and defect folders.",
}
LOGGER = {"cifar": "anogan.data.cifar10", "folder": "anogan.data.folder", "mvtec": "anogan.data.mvtec"}


@pytest.fixture(scope="module")
def roots(tiny_cifar, tmp_path_factory):
    folder = tmp_path_factory.mktemp("folder")
    _write(folder / "normal", 25, 60)
    _write(folder / "abnormal" / "crack", 6, 200)
    _write(folder / "abnormal" / "scratch", 6, 140, size=24)
    return {"cifar": tiny_cifar, "folder": folder, "mvtec": write_tiny_mvtec(tmp_path_factory.mktemp("mvtec"))}


@contextmanager
def records_of(name: str, level: int):
    """The records the logger ``name`` emits inside the block, caught by a handler on that logger itself
    (independent of what other tests did to handlers, propagation or levels above it)."""
    logger = logging.getLogger(name)
    caught: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = caught.append  # type: ignore[method-assign]
    before = (logger.level, logger.disabled)
    logger.setLevel(level)
    logger.disabled = False
    logger.addHandler(handler)
    try:
        yield caught
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.disabled = before[1]


def make(kind, roots, **kw):
    if kind == "cifar":
        return CIFAR10AnomalyDataModule(root=str(roots[kind]), download=False, verify_checksums=False, image_size=32, **kw)
    if kind == "folder":
        return FolderAnomalyDataModule(root=str(roots[kind]), image_size=32, **kw)
    return MVTecDataModule(root=str(roots[kind]), category="widget", image_size=32, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_a_split_without_both_classes_is_refused_by_the_one_check_with_the_modules_fix(kind, roots, monkeypatch):
    with pytest.raises(DataError, match=r"the test split( of \S+)? has only (normal|anomalous) images \(1\)") as err:
        make(kind, roots, test_subset=1).setup()
    assert str(err.value).endswith("thresholds and AUROC need both. " + FIX[kind])

    checked = []
    original = splits.AnomalyDataModule.check_split

    def spy(self, name, chosen, samples):
        checked.append((name, sorted(set(samples.classes[chosen] != samples.normal))))
        return original(self, name, chosen, samples)

    monkeypatch.setattr(splits.AnomalyDataModule, "check_split", spy)
    make(kind, roots).setup()
    assert checked == [("validation", [False, True]), ("test", [False, True])]


@pytest.mark.parametrize("kind", KINDS)
def test_subsets_are_the_same_seeded_stratified_draw_for_every_module(kind, roots):
    full = make(kind, roots, split_seed=3)
    full.setup()
    with records_of(LOGGER[kind], logging.INFO) as records:
        small = make(kind, roots, split_seed=3, val_subset=4, test_subset=0.5)
        small.setup()
    for split, size, seed in (("val", 4, 5), ("test", 0.5, 6)):  # split_seed + 2, split_seed + 3
        ids = np.array(full.manifest["splits"][split]["ids"])
        rows = np.flatnonzero(full.eval_split == split)
        assert full.eval_set.ids[rows].tolist() == ids.tolist()
        expected = ids[splits.stratified_subset(full.eval_set.classes[rows].numpy(), size, seed)]
        assert small.manifest["splits"][split]["ids"] == expected.tolist()
    assert small.manifest["splits"]["train"] == full.manifest["splits"]["train"]  # training is never subset
    sizes = {k: v["size"] for k, v in small.manifest["splits"].items()}
    assert [r.getMessage() for r in records if r.getMessage().startswith("splits:")] == [f"splits: {sizes}"]


@pytest.mark.parametrize("kind", ["folder", "mvtec"])
def test_too_few_validation_normals_for_the_target_rate_warn_once_with_the_modules_fix(kind, roots, monkeypatch):
    fix = {"folder": "raise data.normal_test_fraction or data.val_fraction", "mvtec": "raise data.val_fraction"}[kind]
    with records_of(LOGGER[kind], logging.WARNING) as records:
        dm = make(kind, roots, target_fpr=0.05)
        dm.setup()
    n = dm.manifest["splits"]["val"]["normal"]
    assert 0 < n < 19
    assert dm.manifest["calibration"] == {"target_fpr": 0.05, "val_normals": n, "min_val_normals": 19, "reachable": False}
    warned = [r.getMessage() for r in records if "threshold.target_fpr" in r.getMessage()]
    assert len(warned) == 1 and f"Fix: {fix}, add normal images" in warned[0]
    assert warned[0].startswith(f"the validation split holds {n} normal images; threshold.target_fpr=0.05 needs at least 19")

    monkeypatch.setattr(splits, "calibration_warning", lambda n, target, fix: f"one warning: {n} {target} ({fix})")
    with records_of(LOGGER[kind], logging.WARNING) as records:
        make(kind, roots, target_fpr=0.05).setup()
    assert f"one warning: {n} 0.05 ({fix})" in [r.getMessage() for r in records]


def test_cifar_has_no_target_rate_so_no_calibration_entry_and_no_warning(roots):
    with records_of(LOGGER["cifar"], logging.WARNING) as records:
        dm = make("cifar", roots)
        dm.setup()
    assert "calibration" not in dm.manifest and not [r for r in records if "target_fpr" in r.getMessage()]
    assert list(dm.manifest) == [
        "dataset",
        "protocol",
        "normal_class",
        "normal_class_name",
        "id_scheme",
        "labels",
        "splits",
        "duplicates",
    ]
