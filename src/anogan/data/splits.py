"""What every data module shares: the in-memory split (``AnomalySplit``), the per-image key that
seeds z, the split code (seeded stratified subsets, the manifest's split summaries, the validation a
false-positive-rate target needs: ``calibration_entry``, ``calibration_warning``) and the base
``AnomalyDataModule``, which owns splitting: a data module lists its rows (``list_samples``); the base
takes the seeded subsets, refuses a split without both classes, builds the splits, the shared
manifest entries (splits, duplicates, calibration, masks), the loaders and the summary log lines.

Reading files is ``anogan.data.reading`` (squaring and resizing: ``anogan.data.images``); duplicate images across splits are ``anogan.data.duplicates``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from anogan.data.duplicates import DuplicateCheck
from anogan.metrics.image import min_normals_for_fpr
from anogan.utils.errors import DataError
from anogan.utils.io import atomic_write_text

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict

T = TypeVar("T")


def image_key(image_uint8: torch.Tensor) -> int:
    """A 63-bit key of an image's pixels, independent of where the image comes from."""
    digest = hashlib.blake2b(image_uint8.contiguous().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class AnomalySplit(Dataset):
    """Images (uint8, N×C×H×W) with their labels, true classes and global ids.

    ``masks``: optional ground-truth anomaly masks, uint8 {0, 1}, N×1×H×W at the model resolution,
    row-aligned with ``images`` (all-zero for normal images); ``None`` when the data has no masks.
    Masks are not part of ``__getitem__``'s batch (scoring does not need them): read ``split.masks``.
    Raises ``ValueError`` when ``masks`` does not match the images' rows, height and width.
    """

    def __init__(
        self, images: torch.Tensor, classes: np.ndarray, ids: np.ndarray, normal_class: int, masks: torch.Tensor | None = None
    ):
        self.images = images
        self.classes = torch.as_tensor(classes, dtype=torch.long)
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        self.labels = (self.classes != normal_class).long()
        if masks is not None:
            expected = (len(images), 1, *images.shape[2:])
            if tuple(masks.shape) != expected or masks.dtype != torch.uint8:
                raise ValueError(f"masks are {masks.dtype} {tuple(masks.shape)}; expected uint8 {expected}, one per image")
        self.masks = masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i].float().div_(127.5).sub_(1.0)
        return {"image": image, "label": self.labels[i], "id": self.ids[i], "row": i, "key": image_key(self.images[i])}


def stratified_subset(classes: np.ndarray, size: int | float | None, seed: int) -> np.ndarray:
    """Positions of a seeded subset with each class in proportion (largest-remainder rounding)."""
    n = len(classes)
    if size is None:
        return np.arange(n)
    count = int(round(size * n)) if isinstance(size, float) and size <= 1.0 else int(size)
    if count >= n:
        return np.arange(n)
    if count < 1:
        return np.arange(0)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(classes, return_counts=True)
    exact = counts * count / n
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: count - take.sum()]] += 1
    chosen = [rng.choice(np.flatnonzero(classes == v), k, replace=False) for v, k in zip(values, take)]
    return np.sort(np.concatenate(chosen))


def calibration_warning(n_val_normals: int, target_fpr: float | None, fix: str) -> str | None:
    """One line when ``n_val_normals`` validation normals are too few for ``target_fpr`` (None: no
    target, no warning); ``fix`` names the data keys that give validation more normals."""
    if target_fpr is None or n_val_normals >= (need := min_normals_for_fpr(target_fpr)):
        return None
    reachable = 1.0 / (n_val_normals + 1)
    return (
        f"the validation split holds {n_val_normals} normal images; threshold.target_fpr={target_fpr} needs at least "
        f"{need}, so its threshold will be infinite and nothing will be flagged. Fix: {fix}, add normal images, or set "
        f"threshold.target_fpr={math.ceil(reachable * 1000) / 1000} or higher."
    )


def calibration_entry(n_val_normals: int, target_fpr: float | None) -> dict:
    """The manifest's ``calibration`` entry: validation normals, the target rate and the normals it
    needs (``min_normals_for_fpr``), and whether the false-positive-rate threshold can be finite."""
    need = None if target_fpr is None else min_normals_for_fpr(target_fpr)
    return {
        "target_fpr": target_fpr,
        "val_normals": int(n_val_normals),
        "min_val_normals": need,
        "reachable": None if need is None else bool(n_val_normals >= need),
    }


