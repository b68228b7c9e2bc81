"""The schema of ``conf/``: one dataclass per config group option, registered in Hydra's ConfigStore.

Each option's yaml file names its schema first in its defaults list (``- /schema/model@_here_: dcgan``),
so Hydra composes onto a typed, closed node: a misspelt key (``mapping.alpah=0.5``) or a value of the
wrong type (``mapping.alpha=abc``) is refused by Hydra before the job starts. A ``+key=value`` override
is the one way past that (Hydra adds it whatever the schema says), so :func:`validate` refuses every key
that is not a field of its node's dataclass (``+trainer.gradient_clip_val=1``, ``+mapping.alpah=0.5``).
The yaml files hold the values (and their comments); the dataclasses hold the types and, in a field's
``rule``, the one check of its range. Options without a schema (a new ``conf/mapping/*.yaml``, the
``logger`` and ``callbacks`` entries: third-party classes) are checked against their ``_target_``'s
constructor instead: a key it does not take is refused.

Adding a key (docs/reliability.md, "Configuration checks"):

* to an existing group option: its value and comment in ``conf/<group>/<option>.yaml`` and a field in
  the dataclass below (``name: type = MISSING``, or ``= rule(ok, "what is allowed")`` for a range);
  e.g. ``model.self_supervised`` goes into :class:`Model`, a data key into :class:`DataCommon` (every
  data module) or one data module's class; a new ``conf/mapping/<name>.yaml`` either gets a class here
  (subclass :class:`ScorerCommon`, register it in :data:`SCHEMAS`) or none (its ``_target_``'s keywords rule);
* a top-level key (e.g. ``plan``): in ``conf/config.yaml`` and :class:`Config`;
* a ``trainer`` keyword of Lightning: :class:`Trainer`, unless it cannot work under the GAN's manual
  optimisation: then a line in :data:`REFUSED_TRAINER_KEYS` says what to use instead.

Cross-key checks (files that must exist, the GPU, DDP in a sweep) live in ``anogan.config.checks``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf

from anogan.config.choices import (
    ALPHA_RULES,
    CLASSES,
    CORESETS,
    CORRECTIONS,
    HASH_BITS,
    IMAGE_SIZES,
    POOLINGS,
    PROTOCOLS,
    RESIZE_POLICIES,
    THRESHOLD_RULES,
    class_index,
)
from anogan.config.choices import DUPLICATE_POLICIES as POLICIES
from anogan.config.choices import SYNTHETIC_METHODS as METHODS
from anogan.config.gan_options import NDA_TRANSFORMS, check_gan_options
from anogan.config.gan_options import TRANSFORM_SET_NAMES as TRANSFORM_SETS
from anogan.utils.errors import ConfigError, UserError

# A learning rate above this is refused: Adam moves every weight by up to lr per step, and the
# networks' weights are O(0.01-1), so lr > 1 can only blow up (the recipes use 1e-4 to 1e-3).
MAX_LR = 1.0
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")

# Lightning Trainer keywords that cannot do what they say for the GAN (manual optimization: one
# batch = one D step + a G turn of g_steps G steps, and no validation loop), with what to use instead.
_NO_VAL_LOOP = (
    "the GAN stage has no validation loop. Fix: choose the epoch on validation with model.selection.every_n_epochs=N "
    "(docs/gan_training.md)"
)
_NOT_EARLY = (
    "nothing stops GAN training early but trainer.max_steps / trainer.max_time, so a minimum only overrides them. "
    "Fix: set trainer.max_epochs or trainer.max_steps (GAN iterations)"
)
REFUSED_TRAINER_KEYS = {
    "gradient_clip_val": "Lightning does not clip gradients under manual optimization (the GAN steps its optimizers "
    "itself) and refuses the run after loading the data. Fix: stabilise D with model.gp_weight=10 model.d_norm=layer "
    "(gradient penalty) or model.spectral_norm=true model.d_norm=none (docs/gan_training.md)",
    "gradient_clip_algorithm": "Lightning does not clip gradients under manual optimization. Fix: model.gp_weight or "
    "model.spectral_norm (docs/gan_training.md)",
    "accumulate_grad_batches": "Lightning refuses gradient accumulation under manual optimization. Fix: raise "
    "data.batch_size (the global batch)",
    "min_steps": _NOT_EARLY,
    "min_epochs": _NOT_EARLY,
    "val_check_interval": _NO_VAL_LOOP,
    "check_val_every_n_epoch": _NO_VAL_LOOP,
    "limit_val_batches": _NO_VAL_LOOP,
    "num_sanity_val_steps": _NO_VAL_LOOP,
}


# ------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Rule:
    """The allowed values of one field: ``ok(value)`` and the words that say what is allowed."""

    ok: Callable[[Any], bool]
    allowed: str


def rule(ok: Callable[[Any], bool], allowed: str, default: Any = MISSING) -> Any:
    """A schema field whose values must pass ``ok``; ``allowed`` completes the message
    "<key>=<value> is not allowed: <allowed>.". The value comes from the yaml file (``default`` only
    for a Lightning keyword that the yaml files leave at Lightning's default)."""
    return field(default=default, metadata={"rule": Rule(ok, allowed)})


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def whole(low: int, nullable: bool = False, default: Any = MISSING) -> Any:
    return rule(
        lambda v: (nullable and v is None) or (is_whole(v) and v >= low),
        f"use {'null or ' if nullable else ''}a whole number >= {low}",
        default,
    )


def fraction(allowed: str = "use a fraction strictly between 0 and 1") -> Any:
    return rule(lambda v: is_number(v) and 0.0 < v < 1.0, allowed)


def non_negative() -> Any:
    return rule(lambda v: is_number(v) and v >= 0, "use a number >= 0")


def learning_rate() -> Any:
    return rule(
        lambda v: is_number(v) and 0 < v <= MAX_LR,
        f"use a positive learning rate <= {MAX_LR:g} (the recipes use 1e-4 to 1e-3; larger steps diverge)",
    )


def one_of(choices: tuple, allowed: str | None = None) -> Any:
    return rule(lambda v: v in choices, allowed or f"use one of {', '.join(map(str, choices))}")


def _subset(value: object) -> bool:
    return value is None or (is_number(value) and value > 0 and (value <= 1 or float(value).is_integer()))


def _normal_class(value: Any) -> bool:
    try:
        class_index(value)
    except (ValueError, TypeError):
        return False
    return True


def _precisions() -> tuple:
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import (
        _PRECISION_INPUT_INT,
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

    return get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS) + get_args(_PRECISION_INPUT_INT)


def _devices(value: Any) -> bool:
    return (
        value == "auto"
        or (is_whole(value) and (value >= 1 or value == -1))
        or (
            isinstance(value, str)
            and value.strip() not in ("", "0")
            and all(p.strip().lstrip("-").isdigit() for p in value.split(","))
        )
        or (OmegaConf.is_list(value) and len(value) > 0 and all(is_whole(x) and x >= 0 for x in value))
    )


def _limit_batches(value: object) -> bool:
    return value is None or (is_whole(value) and value >= 1) or (is_number(value) and not is_whole(value) and 0 < value <= 1)


UNTRAINED = "the GAN would not be trained and an untrained GAN would be scored"


# ------------------------------------------------------------------------------ the schemas
@dataclass
class GanSource:
    generator: str | None = MISSING
    discriminator: str | None = MISSING
    checkpoint: str | None = MISSING
    cache: bool = MISSING


@dataclass
class Threshold:
    rule: str = one_of(THRESHOLD_RULES)
    target_fpr: float = fraction("use a fraction strictly between 0 and 1, e.g. 0.05")


@dataclass
class Config:
    """``conf/config.yaml``: the top-level keys; each config group is checked by its own schema."""

    seed: int = MISSING
    ckpt_path: str | None = MISSING
    plan: bool = MISSING  # anogan.engine.estimate.show_plan
    overwrite: bool = MISSING
    gan: GanSource = MISSING
    optimized_metric: str = MISSING  # checked by anogan.reporting.sweep.parse_optimized_metric
    allow_test_objective: bool = MISSING
    threshold: Threshold = MISSING
    threads: Any = MISSING  # null | auto | N: checked by anogan.reporting.sweep.job_threads
    data: Any = MISSING
    model: Any = MISSING
    mapping: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    callbacks: Any = MISSING
    paths: Any = MISSING


@dataclass
class Paths:
    data_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING
    gan_cache_dir: str = MISSING


@dataclass
class Trainer:
    """``conf/trainer``: the Lightning Trainer keywords the project supports (docs/reliability.md,
    "Training length"). ``max_steps`` counts GAN iterations (batches), not Lightning's optimizer steps."""

    _target_: str = MISSING
    default_root_dir: str = MISSING
    accelerator: str = one_of(ACCELERATORS, f"use one of {', '.join(ACCELERATORS)} (or trainer=cpu / trainer=gpu)")
    devices: Any = rule(_devices, "use a count >= 1, -1 (all), auto, or a non-empty list of device indices")
    num_nodes: int = whole(1, default=1)
    strategy: Any = "auto"
    sync_batchnorm: bool = False
    precision: Any = rule(  # auto: anogan.engine.hardware.resolve_precision
        lambda v: v == "auto" or v in _precisions(),
        "use auto or a value Lightning accepts: " + ", ".join(map(str, _precisions())),
    )
    max_epochs: int = rule(
        lambda v: v == -1 or (is_whole(v) and v >= 1),
        f"use a whole number >= 1 ({UNTRAINED}; a trained GAN can be given with gan.checkpoint=...)",
    )
    max_steps: int = rule(
        lambda v: v == -1 or (is_whole(v) and v >= 1), f"use -1 (no limit) or a whole number >= 1 ({UNTRAINED})"
    )
    max_time: str | None = rule(
        lambda v: v is None or bool(re.fullmatch(r"\d+:\d{2}:\d{2}:\d{2}", str(v))),
        "use null or DD:HH:MM:SS, e.g. 00:02:30:00 for two and a half hours",
    )
    limit_train_batches: Any = rule(_limit_batches, f"use null, a whole count >= 1 or a fraction in (0, 1] ({UNTRAINED})")
    log_every_n_steps: int = whole(1)
    deterministic: Any = MISSING
    enable_model_summary: bool = MISSING
    enable_progress_bar: bool = MISSING


@dataclass
class Divergence:
    max_abs_loss: float = MISSING
    saturation: float = MISSING
    saturated_epochs: int | None = MISSING


@dataclass
class Health:
    """``model.health``: thresholds of the failed-GAN warning (``anogan.models.health``)."""

    collapse_ratio: float = MISSING
    d_real_above: float = MISSING
    d_fake_below: float = MISSING
    epochs: int = MISSING


@dataclass
class Selection:
    every_n_epochs: int | None = MISSING
    images: int = MISSING
    steps: int = MISSING
    lr: float = MISSING
    seed: int = MISSING


@dataclass
class Model:
    """``conf/model/dcgan.yaml``. The training options' ranges (objective ... selection) are checked by
    ``anogan.models.gan.check_gan_options`` (the GAN's constructor runs it too)."""

    _target_: str = MISSING
    latent_dim: int = whole(1)
    channels: int = MISSING  # ${data.channels}
    image_size: int = MISSING  # ${data.image_size}
    g_width: int = whole(1)
    d_width: int = whole(1)
    lr: float = learning_rate()
    betas: list[float] = MISSING
    weight_decay: float = non_negative()
    g_steps: int = whole(1)
    scheduler: str | None = MISSING
    scheduler_t0: int = whole(1)
    scheduler_t_mult: int = whole(1)
    n_samples: int = whole(1)
    sample_seed: int = MISSING
    objective: str = MISSING
    gp_weight: float = MISSING
    critic_steps: int = MISSING
    d_norm: str = MISSING
    spectral_norm: bool = MISSING
    diffaugment: str | None = MISSING
    ema_decay: float | None = MISSING
    self_supervised: str | None = MISSING
    ss_weight_d: float = MISSING
    ss_weight_g: float = MISSING
    nda: Any = rule(
        lambda v: v is None or (isinstance(v, str) and set(map(str.strip, v.split(","))) <= set(NDA_TRANSFORMS)),
        f"use null (off) or a comma-separated subset of {', '.join(NDA_TRANSFORMS)}, quoted: \"model.nda='jigsaw,cutout'\"",
    )
    nda_weight: float = rule(
        lambda v: is_number(v) and 0.0 < v < 1.0, "use the negatives' share of D's fake distribution, in (0, 1), e.g. 0.5"
    )
    divergence: Divergence = MISSING
    health: Health = MISSING
    selection: Selection = MISSING


@dataclass
class DataCommon:
    """Keys of every data module."""

    _target_: str = MISSING
    root: str = MISSING
    image_size: int = one_of(IMAGE_SIZES, f"the networks support {', '.join(map(str, IMAGE_SIZES))}")
    channels: int = one_of((1, 3), "use 1 (grey) or 3 (colour)")
    val_fraction: float = fraction()
    val_subset: Any = rule(_subset, "use null (all), a whole count >= 1 or a fraction in (0, 1]")
    test_subset: Any = rule(_subset, "use null (all), a whole count >= 1 or a fraction in (0, 1]")
    batch_size: int = whole(1)
    num_workers: int = whole(0)
    split_seed: int = MISSING
    duplicates: str = one_of(POLICIES, f"use one of {', '.join(POLICIES)} (a picture in two splits: anogan.data.duplicates)")
    near_duplicates: int | None = rule(
        lambda v: v is None or (is_whole(v) and 0 <= v < HASH_BITS // 2),
        f"use null (exact copies only) or a number of differing hash bits from 0 to {HASH_BITS // 2 - 1}, e.g. 2",
    )


def _target_fpr(value: object) -> bool:
    return value is None or (is_number(value) and 0.0 < value < 1.0)


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
    resize: str = one_of(RESIZE_POLICIES)
    alpha: str = one_of(ALPHA_RULES, f"use one of {', '.join(ALPHA_RULES)} (transparent pixels: anogan.data.images)")
    max_batch_fraction: float | None = rule(
        lambda v: v is None or (is_number(v) and 0.0 < v <= 1.0), "use a fraction in (0, 1], or null for no cap"
    )
    min_steps_per_epoch: int | None = whole(0, nullable=True)
    target_fpr: float | None = rule(_target_fpr, "use ${threshold.target_fpr} (the default), a fraction in (0, 1), or null")


@dataclass
class MVTecData(DataCommon):
    category: str = MISSING
    synthetic_val_anomalies: str | None = one_of((None, *METHODS), f"use null, {' or '.join(METHODS)}")
    synthetic_val_fraction: float = fraction()
    alpha: str = one_of(ALPHA_RULES, f"use one of {', '.join(ALPHA_RULES)} (transparent pixels: anogan.data.images)")
    target_fpr: float | None = rule(_target_fpr, "use ${threshold.target_fpr} (the default), a fraction in (0, 1), or null")


@dataclass
class ScorerCommon:
    """Keys of every scorer (``anogan.scorers.base.Scorer``)."""

    _target_: str = MISSING
    batch_size: int = whole(1)
    correction: str = one_of(CORRECTIONS)
    map_sigma: float = non_negative()
    map_features: bool = MISSING
    maps: bool = MISSING


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
    early_stop: Any = rule(
        lambda v: (
            v is None
            or (
                set(v) == {"patience", "rel_tol"}
                and is_whole(v["patience"])
                and v["patience"] >= 1
                and is_number(v["rel_tol"])
                and v["rel_tol"] >= 0
            )
        ),
        "use null, or {patience: N, rel_tol: R} with a whole N >= 1 and R >= 0",
    )


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
        lambda v: v is None or v in TRANSFORM_SETS, f"use ${{model.self_supervised}}: null or one of {', '.join(TRANSFORM_SETS)}"
    )


def _combine() -> Any:
    return rule(
        lambda v: (
            v is None
            or ((OmegaConf.is_list(v) or isinstance(v, (list, tuple))) and len(v) > 0 and all(isinstance(c, str) for c in v))
        ),
        "use null or a list of score components, e.g. [transformations, dfeatures]",
        None,
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
    layer: int = rule(lambda v: is_whole(v) and v != 0, "use a block of D's feature stack: 1, 2, ... or -1 (the last)")
    pooling: str = one_of(POOLINGS)
    bank_size: int = whole(1)
    patch_layer: int = rule(lambda v: is_whole(v) and v != 0, "use a block of D's feature stack: 1, 2, ... or -1 (the last)")
    patch_neighbourhood: int = rule(lambda v: is_whole(v) and v >= 1 and v % 2 == 1, "use an odd whole number >= 1")
    patch_bank_size: int = whole(1)
    coreset: str = one_of(CORESETS)
    coreset_projection: Any = whole(1, nullable=True)
    transforms: Any = _transforms()
    score: str = one_of(("dfeatures", "dpatches", "transformations", "dlogit"))
    combine: Any = _combine()


@dataclass
class DLogitScorer(ScorerCommon):
    """``mapping=dlogit`` (``anogan.scorers.dlogit``)."""

    transforms: Any = _transforms()
    combine: Any = _combine()


# (group, option) -> schema; the yaml file of each option names it in its defaults list.
SCHEMAS = {
    ("trainer", "trainer"): Trainer,
    ("model", "dcgan"): Model,
    ("paths", "paths"): Paths,
    ("data", "cifar10"): Cifar10Data,
    ("data", "folder"): FolderData,
    ("data", "mvtec"): MVTecData,
    ("mapping", "latent"): LatentSearch,
    ("mapping", "encoder"): EncoderScorer,
    ("mapping", "encoder_search"): EncoderSearch,
    ("mapping", "transformations"): TransformationScorer,
    ("mapping", "dfeatures"): DFeatureScorer,
    ("mapping", "dlogit"): DLogitScorer,
}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (``config_schema``, ``schema/<group>/<name>``)."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for (group, name), node in SCHEMAS.items():
        store.store(group=f"schema/{group}", name=name, node=node)


register()


# ------------------------------------------------------------------------------- validation
def _unknown_key(key: str, known: list[str]) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    if key.startswith("trainer.") and name in REFUSED_TRAINER_KEYS:
        return ConfigError(f"{key} is refused: {REFUSED_TRAINER_KEYS[name]}.")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?)" if close else ""
    return ConfigError(
        f"{key} is not a setting: nothing reads it{hint}. Fix: check the spelling against conf/ "
        "(a +key=value override adds a new key; key=value changes an existing one)."
    )


def _accepts(target: str, key: str) -> bool:
    """Whether the class ``target`` takes ``key`` as a keyword argument (True when it cannot be imported:
    instantiate then reports it)."""
    try:
        params = inspect.signature(get_class(target)).parameters  # the constructor's, without self
    except Exception:
        return True
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _walk(node: DictConfig, path: str) -> None:
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        fields = {f.name: f for f in dataclasses.fields(schema)}
        for key in map(str, node):
            if key not in fields:
                raise _unknown_key(f"{path}{key}", list(fields))
        for name, spec in fields.items():
            check = spec.metadata.get("rule")
            if check is not None:
                value = node[name]
                if not check.ok(value):
                    raise ConfigError(f"{path}{name}={value!r} is not allowed: {check.allowed}.")
    elif "_target_" in node:
        target = node["_target_"]
        for key in map(str, node):
            if key != "_target_" and not _accepts(target, key):
                raise _unknown_key(f"{path}{key}", [str(k) for k in node if k != key])
    for key in map(str, node):
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _walk(child, f"{path}{key}.")


def validate(cfg: DictConfig) -> None:
    """Check the composed configuration against the schemas: every key is a field of its node's schema
    (or a keyword of its ``_target_``), every field with a rule holds an allowed value, and the GAN's
    training options fit together (``check_gan_options``).

    Raises:
        ConfigError: the first unknown key or bad value, in one line naming the key and the fix.
    """
    tree = cfg.copy()
    with_hydra = "hydra" in tree
    if with_hydra:
        from omegaconf import open_dict

        with open_dict(tree):
            del tree["hydra"]
    _walk(tree, "")
    try:
        check_gan_options(cfg.model)
    except ConfigError:
        raise
    except UserError as err:
        raise ConfigError(str(err)) from None


# ------------------------------------------------------------------ Hydra's composition errors
def _allowed(schema: object, key: str) -> str:
    """What a field of ``schema`` allows, from its rule or its type."""
    spec = {f.name: f for f in dataclasses.fields(schema)}.get(key) if dataclasses.is_dataclass(schema) else None
    if spec is None:
        return "see conf/"
    if "rule" in spec.metadata:
        return spec.metadata["rule"].allowed
    kind = str(spec.type)
    nullable = "Optional" in kind
    words = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a text"}
    base = next((w for t, w in words.items() if re.search(rf"\b{t}\b", kind)), "a value of type " + kind)
    return f"use {'null or ' if nullable else ''}{base}"


def explain_composition_error(err: Exception, overrides: list[str]) -> str:
    """One line for an error Hydra raises while composing the config (``overrides``: the command line's).

    A value of the wrong type names the key and what is allowed (the schema's words); an unknown key
    names the closest setting; an override Hydra cannot parse names it, with the quoting a value
    containing ``=`` (a path) needs; anything else is Hydra's own message on one line.
    """
    from hydra.errors import OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = err.__cause__
    if isinstance(cause, ValidationError) and cause.full_key:
        return f"{cause.full_key}={cause.value!r} is not allowed: {_allowed(cause.object_type, str(cause.key))}."
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        schema = cause.object_type
        known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
        return str(_unknown_key(str(cause.full_key), known))
    if isinstance(err, OverrideParseException):
        reason = str(err).splitlines()[0]
        bad = [o for o in overrides if "=" in o.partition("=")[2] and not re.search(r"=[\"']", o)]
        if bad:
            key, _, value = bad[0].partition("=")
            return (
                f"cannot parse the override {bad[0]} ({reason}): a value containing '=' (e.g. a path) must be quoted. "
                f"Fix: '{key}=\"{value}\"' (the outer single quotes keep the inner ones from your shell)."
            )
        return f"cannot parse an override ({reason}). Fix: see https://hydra.cc/docs/advanced/override_grammar/basic/."
    added = re.search(r"An item is already at '([^']+)'", str(err))
    if added:
        key = added.group(1)
        return f"+{key}=... adds a key, but {key} is already a setting. Fix: drop the '+' ({key}=...)."
    lines = [
        line.strip()
        for line in str(err).splitlines()
        if line.strip() and not line.strip().startswith(("Config search path", "provider="))
    ]
    return "; ".join(lines) or type(err).__name__
