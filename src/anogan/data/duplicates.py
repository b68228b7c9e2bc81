"""The same picture twice: duplicate images within and across splits (``data.duplicates``).

A copy of a training image among the evaluation images, or one picture in both validation and
test, inflates every metric (anomalib#746; a public welding data set had all its test images in
its training set). Every data module therefore hashes each image it reads and compares the splits.

Exact duplicates (always checked)
    ``pixel_digest``: a BLAKE2b hash of the decoded pixels at full resolution (what
    ``anogan.data.reading.load_pixels`` returns: EXIF orientation, bit depth and alpha applied,
    before any resize) together with their shape. The same picture saved as PNG, BMP, TIFF or
    lossless WEBP, under any name, is one picture; a colour file whose three channels are equal
    hashes as the grey picture. A lossy re-encoding (JPEG) changes pixels: see near duplicates.

Near duplicates (``data.near_duplicates: k``, off by default)
    ``average_hash``: the model input (``image_size``) turned grey, averaged down to 8 x 8, one bit
    per cell (brighter than the mean); two images whose 64-bit hashes differ in at most ``k`` bits
    are treated as the same picture (Krawetz's average hash, "aHash", as in the ``imagehash`` package). A JPEG
    re-encoding of a picture usually differs by 0-2 bits; unrelated photos by ~32. Flat or
    low-contrast images (a grey wall, textures such as MVTec's carpet) can collide: check the
    listed pairs before trusting a large count.

Policy across splits (``data.duplicates``)
    Splits are ranked train < validation < test. A picture found in two of them keeps its earliest
    copy; the later copies are

    * ``drop`` (default): removed from the later (evaluation) split, listed in ``splits.json``
      (``duplicates.across`` and ``skipped``);
    * ``refuse``: a ``DataError`` naming the first pairs; nothing is trained;
    * ``keep``: kept, and only reported (for comparing with numbers published on the data as is).

    Duplicates within one split are listed (``duplicates.within``), never removed. Training is
    never changed by the policy: only evaluation rows are dropped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anogan.config.data_schema import DUPLICATES_RULE, NEAR_DUPLICATES_RULE
from anogan.config.fields import check
from anogan.utils.errors import DataError

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test")


def check_policy(policy: str, near_duplicates: int | None) -> None:
    """``DataError`` with the config rule's one line (``data.duplicates=<value>: ...`` /
    ``data.near_duplicates=<value>: ...``) for a value that rule refuses."""
    check("data.duplicates", policy, DUPLICATES_RULE, DataError)
    check("data.near_duplicates", near_duplicates, NEAR_DUPLICATES_RULE, DataError)


def pixel_digest(pixels: np.ndarray) -> bytes:
    """A 16-byte BLAKE2b hash of uint8 H×W×C pixels and their shape; C = 3 with equal channels hashes
    as C = 1, so a grey picture saved as RGB is the same picture."""
    if pixels.ndim == 3 and pixels.shape[2] == 3 and (pixels[..., :1] == pixels).all():
        pixels = pixels[..., :1]
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(pixels.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return h.digest()


def average_hash(images: torch.Tensor) -> np.ndarray:
    """64-bit average hashes (uint64, N) of uint8 images N×C×H×W (H, W ≥ 8): grey (channel mean),
    area-averaged to 8 x 8, bit i set where cell i is brighter than the image's mean cell."""
    grey = images.float().mean(1, keepdim=True)
    cells = F.adaptive_avg_pool2d(grey, 8).flatten(1)
    bits = (cells > cells.mean(1, keepdim=True)).numpy()
    return np.packbits(bits, axis=1, bitorder="little").view("<u8")[:, 0].astype(np.uint64)


def _hamming(a: np.uint64, b: np.ndarray) -> np.ndarray:
    x = np.bitwise_xor(b, a)
    return np.unpackbits(x.view(np.uint8).reshape(len(b), 8), axis=1).sum(1)