def split_summary(
    chosen: np.ndarray,
    classes: np.ndarray,
    names: list[str],
    normal: int = 0,
    ids: np.ndarray | None = None,
    synthetic: np.ndarray | None = None,
) -> dict:
    """The manifest entry of one split (``splits.json``): its size, normal / anomalous counts, images
    per class and the ids of its rows.

    ``chosen``: row indices (K) into ``classes`` (N, class index per row, ``normal`` the normal one),
    ``names``: class names by index; ``ids``: N stable ids to report (default: the row indices);
    ``synthetic``: N booleans, when some rows are synthetic anomalies (their count is added).
    """
    counts = np.bincount(classes[chosen], minlength=len(names))
    n_anom = int((classes[chosen] != normal).sum())
    out: dict[str, Any] = {"size": int(len(chosen)), "normal": int(len(chosen) - n_anom), "anomalous": n_anom}
    if synthetic is not None:
        out["synthetic"] = int(synthetic[chosen].sum())
    out["class_counts"] = {n: int(counts[c]) for c, n in enumerate(names)}
    out["ids"] = [int(i) for i in (chosen if ids is None else ids[chosen])]
    return out


def mask_counts(masks: torch.Tensor, classes: np.ndarray) -> dict:
    """The manifest's mask summary for some rows (``masks`` N×1×S×S, ``classes`` N, 0 = normal): how
    many have a mask, how many masks are not empty, and how many anomalous rows have an empty one
    (e.g. a defect smaller than a pixel at the model size: invisible to pixel metrics)."""
    nonempty = masks.flatten(1).any(1).numpy()
    return {
        "with_mask": int(len(masks)),
        "nonempty": int(nonempty.sum()),
        "anomalous_with_empty_mask": int((~nonempty & (classes != 0)).sum()),
    }


class RepeatedSplit(Dataset):
    """``split`` seen ``repeats`` times per epoch (item ``i`` is ``split[i % len(split)]``): a small
    folder then gets enough optimiser steps per epoch. Shuffling mixes the copies."""

    def __init__(self, split: AnomalySplit, repeats: int):
        self.split, self.repeats = split, int(repeats)

    def __len__(self) -> int:
        return len(self.split) * self.repeats

    def __getitem__(self, i: int) -> dict:
        return self.split[i % len(self.split)]


def after_setup(value: T | None, name: str) -> T:
    """``value``, an attribute a data module's ``setup`` fills (``train_set``, ``eval_set``,
    ``manifest``, ...). Raises ``RuntimeError`` when it is still unset, i.e. before ``setup``."""
    if value is None:
        raise RuntimeError(f"the data module's {name} is not set: call setup() first")
    return value


@dataclass(kw_only=True)
class Samples:
    """A data module's rows before the subsets (``AnomalyDataModule.list_samples``), N rows in all.

    ``fit``, ``val``, ``test``: row indices of training and of the validation and test candidates,
    their duplicates already separated (``DuplicateCheck.separate_splits`` / ``separate_pool``) by
    ``duplicates``. ``classes``: N class indices (``normal`` the normal one), ``names``: class names
    by index; ``pixels``: rows (K) -> uint8 images K×C×S×S; ``ids``: N stable ids for the splits and
    the manifest (None: the row indices); ``masks``: uint8 N×1×S×S ground truth (None: no masks);
    ``synthetic``: N booleans when some rows are synthetic anomalies. ``where`` (e.g. " of <folder>")
    and ``fix`` complete the error of a split without both classes; ``calibration_fix`` names the keys
    that give validation more normals (None: the module has no ``target_fpr`` and no calibration entry).
    """

    classes: np.ndarray
    names: list[str]
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray
    duplicates: DuplicateCheck
    pixels: Callable[[np.ndarray], torch.Tensor]
    fix: str
    where: str = ""
    calibration_fix: str | None = None
    normal: int = 0
    ids: np.ndarray | None = None
    masks: torch.Tensor | None = None
    synthetic: np.ndarray | None = None


SamplesT = TypeVar("SamplesT", bound=Samples)


