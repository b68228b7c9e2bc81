"""One MVTec AD category as a one-class anomaly-detection problem with ground-truth masks (data=mvtec).

MVTec AD (Bergmann, Fauser, Sattlegger, Steger, "MVTec AD — A Comprehensive Real-World Dataset for
Unsupervised Anomaly Detection", CVPR 2019), one category folder as published::

    <root>/<category>/
      train/good/*.png                      normal images: trained on
      test/good/*.png                       normal test images (all-zero masks)
      test/<defect>/*.png                   anomalous test images, one folder per defect type
      ground_truth/<defect>/<name>_mask.png the defect's pixels (0/255), one mask per defect image

MVTec AD has no validation split, and the threshold must be fitted on images that are not tested:

* ``synthetic_val_anomalies: null`` (default): a stratified (by defect type, good included), seeded
  ``val_fraction`` of ``test/`` is the validation split, the rest is the test split. Validation has
  real defects of the same types as test; test metrics are on the remaining share of ``test/``, so
  they are not directly comparable with numbers published on the whole test set.
* ``synthetic_val_anomalies: cutpaste | blend``: ``synthetic_val_fraction`` of ``train/good`` is held
  out (not trained on) as validation normals, and each of them also gives one synthetic anomaly
  (``anogan.data.synthetic``, class ``synthetic_<method>``); test is the whole ``test/`` folder as
  published. The threshold is then fitted on synthetic defects, which may not look like real ones.

Classes: 0 = ``good``, i = the i-th defect folder in name order, then ``synthetic_<method>``; labels:
normal 0, anomalous 1. Images and masks are read once at the model size (``image_size``, square,
``channels`` 1 or 3: grey categories such as grid, screw and zipper are repeated to 3 channels, colour
ones converted to luma for 1). Masks are resized nearest-neighbour (``anogan.data.images.read_mask``)
and kept in ``eval_set.masks``. Unreadable images are skipped with a warning and listed in the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anogan.data import notes as read_notes
from anogan.data.duplicates import average_hash, duplicate_groups
from anogan.data.images import read_images, read_mask
from anogan.data.listing import list_images, relative_name
from anogan.data.reading import check_alpha
from anogan.data.splits import AnomalyDataModule, Samples, after_setup, stratified_subset
from anogan.data.synthetic import class_name, synthetic_anomalies
from anogan.utils.errors import DataError

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class MVTecSamples(Samples):
    """``Samples`` of one category, with what its manifest reports: the category ``folder``, the
    ``files`` read (a row each, synthetic rows after them), their decoded ``images`` (uint8), the
    files ``skipped``, how validation was made (``validation``) and the ``synthetic`` entry."""

    folder: Path
    files: list[Path]
    images: torch.Tensor
    masks: torch.Tensor  # every row has one (all zero for good and train/good images)
    skipped: list[dict[str, str]]
    validation: str = ""
    synthetic_entry: dict | None = None


class MVTecDataModule(AnomalyDataModule[MVTecSamples]):
    """One MVTec AD category (see the module docstring for the layout and how validation is made).

    After ``setup``: ``train_set`` (train/good minus held-out images, ``masks`` None), ``eval_set``
    (validation rows then test rows, ``masks`` uint8 {0,1} N×1×S×S), ``eval_split`` and ``manifest``.
    Raises ``DataError`` for a missing category folder, a defect image without its mask, or a split
    without both normal and anomalous images.
    """

    def __init__(
        self,
        root: str = "data/mvtec",
        category: str = "bottle",
        image_size: int = 64,
        channels: int = 3,
        val_fraction: float = 0.5,
        synthetic_val_anomalies: str | None = None,
        synthetic_val_fraction: float = 0.1,
        val_subset: int | float | None = None,
        test_subset: int | float | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        split_seed: int = 0,
        target_fpr: float | None = None,
        duplicates: str = "drop",
        near_duplicates: int | None = None,
        alpha: str = "black",
    ):
        super().__init__()
        self.save_hyperparameters()
        check_alpha(alpha)
        self._read_notes: tuple[list[str], list[list[read_notes.Note]]] = ([], [])  # every file read: (path, notes)

    def _category(self) -> Path:
        """The category folder, once the settings are checked (here rather than in ``__init__``, whose
        errors Hydra's ``instantiate`` would wrap into a traceback)."""
        hp = self.hparams  # the settings' ranges: anogan.config.data_schema.MVTecData
        root = Path(hp.root).expanduser()
        folder = root / hp.category
        for needed in (folder / "train" / "good", folder / "test"):
            if not needed.is_dir():
                found = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir()) if root.is_dir() else []
                raise DataError(
                    f"{needed} is not a folder. Fix: set data.root to the MVTec AD folder and data.category to "
                    f"one of its categories (found: {', '.join(found) or 'none'})."
                )
        return folder

    def prepare_data(self) -> None:
        self._category()

    def _read(self, folder: Path, skipped: list) -> tuple[list[Path], list[torch.Tensor], list[bytes]]:
        paths, listing_skips = list_images(folder)  # (candidate files, broken links / duplicates / text files)
        hp = self.hparams
        kept, images, digests, unreadable, notes = read_images(paths, hp.image_size, hp.channels, alpha=hp.alpha)
        for entry in unreadable:
            log.warning("skipping %s: %s", entry["file"], entry["reason"])
        self._read_notes[0].extend(str(p) for p in kept)
        self._read_notes[1].extend(notes)
        skipped += listing_skips + unreadable
        return kept, images, digests

    def _mask(self, folder: Path, defect: str, image_path: Path) -> torch.Tensor:
        path = folder / "ground_truth" / defect / f"{image_path.stem}_mask.png"
        if not path.is_file():
            raise DataError(
                f"{image_path} has no mask: {path} is missing. Fix: restore ground_truth/{defect}/ from the "
                f"MVTec AD archive, or move the image out of test/{defect}/."
            )
        return read_mask(path, image_path, self.hparams.image_size)

    def _read_category(self, folder: Path) -> MVTecSamples:
        """Every usable file of ``train/good`` then of ``test/<class>`` (classes: good, then the defect
        folders in name order) with its masks; rows not split yet (``fit``, ``val``, ``test`` empty)."""
        size = self.hparams.image_size
        skipped: list[dict[str, str]] = []
        train_files, train_images, digests = self._read(folder / "train" / "good", skipped)
        if not train_files:
            raise DataError(f"no usable training image in {folder / 'train' / 'good'}. Fix: check data.root and data.category.")
        defects = sorted(p.name for p in (folder / "test").iterdir() if p.is_dir() and p.name != "good")
        names = ["good", *defects]
        test_files, test_images, test_masks, test_classes = [], [], [], []
        for c, defect in enumerate(names):
            paths, read, found = self._read(folder / "test" / defect, skipped)
            digests += found
            test_files += paths
            test_images += read
            test_classes += [c] * len(paths)
            test_masks += [
                torch.zeros(1, size, size, dtype=torch.uint8) if c == 0 else self._mask(folder, defect, p) for p in paths
            ]
        # One id per file (training files, then test files); synthetic rows follow the files.
        files = train_files + test_files
        images = torch.stack(train_images + test_images)
        masks = torch.zeros(len(files), 1, size, size, dtype=torch.uint8)  # train/good: all zero
        if test_masks:
            masks[len(train_files) :] = torch.stack(test_masks)
        near = average_hash(images) if self.hparams.near_duplicates is not None else None
        group = duplicate_groups(digests, near, self.hparams.near_duplicates)
        empty = np.arange(0)
        return MVTecSamples(
            classes=np.array([0] * len(train_files) + test_classes, dtype=np.int64),
            names=names,
            fit=np.arange(len(train_files)),
            val=empty,
            test=empty,
            duplicates=self.duplicate_check(group, lambda i: relative_name(folder, files[i])),
            pixels=lambda rows: images[rows],
            masks=masks,
            synthetic=np.zeros(len(files), dtype=bool),  # synthetic rows come with synthetic_val_anomalies
            fix="change data.val_fraction / data.val_subset / data.test_subset, or check that test/ holds good and defect folders",
            where=f" of {folder}",
            folder=folder,
            files=files,
            images=images,
            skipped=skipped,
        )

    def list_samples(self) -> MVTecSamples:
        """train/good trained on; validation and test from test/ or, with ``synthetic_val_anomalies``,
        held-out train/good images and their synthetic anomalies (module docstring)."""
        hp = self.hparams
        s = self._read_category(self._category())
        pool = np.arange(len(s.fit), len(s.files))
        if hp.synthetic_val_anomalies is None:
            check, classes = s.duplicates, s.classes
            s.val, s.test = check.separate_pool(
                s.fit, pool, lambda p: p[stratified_subset(classes[p], float(hp.val_fraction), hp.split_seed)]
            )
            s.validation = f"a stratified {hp.val_fraction} of test/ (by defect type); test is the rest of test/"
            s.calibration_fix = "raise data.val_fraction"
            return s
        return self._synthetic_validation(s, pool)

    def _synthetic_validation(self, s: MVTecSamples, pool: np.ndarray) -> MVTecSamples:
        """``s`` with ``synthetic_val_fraction`` of train/good held out as validation normals, one
        synthetic anomaly made from each (rows after the files), and the whole of test/ as test."""
        hp = self.hparams
        n_train = len(s.fit)
        order = np.random.default_rng(hp.split_seed).permutation(n_train)
        n_held = int(round(n_train * hp.synthetic_val_fraction))
        if not 1 <= n_held < n_train:
            raise DataError(
                f"data.synthetic_val_fraction={hp.synthetic_val_fraction} holds out {n_held} of the {n_train} "
                "training images; at least one must be held out and one trained on. Fix: change data.synthetic_val_fraction."
            )
        s.fit = np.sort(order[n_held:])
        held, s.test = s.duplicates.separate_splits(s.fit, np.sort(order[:n_held]), pool)
        if not len(held):
            raise DataError(
                "every held-out train/good image is a copy of a trained one (see data.duplicates). Fix: remove the "
                "copies from train/good or raise data.synthetic_val_fraction."
            )
        n_held, method = len(held), hp.synthetic_val_anomalies
        fake_images, fake_masks = synthetic_anomalies(s.images[held], method, hp.split_seed + 4)
        fake_ids = len(s.files) + np.arange(n_held)
        s.names.append(class_name(method))
        images = torch.cat([s.images, fake_images])
        s.pixels = lambda rows: images[rows]
        s.masks = torch.cat([s.masks, fake_masks])
        s.classes = np.concatenate([s.classes, np.full(n_held, len(s.names) - 1)])
        s.synthetic = np.arange(len(s.classes)) >= len(s.files)
        s.val = np.concatenate([held, fake_ids])
        rel = [relative_name(s.folder, s.files[i]) for i in held]
        s.synthetic_entry = {
            "method": method,
            "class_name": class_name(method),
            "seed": hp.split_seed + 4,
            "rows": [{"id": int(i), "source": src, "synthetic": True} for i, src in zip(fake_ids, rel)],
        }
        s.validation = (
            f"{n_held} held-out train/good images ({hp.synthetic_val_fraction}) and one {method} anomaly made "
            "from each; test is the whole test/ folder"
        )
        s.calibration_fix = "raise data.synthetic_val_fraction"
        return s

    def describe(self, samples: MVTecSamples, val: np.ndarray, test: np.ndarray, shared: dict) -> dict:
        s, hp = samples, self.hparams
        return {
            "dataset": "mvtec",
            "root": str(Path(hp.root).expanduser().resolve()),
            "category": hp.category,
            "classes": s.names,
            "labels": {"normal": 0, "anomalous": 1},
            "validation": s.validation,
            "id_scheme": "index into files; ids from len(files) on are synthetic rows (see synthetic.rows)",
            "files": [relative_name(s.folder, p) for p in s.files],
            "masks": {
                "source": "ground_truth/<defect>/<name>_mask.png; test/good and train/good: all zero",
                "resize": "nearest-neighbour, to the image's size then to image_size",
                **shared["masks"],
            },
            "synthetic": s.synthetic_entry,
            "skipped": s.skipped + s.duplicates.dropped(),
            "splits": shared["splits"],
            "duplicates": shared["duplicates"],
            "calibration": shared["calibration"],
            "alpha": hp.alpha,
            "read_notes": read_notes.manifest_entry(
                [relative_name(s.folder, Path(f)) for f in self._read_notes[0]], self._read_notes[1]
            ),
        }

    def report(self, samples: MVTecSamples, val: np.ndarray, test: np.ndarray) -> None:
        """The read-notes summary, and how many defect images have an empty mask at the model size."""
        manifest, size = after_setup(self.manifest, "manifest"), self.hparams.image_size
        if line := read_notes.summary(self._read_notes[1], "see splits.json read_notes"):
            log.warning("%s", line)
        empty = manifest["masks"]["val"]["anomalous_with_empty_mask"] + manifest["masks"]["test"]["anomalous_with_empty_mask"]
        if empty:
            log.warning(
                "%d defect images have an empty mask at %dx%d px (defect too small for the model size)", empty, size, size
            )

    def eval_columns(self) -> dict[str, np.ndarray]:
        """Per evaluation row: the image file (for a synthetic row, the file it was made from) and its
        class name: ``good``, the defect folder name (e.g. ``crack``) or ``synthetic_<method>``."""
        eval_set, manifest = after_setup(self.eval_set, "eval_set"), after_setup(self.manifest, "manifest")
        ids = eval_set.ids.numpy()
        files = manifest["files"]
        synthetic = {r["id"]: r["source"] for r in (manifest["synthetic"] or {}).get("rows", [])}
        names = manifest["classes"]
        return {
            "source": np.array([files[i] if i < len(files) else synthetic[i] for i in ids]),
            "source_index": ids,
            "class_name": np.array([names[c] for c in eval_set.classes.tolist()]),
        }
