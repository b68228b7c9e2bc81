"""The schema of ``conf/data``: the keys every data module takes (:class:`DataCommon`) and those of
CIFAR-10, image folders and MVTec AD, each with its type and allowed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from anogan.config.choices import (
    ALPHA_RULES,
    CLASSES,
    DUPLICATE_POLICIES,
    HASH_BITS,
    IMAGE_SIZES,
    PROTOCOLS,
    RESIZE_POLICIES,
    SYNTHETIC_METHODS,
    class_index,
)
from anogan.config.fields import Rule, among, declare, fraction, is_number, is_whole, one_of, rule, whole

SUBSET_WORDS = "use null (all), a whole count >= 1 or a fraction in (0, 1]"
ALPHA_WORDS = f"use one of {', '.join(ALPHA_RULES)} (transparent pixels: anogan.data.reading)"
TARGET_FPR_WORDS = "use ${threshold.target_fpr} (the default), a fraction in (0, 1), or null"

# The rules the data modules also apply at run time (``anogan.data.reading``, ``images``, ``duplicates``),
# for values given from Python rather than a checked config.
ALPHA_RULE = among(ALPHA_RULES, ALPHA_WORDS)
RESIZE_RULE = among(RESIZE_POLICIES)
DUPLICATES_RULE = among(
    DUPLICATE_POLICIES, f"use one of {', '.join(DUPLICATE_POLICIES)} (a picture in two splits: anogan.data.duplicates)"
)
NEAR_DUPLICATES_RULE = Rule(
    lambda v: v is None or (is_whole(v) and 0 <= v < HASH_BITS // 2),
    f"use null (exact copies only) or a number of differing hash bits from 0 to {HASH_BITS // 2 - 1}, e.g. 2",
)


def _subset(value: object) -> bool:
    return value is None or (is_number(value) and value > 0 and (value <= 1 or float(value).is_integer()))


def _normal_class(value: Any) -> bool:
    try:
        class_index(value)
    except (ValueError, TypeError):
        return False
    return True


def _target_fpr(value: object) -> bool:
    return value is None or (is_number(value) and 0.0 < value < 1.0)


@dataclass
class DataCommon:
    """Keys of every data module."""

    _target_: str = MISSING
    root: str = MISSING
    image_size: int = one_of(IMAGE_SIZES, f"the networks support {', '.join(map(str, IMAGE_SIZES))}")
    channels: int = one_of((1, 3), "use 1 (grey) or 3 (colour)")
    val_fraction: float = fraction()
    val_subset: Any = rule(_subset, SUBSET_WORDS)
    test_subset: Any = rule(_subset, SUBSET_WORDS)
    batch_size: int = whole(1)
    num_workers: int = whole(0)
    split_seed: int = MISSING
    duplicates: str = declare(DUPLICATES_RULE)
    near_duplicates: int | None = declare(NEAR_DUPLICATES_RULE)


@dataclass
class Cifar10Data(DataCommon):
    download: bool = MISSING
    verify_checksums: bool = MISSING
    normal_class: Any = rule(_normal_class, f"use 0-9 or one of {', '.join(CLASSES)}")
    protocol: str = one_of(PROTOCOLS)
    train_fraction: float = fraction()
    val_anomaly_ratio: float = rule(
        lambda v: is_number(v) and v > 0, "use a number > 0 (validation anomalies per validation normal)"
    )


@dataclass
class FolderData(DataCommon):
    normal_dir: str = MISSING
    abnormal_dir: Any = MISSING  # a folder, a list of folders, or null
    mask_dir: Any = MISSING
    normal_test_dir: str | None = MISSING
    normal_test_fraction: float = fraction()
    resize: str = declare(RESIZE_RULE)
    alpha: str = declare(ALPHA_RULE)
    max_batch_fraction: float | None = rule(
        lambda v: v is None or (is_number(v) and 0.0 < v <= 1.0), "use a fraction in (0, 1], or null for no cap"
    )
    min_steps_per_epoch: int | None = whole(0, nullable=True)
    target_fpr: float | None = rule(_target_fpr, TARGET_FPR_WORDS)


@dataclass
class MVTecData(DataCommon):
    category: str = MISSING
    synthetic_val_anomalies: str | None = one_of((None, *SYNTHETIC_METHODS), f"use null, {' or '.join(SYNTHETIC_METHODS)}")
    synthetic_val_fraction: float = fraction()
    alpha: str = declare(ALPHA_RULE)
    target_fpr: float | None = rule(_target_fpr, TARGET_FPR_WORDS)