class AnomalyDataModule(L.LightningDataModule, Generic[SamplesT]):
    """What every data module shares: splitting, the loaders and the manifest file.

    ``setup`` calls the subclass's ``list_samples`` (its rows: ``Samples``), then takes the seeded
    stratified subsets (``data.val_subset`` / ``data.test_subset``, seeds ``split_seed + 2`` / ``+ 3``),
    refuses a split without both classes (``check_split``: ``DataError``), fills ``train_set``,
    ``eval_set`` (validation rows, then test rows), ``eval_split`` ("val"/"test" per eval row) and
    ``manifest`` (the subclass's ``describe``, given the shared entries), then logs: the subclass's
    lines (``report``), the duplicates line, the split sizes and the calibration warning, through the
    subclass module's logger. Subclasses also provide ``eval_columns()`` (source and class name per
    eval row), and may set ``train_batch_size`` (the global batch actually used, when it differs from
    ``data.batch_size``) and ``train_repeats`` (passes over the training images per epoch)."""

    if TYPE_CHECKING:  # save_hyperparameters stores an AttributeDict (Lightning declares a wider type)

        @property
        def hparams(self) -> AttributeDict: ...

    train_set: AnomalySplit | None = None
    eval_set: AnomalySplit | None = None
    eval_split: np.ndarray | None = None
    manifest: dict | None = None
    train_batch_size: int | None = None
    train_repeats: int = 1

    # ------------------------------------------------------------------ what a data module provides
    def list_samples(self) -> SamplesT:
        """The rows of this data set, duplicates separated, before the subsets."""
        raise NotImplementedError

    def describe(self, samples: SamplesT, val: np.ndarray, test: np.ndarray, shared: dict) -> dict:
        """The manifest (``splits.json``) of the final rows ``samples.fit``, ``val`` and ``test``;
        ``shared`` holds the entries every data module reports (``shared_entries``)."""
        raise NotImplementedError

    def report(self, samples: SamplesT, val: np.ndarray, test: np.ndarray) -> None:
        """The data module's own log lines, said after the manifest is made (default: none)."""

    def splits_note(self) -> str:
        """Text appended to the ``splits:`` log line (default: none)."""
        return ""

    # ------------------------------------------------------------------ splitting
    @property
    def _log(self) -> logging.Logger:
        """The logger of the subclass's module: every line carries the data module's own name."""
        return logging.getLogger(type(self).__module__)

    def duplicate_check(self, group: np.ndarray, name: Callable[[int], str]) -> DuplicateCheck:
        """A ``DuplicateCheck`` of rows grouped by picture (``group``), by ``data.duplicates`` and
        ``data.near_duplicates``; ``DataError`` for a value outside their choices."""
        return DuplicateCheck(group, name, self.hparams.duplicates, self.hparams.near_duplicates)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        samples = self.list_samples()
        val, test = self.subsets(samples)
        self._fill_splits(samples, val, test)
        shared = self.shared_entries(samples, val, test)
        self.manifest = self.describe(samples, val, test, shared)
        self.report(samples, val, test)
        DuplicateCheck.log(self.manifest["duplicates"], self._log)
        self._log.info("splits: %s%s", {k: v["size"] for k, v in self.manifest["splits"].items()}, self.splits_note())
        fix = samples.calibration_fix
        if fix is not None and (
            warning := calibration_warning(shared["calibration"]["val_normals"], self.hparams.target_fpr, fix)
        ):
            self._log.warning("%s", warning)

    def subsets(self, samples: SamplesT) -> tuple[np.ndarray, np.ndarray]:
        """The validation and test rows: seeded stratified subsets of the candidates (``data.val_subset``,
        ``data.test_subset``), each checked by ``check_split``."""
        hp, classes = self.hparams, samples.classes
        val = samples.val[stratified_subset(classes[samples.val], hp.val_subset, hp.split_seed + 2)]
        test = samples.test[stratified_subset(classes[samples.test], hp.test_subset, hp.split_seed + 3)]
        for name, chosen in (("validation", val), ("test", test)):
            self.check_split(name, chosen, samples)
        return val, test

    def check_split(self, name: str, chosen: np.ndarray, samples: SamplesT) -> None:
        """``DataError`` when the ``chosen`` rows of split ``name`` do not hold both normal and
        anomalous images (thresholds and AUROC need both)."""
        labels = samples.classes[chosen] != samples.normal
        if labels.all() or not labels.any():
            raise DataError(
                f"the {name} split{samples.where} has only {'anomalous' if labels.any() else 'normal'} images "
                f"({len(chosen)}); thresholds and AUROC need both. Fix: {samples.fix}."
            )

    def _fill_splits(self, samples: SamplesT, val: np.ndarray, test: np.ndarray) -> None:
        """``train_set``, ``eval_set`` (validation rows, then test rows, with their masks) and ``eval_split``."""
        s = samples
        ids = np.arange(len(s.classes)) if s.ids is None else s.ids
        eval_rows = np.concatenate([val, test])
        masks = None if s.masks is None else s.masks[eval_rows]
        self.train_set = AnomalySplit(s.pixels(s.fit), s.classes[s.fit], ids[s.fit], s.normal)
        self.eval_set = AnomalySplit(s.pixels(eval_rows), s.classes[eval_rows], ids[eval_rows], s.normal, masks=masks)
        self.eval_split = np.array(["val"] * len(val) + ["test"] * len(test))

    def shared_entries(self, samples: SamplesT, val: np.ndarray, test: np.ndarray) -> dict:
        """The manifest entries of every data module: ``splits`` (``split_summary`` of each split),
        ``duplicates`` (synthetic rows left out), and where the module has them ``calibration``
        (``calibration_entry``) and ``masks`` (``mask_counts`` of validation and test)."""
        s = samples

        def summary(rows: np.ndarray) -> dict:
            return split_summary(rows, s.classes, s.names, s.normal, ids=s.ids, synthetic=s.synthetic)

        real_val = val if s.synthetic is None else val[~s.synthetic[val]]
        shared: dict[str, Any] = {
            "splits": {"train": summary(s.fit), "val": summary(val), "test": summary(test)},
            "duplicates": s.duplicates.manifest({"train": s.fit, "val": real_val, "test": test}),
        }
        if s.calibration_fix is not None:
            shared["calibration"] = calibration_entry(int((s.classes[val] == s.normal).sum()), self.hparams.target_fpr)
        if s.masks is not None:
            shared["masks"] = {
                "val": mask_counts(s.masks[val], s.classes[val]),
                "test": mask_counts(s.masks[test], s.classes[test]),
            }
        return shared

    # ------------------------------------------------------------------ after setup
    def eval_columns(self) -> dict[str, np.ndarray]:
        """Per evaluation row: ``source``, ``source_index`` and ``class_name`` (for scores.csv)."""
        raise NotImplementedError

    def write_manifest(self, folder: str | Path) -> Path:
        """Write the split manifest to ``folder/splits.json`` (atomically).

        Raises:
            anogan.utils.errors.WriteError: the folder is read-only or the disk is full.
        """
        return atomic_write_text(Path(folder) / "splits.json", json.dumps(self.manifest, indent=1))

    def train_dataloader(self) -> DataLoader:
        """Batches of ``data.batch_size / world_size`` per process: ``data.batch_size`` is the global
        batch, the same GAN updates on one device or many (Lightning adds the DistributedSampler).
        A subclass's ``train_batch_size`` replaces it (rounded down to a multiple of the processes),
        and ``train_repeats`` > 1 shows each training image that many times per epoch."""
        batch_size, world_size = self.hparams.batch_size, self.trainer.world_size if self.trainer else 1
        if batch_size % world_size:
            raise DataError(
                f"data.batch_size={batch_size} is the global batch and must split evenly over the "
                f"{world_size} processes (trainer.devices x trainer.num_nodes). Fix: set data.batch_size to a "
                f"multiple of {world_size}, e.g. {max(world_size, batch_size // world_size * world_size)}."
            )
        if self.train_batch_size is not None:
            batch_size = max(world_size, self.train_batch_size // world_size * world_size)
        train_set = after_setup(self.train_set, "train_set")
        dataset = train_set if self.train_repeats <= 1 else RepeatedSplit(train_set, self.train_repeats)
        return DataLoader(
            dataset,
            batch_size=batch_size // world_size,
            shuffle=True,
            drop_last=len(dataset) > batch_size,  # each process holds len/world_size images
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def eval_dataloader(self, batch_size: int) -> DataLoader:
        """Validation and test rows in one pass; ``eval_split`` says which row is which."""
        eval_set = after_setup(self.eval_set, "eval_set")
        return DataLoader(eval_set, batch_size=batch_size, shuffle=False, num_workers=self.hparams.num_workers)
