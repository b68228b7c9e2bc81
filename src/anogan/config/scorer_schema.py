"""The schema of ``conf/mapping``: the keys every scorer takes (:class:`ScorerCommon`) and those of
each scorer of ``anogan.scorers``. A scorer file stores the same settings (plus the run's ``seed``)
and is checked against the same declarations (:func:`scorer_settings`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING, OmegaConf

from anogan.config.choices import CORESETS, CORRECTIONS, D_SCORES, POOLINGS, TRANSFORM_SET_NAMES
from anogan.config.fields import Setting, is_number, is_whole, learning_rate, non_negative, one_of, rule, settings, whole

D_BLOCK_WORDS = "use a block of D's feature stack: 1, 2, ... or -1 (the last)"


@dataclass
class ScorerCommon:
    """Keys of every scorer (``anogan.scorers.base.Scorer``)."""

    _target_: str = MISSING
    batch_size: int = whole(1)
    correction: str = one_of(CORRECTIONS)
    map_sigma: float = non_negative()
    map_features: bool = MISSING
    maps: bool = MISSING


def _early_stop(value: Any) -> bool:
    return value is None or (
        set(value) == {"patience", "rel_tol"}
        and is_whole(value["patience"])
        and value["patience"] >= 1
        and is_number(value["rel_tol"])
        and value["rel_tol"] >= 0
    )


@dataclass
class LatentSearch(ScorerCommon):
    """``mapping=latent`` (and latent_cpu)."""

    alpha: float = rule(
        lambda v: is_number(v) and 0.0 <= v <= 1.0, "the weight of the discrimination term must be a number in [0, 1]"
    )
    iterations: int = whole(1)
    lr: float = learning_rate()
    betas: list[float] = MISSING
    eps: float = MISSING
    early_stop: Any = rule(_early_stop, "use null, or {patience: N, rel_tol: R} with a whole N >= 1 and R >= 0")


@dataclass
class EncoderTraining:
    kappa: float = non_negative()
    width: int = whole(1)
    epochs: int = whole(1)
    lr: float = learning_rate()
    betas: list[float] = MISSING


@dataclass
class EncoderScorer(ScorerCommon, EncoderTraining):
    """``mapping=encoder``."""


@dataclass
class EncoderSearch(LatentSearch):
    """``mapping=encoder_search`` (and encoder_search_cpu)."""

    encoder: EncoderTraining = MISSING


def _transforms() -> Any:
    return rule(
        lambda v: v is None or v in TRANSFORM_SET_NAMES,
        f"use ${{model.self_supervised}}: null or one of {', '.join(TRANSFORM_SET_NAMES)}",
    )


def _combine() -> Any:
    return rule(
        lambda v: (
            v is None
            or ((OmegaConf.is_list(v) or isinstance(v, (list, tuple))) and len(v) > 0 and all(isinstance(c, str) for c in v))
        ),
        "use null or a list of score components, e.g. [transformations, dfeatures]",
    )


@dataclass
class TransformationScorer(ScorerCommon):
    """``mapping=transformations`` (``anogan.scorers.discriminator``)."""

    transforms: Any = _transforms()
    combine: Any = _combine()


@dataclass
class DFeatureScorer(ScorerCommon):
    """``mapping=dfeatures`` and ``dcombined`` (``anogan.scorers.discriminator``)."""

    k: int = whole(1)
    layer: int = rule(lambda v: is_whole(v) and v != 0, D_BLOCK_WORDS)
    pooling: str = one_of(POOLINGS)
    bank_size: int = whole(1)
    patch_layer: int = rule(lambda v: is_whole(v) and v != 0, D_BLOCK_WORDS)
    patch_neighbourhood: int = rule(lambda v: is_whole(v) and v >= 1 and v % 2 == 1, "use an odd whole number >= 1")
    patch_bank_size: int = whole(1)
    coreset: str = one_of(CORESETS)
    coreset_projection: Any = whole(1, nullable=True)
    transforms: Any = _transforms()
    score: str = one_of(D_SCORES)
    combine: Any = _combine()


@dataclass
class DLogitScorer(ScorerCommon):
    """``mapping=dlogit`` (``anogan.scorers.dlogit``)."""

    transforms: Any = _transforms()
    combine: Any = _combine()


# conf/mapping/<option>.yaml -> its schema (the yaml file names it in its defaults list)
MAPPING_SCHEMAS = {
    "latent": LatentSearch,
    "encoder": EncoderScorer,
    "encoder_search": EncoderSearch,
    "transformations": TransformationScorer,
    "dfeatures": DFeatureScorer,
    "dlogit": DLogitScorer,
}
# the scorer class (its name in anogan.scorers: the yaml's _target_) -> its schema
SCORER_SCHEMAS = {
    "LatentMapping": LatentSearch,
    "EncoderScorer": EncoderScorer,
    "EncoderSearch": EncoderSearch,
    "TransformationScorer": TransformationScorer,
    "DFeatureScorer": DFeatureScorer,
    "DLogitScorer": DLogitScorer,
}


def scorer_settings(class_name: str) -> dict[str, Setting] | None:
    """The settings a scorer of class ``class_name`` is built with and a scorer file stores: its
    schema's keys (not ``_target_``) and the run's ``seed``; None for a class without a schema."""
    schema = SCORER_SCHEMAS.get(class_name)
    if schema is None:
        return None
    declared = {k: v for k, v in settings(schema).items() if k != "_target_"}
    return {**declared, "seed": Setting(int)}
