"""Your own images as a one-class anomaly-detection problem (like anomalib's ``Folder``).

Layout (every folder searched recursively for PNG/JPEG; the names are settings)::

    <root>/
      <normal_dir>/        normal images: trained on (minus a held-out share when there is no normal_test_dir)
      <normal_test_dir>/   optional: normal images for evaluation only
      <abnormal_dir>/      anomalous images (evaluation only); a list of folders gives one class each
      <mask_dir>/          optional: ground-truth masks of the anomalous images; the mask of
                           <abnormal_dir>/<sub>/<name>.<ext> is <mask_dir>/<sub>/<name>.png or <name>_mask.png
                           (a list: one mask folder per abnormal folder); normal images get all-zero masks

The evaluation pool (held-out or ``normal_test_dir`` normals + all anomalous images) is split,
stratified by class and seeded by ``split_seed``, into validation (``val_fraction``: the threshold is
fitted there) and test. Splits are the same ``AnomalySplit`` as CIFAR-10's (uint8 images, decoded and
resized once, the same way: ``to_model_input``), with a ``splits.json`` manifest listing every file.
Classes: 0 = normal, i = the i-th abnormal folder (1-based); labels: normal 0, anomalous 1.
Unreadable or non-square files are skipped with a warning and listed in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anogan.data.cifar10 import stratified_subset
from anogan.data.splits import AnomalyDataModule, AnomalySplit, DataError, mask_counts, read_mask

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageError(Exception):
    """One image cannot be used (unreadable, not square): it is skipped, the rest go on."""


def list_images(folder: Path) -> list[Path]:
    """Every PNG/JPEG under ``folder`` (recursively), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def to_model_input(image_hwc: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    """uint8 H×W×C (C = 1 or 3) -> uint8 channels×size×size, exactly as the CIFAR-10 module does:
    ITU-R 601-2 luma for grey models, bilinear antialiased resize rounded back to uint8."""
    image = torch.from_numpy(np.array(image_hwc, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].contiguous()
    if channels == 1 and image.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        image = (image.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif channels == 3 and image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1).contiguous()
    if image_size != image.shape[-1]:
        image = F.interpolate(image.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        image = image.round().clamp(0, 255).to(torch.uint8)
    return image[0]


def read_image(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """A PNG/JPEG file as a uint8 channels×size×size tensor; ``ImageError`` says why it cannot be."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            data = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.uint8)
    except Exception as err:  # PIL raises many kinds for broken files
        raise ImageError(f"unreadable ({type(err).__name__}: {err})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    h, w = data.shape[:2]
    if h != w or h == 0:
        raise ImageError(f"is {w}x{h} px, not square: crop it to a square (the model takes {image_size}x{image_size})")
    return to_model_input(data, image_size, channels)


class FolderAnomalyDataModule(AnomalyDataModule):
    def __init__(
        self,
        root: str = "data/my_images",
        normal_dir: str = "normal",
        abnormal_dir: str | list[str] = "abnormal",
        normal_test_dir: str | None = None,
        normal_test_fraction: float = 0.2,
        val_fraction: float = 0.5,
        image_size: int = 64,
        channels: int = 3,
        val_subset: int | float | None = None,
        test_subset: int | float | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        split_seed: int = 0,
        mask_dir: str | list[str] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if channels not in (1, 3):
            raise ValueError(f"data.channels={channels} is not supported; use 1 (grey) or 3 (colour)")
        self.abnormal_dirs = [abnormal_dir] if isinstance(abnormal_dir, str) else list(abnormal_dir)
        # mask_dir: none, one folder for every abnormal folder, or one per abnormal folder
        self.mask_dirs = [] if mask_dir is None else [mask_dir] * len(self.abnormal_dirs) if isinstance(mask_dir, str) else list(mask_dir)
        if self.mask_dirs and len(self.mask_dirs) != len(self.abnormal_dirs):
            raise DataError(
                f"data.mask_dir has {len(self.mask_dirs)} folders for {len(self.abnormal_dirs)} data.abnormal_dir folders. "
                "Fix: give one mask folder per abnormal folder, or one for all."
            )
        self.train_set: AnomalySplit | None = None
        self.eval_set: AnomalySplit | None = None
        self.eval_split: np.ndarray | None = None  # "val" / "test" per eval row
        self.manifest: dict | None = None

    def _folder(self, name: str) -> Path:
        folder = Path(self.hparams.root).expanduser() / name
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder. Fix: set data.root and data.*_dir to your image folders.")
        return folder

    def prepare_data(self) -> None:
        for name in [self.hparams.normal_dir, *self.abnormal_dirs, *self.mask_dirs] + ([self.hparams.normal_test_dir] if self.hparams.normal_test_dir else []):
            self._folder(name)

    def _mask(self, c: int, path: Path) -> torch.Tensor:
        """The mask of ``path``, an image of the c-th abnormal folder (1-based), at the model size."""
        rel = path.relative_to(self._folder(self.abnormal_dirs[c - 1]))
        folder = self._folder(self.mask_dirs[c - 1]) / rel.parent
        candidates = (folder / f"{rel.stem}.png", folder / f"{rel.stem}_mask.png")
        for mask in candidates:
            if mask.is_file():
                return read_mask(mask, path, self.hparams.image_size)
        raise DataError(f"{path} has no mask: neither {candidates[0]} nor {candidates[1]} exists. Fix: add it, or set data.mask_dir=null.")

    def _read(self, paths: list[Path], skipped: list) -> tuple[list[Path], list[torch.Tensor]]:
        kept, images = [], []
        for path in paths:
            try:
                images.append(read_image(path, self.hparams.image_size, self.hparams.channels))
                kept.append(path)
            except ImageError as err:
                log.warning("skipping %s: %s", path, err)
                skipped.append({"file": str(path), "reason": str(err)})
        return kept, images

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        root = Path(hp.root).expanduser()
        skipped: list[dict] = []
        normal, normal_images = self._read(list_images(self._folder(hp.normal_dir)), skipped)
        if hp.normal_test_dir:
            held, held_images = self._read(list_images(self._folder(hp.normal_test_dir)), skipped)
            fit = np.arange(len(normal))
        else:
            order = np.random.default_rng(hp.split_seed).permutation(len(normal))
            n_held = int(round(len(normal) * hp.normal_test_fraction))
            held_pos, fit = np.sort(order[:n_held]), np.sort(order[n_held:])
            held, held_images = [normal[i] for i in held_pos], [normal_images[i] for i in held_pos]
            normal, normal_images = [normal[i] for i in fit], [normal_images[i] for i in fit]
            fit = np.arange(len(normal))
        abnormal, abnormal_images, abnormal_classes, abnormal_masks = [], [], [], []
        for c, name in enumerate(self.abnormal_dirs, start=1):
            paths, images = self._read(list_images(self._folder(name)), skipped)
            abnormal_masks += [self._mask(c, p) for p in paths] if self.mask_dirs else []
            abnormal += paths
            abnormal_images += images
            abnormal_classes += [c] * len(paths)
        if not len(fit):
            raise DataError(f"no usable normal training image in {root / hp.normal_dir}.")

        # One id per file: training normals, then evaluation normals, then anomalies.
        files = normal + held + abnormal
        images = torch.stack(normal_images + held_images + abnormal_images)
        classes = np.array([0] * (len(normal) + len(held)) + abnormal_classes, dtype=np.int64)
        ids = np.arange(len(files))
        pool = ids[len(normal) :]
        val_pos = stratified_subset(classes[pool], float(hp.val_fraction), hp.split_seed)
        val_ids = pool[val_pos]
        test_ids = np.setdiff1d(pool, val_ids)
        val_ids = val_ids[stratified_subset(classes[val_ids], hp.val_subset, hp.split_seed + 2)]
        test_ids = test_ids[stratified_subset(classes[test_ids], hp.test_subset, hp.split_seed + 3)]
        for name, chosen in (("validation", val_ids), ("test", test_ids)):
            labels = classes[chosen] != 0
            if labels.all() or not labels.any():
                raise DataError(
                    f"the {name} split has only {'anomalous' if labels.any() else 'normal'} images ({len(chosen)}); "
                    "thresholds and AUROC need both. Fix: add images, or change data.val_fraction / "
                    "data.normal_test_fraction / data.val_subset / data.test_subset."
                )
        eval_ids = np.concatenate([val_ids, test_ids])
        self.train_set = AnomalySplit(images[fit], classes[fit], ids[fit], 0)
        masks = None
        if self.mask_dirs:  # normal images: all zero
            normal_masks = torch.zeros(len(files) - len(abnormal), 1, hp.image_size, hp.image_size, dtype=torch.uint8)
            masks = torch.cat([normal_masks, torch.stack(abnormal_masks)])[eval_ids]
        self.eval_set = AnomalySplit(images[eval_ids], classes[eval_ids], eval_ids, 0, masks=masks)
        self.eval_split = np.array(["val"] * len(val_ids) + ["test"] * len(test_ids))
        names = ["normal", *self.abnormal_dirs]

        def describe(chosen: np.ndarray) -> dict:
            n_anom = int((classes[chosen] != 0).sum())
            counts = np.bincount(classes[chosen], minlength=len(names))
            return {
                "size": int(len(chosen)),
                "normal": int(len(chosen) - n_anom),
                "anomalous": n_anom,
                "class_counts": {n: int(counts[c]) for c, n in enumerate(names)},
                "ids": [int(i) for i in chosen],
            }

        self.manifest = {
            "dataset": "folder",
            "root": str(root.resolve()),
            "classes": names,
            "labels": {"normal": 0, "anomalous": 1},
            "id_scheme": "index into files",
            "files": [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in files],
            "skipped": skipped,
            "masks": None if masks is None else {
                "val": mask_counts(masks[: len(val_ids)], classes[val_ids]),
                "test": mask_counts(masks[len(val_ids) :], classes[test_ids]),
            },
            "splits": {"train": describe(fit), "val": describe(val_ids), "test": describe(test_ids)},
        }
        log.info("splits: %s", {k: v["size"] for k, v in self.manifest["splits"].items()})

    def eval_columns(self) -> dict[str, np.ndarray]:
        """Per evaluation row: the image file and its class (folder) name, for scores.csv."""
        ids = self.eval_set.ids.numpy()
        names = self.manifest["classes"]
        return {
            "source": np.array([self.manifest["files"][i] for i in ids]),
            "source_index": ids,
            "class_name": np.array([names[c] for c in self.eval_set.classes.tolist()]),
        }
