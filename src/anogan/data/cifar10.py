"""CIFAR-10 as a one-class anomaly-detection problem.

One class is "normal" (label 0), every other class is "anomalous" (label 1). Two protocols:

* ``seed``: the guidebook's construction. Train on the first ``train_fraction`` (80%) of the
  normal class's training images in dataset order; everything else (held-out normals, all other
  training images, the whole test set) is the evaluation pool. A stratified ``val_fraction`` of
  that pool is the validation split, the rest is the test split.
* ``one_class``: the literature's protocol. Train on the normal class's training images minus a
  validation slice; validation anomalies come from the other classes' *training* images; test is
  the CIFAR-10 test set (1,000 normal / 9,000 anomalous).

Images are decoded once, resized once and kept as uint8 tensors; ``__getitem__`` only converts
to float in [-1, 1] (the range of the generator's Tanh).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10

from anogan.config.choices import CLASSES, MISSING_DATA_FIX, class_index
from anogan.data.duplicates import DuplicateCheck, average_hash, duplicate_groups, pixel_digest
from anogan.data.splits import AnomalyDataModule, Samples, after_setup, stratified_subset
from anogan.utils.errors import DataError

log = logging.getLogger(__name__)

# A global id per CIFAR-10 image: training images keep their index, test images are offset.
TEST_ID_OFFSET = 50_000


class _UnverifiedCIFAR10(CIFAR10):
    """torchvision's loader with the md5 checks replaced by presence checks (re-created copies)."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class CIFAR10AnomalyDataModule(AnomalyDataModule[Samples]):
    def __init__(
        self,
        root: str = "data/cifar10",
        download: bool = True,
        verify_checksums: bool = True,
        normal_class: int | str = 1,
        protocol: str = "one_class",
        image_size: int = 64,
        channels: int = 3,
        train_fraction: float = 0.8,
        val_fraction: float = 0.1,
        val_anomaly_ratio: float = 9.0,
        val_subset: int | float | None = None,
        test_subset: int | float | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        split_seed: int = 0,
        duplicates: str = "drop",
        near_duplicates: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.normal_class = class_index(normal_class)  # the settings' ranges: anogan.config.data_schema.Cifar10Data

    # ------------------------------------------------------------------ loading
    def _load(self, train: bool) -> CIFAR10:
        root = Path(self.hparams.root).expanduser()
        folder = root / CIFAR10.base_folder
        cls = CIFAR10 if self.hparams.verify_checksums else _UnverifiedCIFAR10
        if not self.hparams.verify_checksums:
            warnings.warn(
                f"data.verify_checksums=false: loading CIFAR-10 from {folder} without torchvision's md5 check", stacklevel=2
            )
        try:
            return cls(str(root), train=train, download=bool(self.hparams.download) and train)
        except Exception as err:  # torchvision raises bare RuntimeError / URLError here
            have = folder.is_dir() and any(folder.iterdir())
            found = "the files there fail torchvision's md5 check" if have else "no usable cifar-10-batches-py there"
            reason = " ".join(str(err).split())  # one line
            raise DataError(f"CIFAR-10 could not be loaded from {folder}: {found} ({reason}). Fix: {MISSING_DATA_FIX}.") from None

    def prepare_data(self) -> None:
        self._load(train=True)
        self._load(train=False)

    def _resize(self, data: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()  # N, 3, 32, 32 uint8
        if self.hparams.channels == 1:  # ITU-R 601-2 luma, as PIL's convert("L")
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        size = self.hparams.image_size
        if size != images.shape[-1]:
            out = []
            for chunk in images.split(4096):  # bounded memory for the 56k-image seed pool
                up = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                out.append(up.round().clamp(0, 255).to(torch.uint8))
            images = torch.cat(out)
        return images

    def _protocol_rows(
        self, classes: np.ndarray, train_ids: np.ndarray, test_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions in the pool (training images, then test images; ``classes`` per position) of the
        rows trained on, the validation rows and the test candidates, by ``data.protocol``."""
        hp = self.hparams
        train_classes = classes[train_ids]
        normal_train = train_ids[train_classes == self.normal_class]  # dataset order
        if hp.protocol == "seed":
            n_fit = int(len(normal_train) * hp.train_fraction)
            fit_ids = normal_train[:n_fit]
            pool = np.setdiff1d(np.arange(len(classes)), fit_ids)
            val_pos = stratified_subset(classes[pool], float(hp.val_fraction), hp.split_seed)
            val_ids = pool[val_pos]
            return fit_ids, val_ids, np.setdiff1d(pool, val_ids)
        rng = np.random.default_rng(hp.split_seed)
        n_val_normal = int(round(len(normal_train) * hp.val_fraction))
        val_normal = np.sort(rng.choice(normal_train, n_val_normal, replace=False))
        fit_ids = np.setdiff1d(normal_train, val_normal)
        others = train_ids[train_classes != self.normal_class]
        n_val_anom = int(round(n_val_normal * hp.val_anomaly_ratio))
        val_anom = others[stratified_subset(classes[others], n_val_anom, hp.split_seed + 1)]
        return fit_ids, np.sort(np.concatenate([val_normal, val_anom])), test_ids

    def list_samples(self) -> Samples:
        """The pooled training and test images (rows: training images, then test images; ids: global
        ids), split by ``data.protocol``, test and validation copies of earlier splits separated."""
        train, test = self._load(train=True), self._load(train=False)
        train_classes, test_classes = np.asarray(train.targets), np.asarray(test.targets)
        classes = np.concatenate([train_classes, test_classes])
        global_ids = np.concatenate([np.arange(len(train_classes)), TEST_ID_OFFSET + np.arange(len(test_classes))])
        ids = np.arange(len(classes))
        fit_ids, val_ids, test_pool = self._protocol_rows(classes, ids[: len(train_classes)], ids[len(train_classes) :])
        all_data = np.concatenate([train.data, test.data])
        check = self._duplicate_check(all_data, global_ids, [fit_ids, val_ids, test_pool])
        val_ids, test_pool = check.separate_splits(fit_ids, val_ids, test_pool)
        return Samples(
            classes=classes,
            names=list(CLASSES),
            normal=self.normal_class,
            ids=global_ids,
            fit=fit_ids,
            val=val_ids,
            test=test_pool,
            duplicates=check,
            pixels=lambda rows: self._resize(all_data[rows]),
            fix="raise data.val_subset/data.test_subset or data.val_fraction/data.val_anomaly_ratio",
        )

    def _duplicate_check(self, data: np.ndarray, global_ids: np.ndarray, splits: list[np.ndarray]) -> DuplicateCheck:
        """Pictures of the pooled rows (``data``: N×32×32×3 uint8) that the ``splits`` use, compared
        by pixel digest (and average hash with ``near_duplicates``); rows are named ``train[i]`` / ``test[i]``."""
        hp = self.hparams
        used = np.unique(np.concatenate(splits))
        near = None
        if hp.near_duplicates is not None:
            near = average_hash(torch.from_numpy(data[used]).permute(0, 3, 1, 2))
        local = duplicate_groups([pixel_digest(data[i]) for i in used], near, hp.near_duplicates)
        group = np.arange(len(data))
        group[used] = used[local]

        def name(i: int) -> str:
            g = int(global_ids[i])
            return f"test[{g - TEST_ID_OFFSET}]" if g >= TEST_ID_OFFSET else f"train[{g}]"

        return self.duplicate_check(group, name)

    def describe(self, samples: Samples, val: np.ndarray, test: np.ndarray, shared: dict) -> dict[str, Any]:
        return {
            "dataset": "CIFAR10",
            "protocol": self.hparams.protocol,
            "normal_class": self.normal_class,
            "normal_class_name": CLASSES[self.normal_class],
            "id_scheme": f"training image i -> i; test image i -> {TEST_ID_OFFSET} + i",
            "labels": {"normal": 0, "anomalous": 1},
            "splits": shared["splits"],
            "duplicates": shared["duplicates"],
        }

    def eval_columns(self) -> dict[str, np.ndarray]:
        """Per evaluation row: where the image comes from and its class name (for scores.csv)."""
        eval_set = after_setup(self.eval_set, "eval_set")
        ids = eval_set.ids.numpy()
        return {
            "source": np.where(ids >= TEST_ID_OFFSET, "test", "train"),
            "source_index": np.where(ids >= TEST_ID_OFFSET, ids - TEST_ID_OFFSET, ids),
            "class_name": np.array([CLASSES[c] for c in eval_set.classes.tolist()]),
        }