def duplicate_groups(digests: Sequence[bytes], near: np.ndarray | None = None, max_distance: int | None = None) -> np.ndarray:
    """The group of each row (N): the smallest row index holding the same picture.

    Rows with equal ``digests`` are one picture; with ``near`` (N average hashes) and ``max_distance``,
    so are rows whose hashes differ in at most ``max_distance`` bits (transitively: A~B and B~C put
    A, B, C together). Near comparison is all pairs, chunked: O(N²) bit counts (about 1 s for 10,000 rows).
    """
    n = len(digests)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[bytes, int] = {}
    for i, d in enumerate(digests):
        union(first.setdefault(d, i), i)
    if near is not None and max_distance is not None and n > 1:
        for i in range(n - 1):
            close = np.flatnonzero(_hamming(near[i], near[i + 1 :]) <= max_distance) + i + 1
            for j in close:
                union(i, int(j))
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def group_units(rows: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``rows`` gathered by picture: (one representative row per picture, in order of first
    appearance; the rows of each). Splitting units rather than rows keeps copies on one side."""
    units: dict[int, list[int]] = {}
    for r in rows:
        units.setdefault(int(group[r]), []).append(int(r))
    members = [np.array(m, dtype=np.int64) for m in units.values()]
    return np.array([m[0] for m in members], dtype=np.int64), members


class DuplicateCheck:
    """Compares splits for one data module: ``separate`` applies the policy between an earlier and a
    later split, ``manifest`` and ``log_line`` report everything found.

    ``group``: the picture of each row (``duplicate_groups``); ``name``: a row's file for the
    report (``splits.json`` path, or e.g. ``test[17]`` for CIFAR-10).
    """

    def __init__(self, group: np.ndarray, name: Callable[[int], str], policy: str = "drop", near_duplicates: int | None = None):
        check_policy(policy, near_duplicates)
        self.group, self.name, self.policy, self.near = group, name, policy, near_duplicates
        self.across: list[dict] = []

    def separate(self, earlier: np.ndarray, later: np.ndarray, earlier_split: str, later_split: str) -> np.ndarray:
        """The rows of ``later`` to keep: all of them, minus (policy ``drop``) those showing a picture
        that ``earlier`` holds. Every such row is recorded; ``refuse`` raises ``DataError`` naming
        up to three pairs and the fix."""
        first: dict[int, int] = {}
        for r in earlier:
            first.setdefault(int(self.group[r]), int(r))
        copies = [(int(r), first[int(self.group[r])]) for r in later if int(self.group[r]) in first]
        if not copies:
            return later
        if self.policy == "refuse":
            pairs = "; ".join(f"{self.name(r)} ({later_split}) = {self.name(k)} ({earlier_split})" for r, k in copies[:3])
            raise DataError(
                f"{len(copies)} {later_split} images show the same picture as {earlier_split} images: {pairs}"
                f"{' ...' if len(copies) > 3 else ''}. Fix: remove the copies, or set data.duplicates=drop "
                "(drop them from evaluation) or keep (report only)."
            )
        action = "dropped" if self.policy == "drop" else "kept"
        self.across += [
            {"file": self.name(r), "split": later_split, "copy_of": self.name(k), "copy_in": earlier_split, "action": action}
            for r, k in copies
        ]
        if self.policy == "keep":
            return later
        drop = {r for r, _ in copies}
        return np.array([r for r in later if int(r) not in drop], dtype=later.dtype)

    def separate_splits(self, fit: np.ndarray, val: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validation and test rows chosen before the comparison, after ``separate``: validation
        against training, then test against training and against what validation keeps."""
        val = self.separate(fit, val, "train", "val")
        return val, self.separate(val, self.separate(fit, test, "train", "test"), "val", "test")

    def separate_pool(
        self, fit: np.ndarray, pool: np.ndarray, draw: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Validation and test rows from one evaluation ``pool``: the pool against training, then
        ``draw`` (pool rows -> the validation rows) on what it keeps, then the rest (test) against
        validation."""
        pool = self.separate(fit, pool, "train", "evaluation")
        val = draw(pool)
        return val, self.separate(val, np.setdiff1d(pool, val), "val", "test")

    def dropped(self) -> list[dict]:
        """``skipped`` entries (file, reason) of the rows ``separate`` dropped."""
        return [
            {
                "file": a["file"],
                "reason": f"duplicate (the same picture as {a['copy_of']} in {a['copy_in']}; data.duplicates=drop)",
            }
            for a in self.across
            if a["action"] == "dropped"
        ]

    def within(self, splits: dict[str, np.ndarray]) -> dict[str, list[list[str]]]:
        """Per split: the groups of rows showing one picture (files), only groups of two or more."""
        out = {}
        for split, rows in splits.items():
            _, members = group_units(np.asarray(rows), self.group)
            out[split] = [[self.name(int(r)) for r in m] for m in members if len(m) > 1]
        return out

    def manifest(self, splits: dict[str, np.ndarray]) -> dict:
        """The ``duplicates`` entry of ``splits.json`` (``splits``: the final rows of each split)."""
        method = "exact: BLAKE2b of the decoded pixels"
        if self.near is not None:
            method += f"; near: 64-bit average hash, at most {self.near} bits apart"
        return {
            "policy": self.policy,
            "method": method,
            "across": self.across,
            "dropped": sum(a["action"] == "dropped" for a in self.across),
            "within": self.within(splits),
        }

    @staticmethod
    def log(entry: dict, logger: logging.Logger) -> None:
        """``log_line`` of a manifest ``duplicates`` entry: a warning when pictures cross splits, info
        when copies only sit within one split (they do not inflate metrics), nothing when none."""
        if line := DuplicateCheck.log_line(entry):
            logger.log(logging.WARNING if entry["across"] else logging.INFO, "%s", line)

    @staticmethod
    def log_line(entry: dict) -> str | None:
        """One line summarising a manifest ``duplicates`` entry, or None when nothing was found."""
        n_within = {k: len(v) for k, v in entry["within"].items() if v}
        if not entry["across"] and not n_within:
            return None
        parts = []
        if entry["across"]:
            pairs = sorted({f"{a['split']} copies of {a['copy_in']} images" for a in entry["across"]})
            parts.append(
                f"{len(entry['across'])} evaluation images show the same picture as an earlier split ({', '.join(pairs)}): "
                f"{'dropped' if entry['policy'] == 'drop' else 'kept'} (data.duplicates={entry['policy']})"
            )
        if n_within:
            parts.append(
                "pictures present twice or more within a split: " + ", ".join(f"{n} in {k}" for k, n in n_within.items())
            )
        return "duplicates: " + "; ".join(parts) + "; see splits.json duplicates"
