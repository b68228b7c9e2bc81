"""Your own images as a one-class anomaly-detection problem (like anomalib's ``Folder``).

Layout (every folder searched recursively; the names are settings)::

    <root>/
      <normal_dir>/        normal images: trained on (minus a held-out share when there is no normal_test_dir)
      <normal_test_dir>/   optional: normal images for evaluation only
      <abnormal_dir>/      anomalous images (evaluation only); a list of folders gives one class each;
                           null (or []) when you only have normal images
      <mask_dir>/          optional: ground-truth masks of the anomalous images; the mask of
                           <abnormal_dir>/<sub>/<name>.<ext> is <mask_dir>/<sub>/<name>.png or <name>_mask.png
                           (a list: one mask folder per abnormal folder); normal images get all-zero masks.
                           Masks follow the image's ``resize`` policy (crop / pad / stretch).

Which files are images and how they are read (formats, bit depths, alpha, EXIF, ``resize`` policy for
non-square images) is ``anogan.data.listing``, ``anogan.data.reading`` and ``anogan.data.images``:
the same reader ``predict.py`` uses. Every file found but not used is listed under ``skipped`` in
``splits.json`` with its reason, and one summary line is logged.

The evaluation pool (held-out or ``normal_test_dir`` normals + all anomalous images) is split,
stratified by class and seeded by ``split_seed``, into validation (``val_fraction``: the threshold is
fitted there) and test. With anomalies, both splits must hold both classes (else ``DataError``).
Normal-only data (``abnormal_dir: null``): validation and test hold only normals, ``has_anomalies``
is False (thresholds then come from the normals alone; AUROC needs anomalous images). Validation is
then sized for ``target_fpr`` (``threshold.target_fpr`` in the config): it holds at least
``min_normals_for_fpr(target_fpr)`` normals (19 at 5%) when the held-out normals allow it, else more
normals are held out (training keeping at least half); otherwise ``setup`` warns before training.

Copies of one picture (same decoded pixels; optionally near copies, ``near_duplicates``) are split
together, and a picture found in two splits is handled by ``duplicates`` (drop | refuse | keep; see
``anogan.data.duplicates``), reported in the manifest's ``duplicates``.

Small folders: the training batch is at most ``max_batch_fraction`` of the training images (never
below ``MIN_AUTO_BATCH``), and the training images are repeated within an epoch so that an epoch has
at least ``min_steps_per_epoch`` optimiser steps (batches). ``training_steps_warning`` says when the
GAN still gets too few steps in total.

Splits are the same ``AnomalySplit`` as CIFAR-10's (uint8 images, decoded and resized once), with a
``splits.json`` manifest listing every file. Classes: 0 = normal, i = the i-th abnormal folder
(1-based); labels: normal 0, anomalous 1.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anogan.data import notes as read_notes
from anogan.data.duplicates import average_hash, duplicate_groups, group_units
from anogan.data.images import read_images, read_mask
from anogan.data.listing import list_images, relative_name
from anogan.data.reading import check_alpha
from anogan.data.splits import AnomalyDataModule, Samples, after_setup, stratified_subset
from anogan.data.training_steps import (
    plan_training,
    steps_per_epoch,
    training_steps_warning,
)
from anogan.metrics.image import min_normals_for_fpr
from anogan.utils.errors import DataError

__all__ = ["FolderAnomalyDataModule"]

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FolderSamples(Samples):
    """``Samples`` of the folders, with what the manifest reports: ``data.root`` (``root``), the
    ``files`` (one per row) and the files ``skipped`` while reading (with their reasons)."""

    root: Path
    files: list[Path]
    skipped: list[dict]


@dataclass
class _Read:
    """The usable files of the folders in reading order (``normal_dir``, ``normal_test_dir``
    (``held``), the abnormal folders) with their model inputs and pixel digests, and per abnormal
    file its class (1-based folder) and, with ``mask_dir``, its mask."""

    normal: list[Path]
    images: list[torch.Tensor]
    digests: list[bytes]
    held: list[Path] = field(default_factory=list)
    abnormal: list[Path] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)


def _reason_kind(reason: str) -> str:
    """The short kind of a skip reason for the summary line: "unreadable (OSError: ...)" -> "unreadable"."""
    return reason.split(" (", 1)[0]


class FolderAnomalyDataModule(AnomalyDataModule[FolderSamples]):
    """Images from folders (see the module docstring). After ``setup``: ``train_set``, ``eval_set``,
    ``eval_split``, ``manifest`` (``splits.json``), ``has_anomalies`` (validation holds both
    classes), ``train_batch_size`` and ``train_repeats`` (what ``train_dataloader`` uses)."""

    def __init__(
        self,
        root: str = "data/my_images",
        normal_dir: str = "normal",
        abnormal_dir: str | list[str] | None = "abnormal",
        normal_test_dir: str | None = None,
        normal_test_fraction: float = 0.2,
        val_fraction: float = 0.5,
        image_size: int = 64,
        channels: int = 3,
        resize: str = "stretch",
        val_subset: int | float | None = None,
        test_subset: int | float | None = None,
        batch_size: int = 128,
        max_batch_fraction: float | None = 0.25,
        min_steps_per_epoch: int | None = 10,
        num_workers: int = 0,
        split_seed: int = 0,
        mask_dir: str | list[str] | None = None,
        target_fpr: float | None = None,
        duplicates: str = "drop",
        near_duplicates: int | None = None,
        alpha: str = "black",
    ):
        super().__init__()
        self.save_hyperparameters()
        # the settings' ranges: anogan.config.data_schema.FolderData
        check_alpha(alpha)
        self._read_notes: tuple[list[str], list[list[read_notes.Note]]] = ([], [])  # every file read: (path, notes)
        if abnormal_dir is None or abnormal_dir == "":
            self.abnormal_dirs: list[str] = []
        else:
            self.abnormal_dirs = [abnormal_dir] if isinstance(abnormal_dir, str) else list(abnormal_dir)
        # mask_dir: none, one folder for every abnormal folder, or one per abnormal folder
        self.mask_dirs = (
            [] if mask_dir is None else [mask_dir] * len(self.abnormal_dirs) if isinstance(mask_dir, str) else list(mask_dir)
        )
        if self.mask_dirs and len(self.mask_dirs) != len(self.abnormal_dirs):
            raise DataError(
                f"data.mask_dir has {len(self.mask_dirs)} folders for {len(self.abnormal_dirs)} data.abnormal_dir folders. "
                "Fix: give one mask folder per abnormal folder, or one for all."
            )
        self.has_anomalies: bool = bool(self.abnormal_dirs)  # confirmed by setup

    @property
    def normal_only(self) -> bool:
        """True when no abnormal folder is configured (``data.abnormal_dir: null`` or ``[]``)."""
        return not self.abnormal_dirs

    def _folder(self, name: str) -> Path:
        folder = Path(self.hparams.root).expanduser() / name
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder. Fix: set data.root and data.*_dir to your image folders.")
        return folder

    def prepare_data(self) -> None:
        for name in [self.hparams.normal_dir, *self.abnormal_dirs, *self.mask_dirs] + (
            [self.hparams.normal_test_dir] if self.hparams.normal_test_dir else []
        ):
            self._folder(name)

    def _mask(self, c: int, path: Path) -> torch.Tensor:
        """The mask of ``path``, an image of the c-th abnormal folder (1-based), at the model size."""
        rel = path.relative_to(self._folder(self.abnormal_dirs[c - 1]))
        folder = self._folder(self.mask_dirs[c - 1]) / rel.parent
        candidates = (folder / f"{rel.stem}.png", folder / f"{rel.stem}_mask.png")
        for mask in candidates:
            if mask.is_file():
                return read_mask(mask, path, self.hparams.image_size, self.hparams.resize)
        raise DataError(
            f"{path} has no mask: neither {candidates[0]} nor {candidates[1]} exists. Fix: add it, or set data.mask_dir=null."
        )

    def _read(self, folder: Path, seen: dict, skipped: list) -> tuple[list[Path], list[torch.Tensor], list[bytes]]:
        """Every usable image under ``folder`` with its pixel digest; what is not usable goes to
        ``skipped`` with its reason."""
        hp = self.hparams
        paths, listing_skips = list_images(folder, seen)
        kept, images, digests, unreadable, notes = read_images(paths, hp.image_size, hp.channels, hp.resize, hp.alpha)
        for entry in unreadable:
            log.debug("skipping %s: %s", entry["file"], entry["reason"])
        self._read_notes[0].extend(str(p) for p in kept)
        self._read_notes[1].extend(notes)
        skipped += listing_skips + unreadable
        return kept, images, digests

    def _held_out_units(self, n_units: int) -> int:
        """How many of the ``n_units`` pictures of ``normal_dir`` to hold out for evaluation:
        ``round(n_units * normal_test_fraction)``, raised for a normal-only folder (without
        ``normal_test_dir``) to one more than ``min_normals_for_fpr(target_fpr)`` so that validation
        can hold that many, as long as training keeps at least half of the pictures."""
        hp = self.hparams
        n_held = int(round(n_units * hp.normal_test_fraction))
        if self.normal_only and hp.target_fpr is not None:
            need = min_normals_for_fpr(hp.target_fpr) + 1  # validation, and one test normal
            if n_held < need <= n_units // 2:
                log.info(
                    "normal-only folder: holding out %d of %d normal images instead of %d (data.normal_test_fraction=%s): "
                    "threshold.target_fpr=%s needs %d validation normals",
                    need,
                    n_units,
                    n_held,
                    hp.normal_test_fraction,
                    hp.target_fpr,
                    need - 1,
                )
                n_held = need
        return n_held

    def _val_rows(self, pool: np.ndarray, classes: np.ndarray, group: np.ndarray) -> np.ndarray:
        """The rows of the evaluation ``pool`` that go to validation: a stratified (by class), seeded
        ``val_fraction`` of its pictures (copies of one picture go together), with every copy; for
        normal-only data at least ``min_normals_for_fpr(target_fpr)`` pictures when the pool has more (one
        is left for test); when it has too few, the fraction's split is kept and ``setup`` warns."""
        hp = self.hparams
        units, members = group_units(pool, group)
        n = len(units)
        size: float | int = float(hp.val_fraction)
        if self.normal_only and hp.target_fpr is not None and (need := min_normals_for_fpr(hp.target_fpr)) < n:
            default = int(round(hp.val_fraction * n))
            size = max(default, need)  # the same draw as the fraction's when unchanged
            if size > default:
                log.info(
                    "normal-only folder: validation holds %d of the %d held-out normal images instead of %d "
                    "(data.val_fraction=%s): threshold.target_fpr=%s needs %d",
                    size,
                    n,
                    default,
                    hp.val_fraction,
                    hp.target_fpr,
                    need,
                )
        chosen = stratified_subset(classes[units], size, hp.split_seed)
        return np.sort(np.concatenate([members[u] for u in chosen])) if len(chosen) else np.arange(0)

    def _read_folders(self, skipped: list) -> _Read:
        """Every usable file of ``normal_dir``, ``normal_test_dir`` and each abnormal folder (with its
        mask), in that order; ``DataError`` for an abnormal folder without a usable image."""
        hp = self.hparams
        seen: dict = {}  # one file reached from two folders counts once (in the first folder read)
        read = _Read(*self._read(self._folder(hp.normal_dir), seen, skipped))
        if hp.normal_test_dir:
            read.held, images, digests = self._read(self._folder(hp.normal_test_dir), seen, skipped)
            read.images += images
            read.digests += digests
        for c, name in enumerate(self.abnormal_dirs, start=1):
            paths, images, digests = self._read(self._folder(name), seen, skipped)
            if not paths:
                raise DataError(
                    f"data.abnormal_dir: {Path(hp.root).expanduser() / name} holds no usable image. Fix: add anomalous "
                    "images there, or set data.abnormal_dir=null if you only have normal images."
                )
            read.masks += [self._mask(c, p) for p in paths] if self.mask_dirs else []
            read.abnormal += paths
            read.images += images
            read.digests += digests
            read.classes += [c] * len(paths)
        return read

    def _split_normal(self, n_normal: int, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``normal_dir`` trained on and held out for evaluation (none with
        ``normal_test_dir``), split by picture: copies inside it stay on one side."""
        hp = self.hparams
        if hp.normal_test_dir:
            fit_pos, held_pos = np.arange(n_normal), np.arange(0)
        else:
            units, members = group_units(np.arange(n_normal), group)
            order = np.random.default_rng(hp.split_seed).permutation(len(units))
            n_held = self._held_out_units(len(units))
            held_units = [members[u] for u in order[:n_held]]
            held_pos = np.sort(np.concatenate(held_units)) if held_units else np.arange(0)
            fit_pos = np.setdiff1d(np.arange(n_normal), held_pos)
        if not len(fit_pos):
            raise DataError(
                f"no usable normal training image in {Path(hp.root).expanduser() / hp.normal_dir}. "
                "Fix: put images there (see splits.json skipped)."
            )
        return fit_pos, held_pos

    def list_samples(self) -> FolderSamples:
        """One row per file: training normals, then evaluation normals, then anomalies; validation
        drawn from the evaluation rows by ``_val_rows``, duplicates separated."""
        hp = self.hparams
        root = Path(hp.root).expanduser()
        skipped: list[dict] = []
        read = self._read_folders(skipped)
        # Pictures (copies of one image count once) of every file read, in reading order.
        near = average_hash(torch.stack(read.images)) if hp.near_duplicates is not None and read.images else None
        group = duplicate_groups(read.digests, near, hp.near_duplicates)
        fit_pos, held_pos = self._split_normal(len(read.normal), group)
        n_normal = len(read.normal)
        order = np.concatenate([fit_pos, held_pos, n_normal + np.arange(len(read.held) + len(read.abnormal))]).astype(np.int64)
        read_files = read.normal + read.held + read.abnormal
        files = [read_files[i] for i in order]
        images = torch.stack([read.images[i] for i in order])
        group = group[order]
        classes = np.array([0] * (n_normal + len(read.held)) + read.classes, dtype=np.int64)
        check = self.duplicate_check(group, lambda i: relative_name(root, files[i]))
        ids = np.arange(len(files))
        n_fit = len(fit_pos)
        val, test = check.separate_pool(ids[:n_fit], ids[n_fit:], lambda pool: self._val_rows(pool, classes, group))
        masks = None
        if self.mask_dirs:  # normal images: all zero
            normal_masks = torch.zeros(len(files) - len(read.abnormal), 1, hp.image_size, hp.image_size, dtype=torch.uint8)
            masks = torch.cat([normal_masks, torch.stack(read.masks)])
        fix = "give data.normal_test_dir" if hp.normal_test_dir else "raise data.normal_test_fraction"
        return FolderSamples(
            classes=classes,
            names=["normal", *self.abnormal_dirs],
            fit=ids[:n_fit],
            val=val,
            test=test,
            duplicates=check,
            pixels=lambda rows: images[rows],
            masks=masks,
            fix="add images, or change data.val_fraction / data.normal_test_fraction / data.val_subset / data.test_subset",
            calibration_fix=fix + " or data.val_fraction",
            root=root,
            files=files,
            skipped=skipped,
        )

    def check_split(self, name: str, chosen: np.ndarray, samples: FolderSamples) -> None:
        """With anomalies: both classes (``AnomalyDataModule.check_split``); normal-only: not empty."""
        if not self.normal_only:
            super().check_split(name, chosen, samples)
        elif not len(chosen):
            held_out = len(samples.val) + len(samples.test)  # _val_rows keeps copies together: none dropped
            raise DataError(
                f"the {name} split has no image: too few held-out normal images ({held_out}). Fix: add normal "
                "images, give data.normal_test_dir, or change data.normal_test_fraction / data.val_fraction."
            )

    def describe(self, samples: FolderSamples, val: np.ndarray, test: np.ndarray, shared: dict) -> dict:
        s, hp = samples, self.hparams
        classes = s.classes
        self.has_anomalies = bool((classes[val] != 0).any() and (classes[val] == 0).any())
        self.train_batch_size, self.train_repeats, per_epoch = plan_training(
            len(s.fit), hp.batch_size, hp.max_batch_fraction, hp.min_steps_per_epoch, log
        )
        skipped = list(s.skipped)
        for i in np.setdiff1d(np.concatenate([s.val, s.test]), np.concatenate([val, test])):
            skipped.append({"file": str(s.files[i]), "reason": "not in the subset (data.val_subset / data.test_subset)"})
        skipped = [{"file": relative_name(s.root, Path(e["file"])), "reason": e["reason"]} for e in skipped]
        return {
            "dataset": "folder",
            "root": str(s.root.resolve()),
            "classes": s.names,
            "labels": {"normal": 0, "anomalous": 1},
            "has_anomalies": self.has_anomalies,
            "resize": hp.resize,
            "image_size": int(hp.image_size),
            "channels": int(hp.channels),
            "training": {
                "batch_size": int(self.train_batch_size),
                "requested_batch_size": int(hp.batch_size),
                "repeats_per_epoch": int(self.train_repeats),
                "steps_per_epoch": int(per_epoch),
            },
            "id_scheme": "index into files",
            "files": [relative_name(s.root, p) for p in s.files],
            "skipped": skipped + s.duplicates.dropped(),
            "masks": shared.get("masks"),
            "splits": shared["splits"],
            "duplicates": shared["duplicates"],
            "calibration": shared["calibration"],
            "alpha": hp.alpha,
            "read_notes": read_notes.manifest_entry(
                [relative_name(s.root, Path(f)) for f in self._read_notes[0]], self._read_notes[1]
            ),
        }

    def report(self, samples: FolderSamples, val: np.ndarray, test: np.ndarray) -> None:
        """The read-notes summary, and one line counting the files skipped, by kind of reason."""
        manifest = after_setup(self.manifest, "manifest")
        if line := read_notes.summary(self._read_notes[1], "see splits.json read_notes"):
            log.warning("%s", line)
        skipped = manifest["skipped"]
        if skipped:
            kinds = Counter(_reason_kind(s["reason"]) for s in skipped)
            in_files = kinds["not in the subset"] + manifest["duplicates"]["dropped"]  # these files are in files too
            n_found = len(samples.files) + len(skipped) - in_files
            log.warning(
                "skipped %d of %d files: %s; see splits.json",
                len(skipped),
                n_found,
                ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kn: (-kn[1], kn[0]))),
            )

    def splits_note(self) -> str:
        return "" if self.has_anomalies else " (normal images only)"

    @property
    def train_steps_per_epoch(self) -> int:
        """Optimiser steps (batches) per training epoch, after ``setup``."""
        train_set, batch = (
            after_setup(self.train_set, "train_set"),
            after_setup(self.train_batch_size, "train_batch_size"),
        )
        return steps_per_epoch(len(train_set) * self.train_repeats, batch)

    def steps_warning(self, max_epochs: int, max_steps: int = -1, limit_batches: int | float | None = None) -> str | None:
        """``training_steps_warning`` for this module's training images, batch and repeats (after ``setup``) and
        the trainer's limits (``trainer.max_epochs``, ``max_steps``, ``limit_train_batches``)."""
        return training_steps_warning(
            len(after_setup(self.train_set, "train_set")),
            after_setup(self.train_batch_size, "train_batch_size"),
            max_epochs,
            self.train_repeats,
            max_steps=max_steps,
            limit_batches=limit_batches,
        )

    def eval_columns(self) -> dict[str, np.ndarray]:
        """Per evaluation row: the image file and its class (folder) name, for scores.csv."""
        eval_set, manifest = after_setup(self.eval_set, "eval_set"), after_setup(self.manifest, "manifest")
        ids = eval_set.ids.numpy()
        names = manifest["classes"]
        return {
            "source": np.array([manifest["files"][i] for i in ids]),
            "source_index": ids,
            "class_name": np.array([names[c] for c in eval_set.classes.tolist()]),
        }
