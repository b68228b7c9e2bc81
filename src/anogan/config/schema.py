"""The schema of ``conf/``: one dataclass per config group option, registered in Hydra's ConfigStore.

Hydra's structured configs are the one description of every setting, for a reason: Hydra composes
``conf/`` onto them, so a misspelt key (``mapping.alpah=0.5``) or a value of the wrong type
(``mapping.alpha=abc``) is refused while composing, before any of our code runs, and the same
dataclasses then check each value's range (``anogan.config.fields``), the settings a scorer file
stores (``anogan.engine.artifact``) and, through ``anogan.config.arguments``, the command lines.
A second model library (pydantic) would describe the same keys again beside Hydra's own.

Each option's yaml file names its schema first in its defaults list (``- /schema/model@_here_: dcgan``),
so Hydra composes onto a typed, closed node. A ``+key=value`` override is the one way past that (Hydra
adds it whatever the schema says), so :func:`validate` refuses every key that is not a field of its
node's dataclass (``+trainer.gradient_clip_val=1``, ``+mapping.alpah=0.5``). The yaml files hold the
values, every default included (no field has a default here: a key a yaml file lacks is an error, never
a silent Python value); the dataclasses hold the types and, in a field's ``rule``, the one check of its
range. Options without a schema (a new ``conf/mapping/*.yaml``, the ``logger`` and ``callbacks``
entries: third-party classes) are checked against their ``_target_``'s constructor instead: a key it
does not take is refused.

The schemas: :class:`Config`, :class:`Trainer`, :class:`Paths` here; ``conf/model`` in
``anogan.config.gan_options``; ``conf/data`` in ``anogan.config.data_schema``; ``conf/mapping`` in
``anogan.config.scorer_schema``. Adding a key (docs/reliability.md, "Configuration checks"):

* to an existing group option: its value and comment in ``conf/<group>/<option>.yaml`` and a field in
  its dataclass (``name: type = MISSING``, or ``= rule(ok, "what is allowed")`` for a range);
  a new ``conf/mapping/<name>.yaml`` either gets a class (subclass ``ScorerCommon``, register it in
  ``MAPPING_SCHEMAS`` and ``SCORER_SCHEMAS``) or none (its ``_target_``'s keywords rule);
* a top-level key (e.g. ``plan``): in ``conf/config.yaml`` and :class:`Config`;
* a ``trainer`` keyword of Lightning: :class:`Trainer` and ``conf/trainer/cpu.yaml``, unless it cannot
  work under the GAN's manual optimisation: then a line in :data:`REFUSED_TRAINER_KEYS` says what to use.

Cross-key checks (files that must exist, the GPU, DDP in a sweep) live in ``anogan.config.checks``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from anogan.config.choices import ACCELERATORS, THRESHOLD_RULES
from anogan.config.data_schema import Cifar10Data, FolderData, MVTecData
from anogan.config.fields import (
    Problem,
    describe,
    find_problem,
    fraction,
    is_number,
    is_whole,
    one_of,
    rule,
    settings,
    type_name,
    whole,
)
from anogan.config.gan_options import Model, check_gan_options
from anogan.config.scorer_schema import MAPPING_SCHEMAS
from anogan.utils.errors import ConfigError, UserError

__all__ = [
    "SCHEMAS",
    "Config",
    "Trainer",
    "explain_composition_error",
    "register",
    "validate",
]

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
UNTRAINED = "the GAN would not be trained and an untrained GAN would be scored"


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
    num_nodes: int = whole(1)
    strategy: Any = MISSING
    sync_batchnorm: bool = MISSING
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


# (group, option) -> schema; the yaml file of each option names it in its defaults list.
SCHEMAS = {
    ("trainer", "trainer"): Trainer,
    ("model", "dcgan"): Model,
    ("paths", "paths"): Paths,
    ("data", "cifar10"): Cifar10Data,
    ("data", "folder"): FolderData,
    ("data", "mvtec"): MVTecData,
    **{("mapping", name): schema for name, schema in MAPPING_SCHEMAS.items()},
}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (``config_schema``, ``schema/<group>/<name>``)."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for (group, name), node in SCHEMAS.items():
        store.store(group=f"schema/{group}", name=name, node=node)


register()


# ------------------------------------------------------------------------------- validation
def config_error(problem: Problem) -> ConfigError:
    """The one-line ``ConfigError`` of a config key's problem (a refused Lightning keyword says what
    to use instead)."""
    name = problem.key.rsplit(".", 1)[-1]
    if problem.kind == "unknown" and problem.key.startswith("trainer.") and name in REFUSED_TRAINER_KEYS:
        return ConfigError(f"{problem.key} is refused: {REFUSED_TRAINER_KEYS[name]}.")
    return ConfigError(describe(problem))


def _accepts(target: str, key: str) -> bool:
    """Whether the class ``target`` takes ``key`` as a keyword argument (True when it cannot be imported:
    instantiate then reports it)."""
    try:
        params = inspect.signature(get_class(target)).parameters  # the constructor's, without self
    except Exception:
        return True
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _walk(node: DictConfig, path: str) -> None:
    """Check ``node`` against its schema (its nested schemas with it), or its keys against its
    ``_target_``'s constructor; then the nodes below it that no schema covers."""
    schema = OmegaConf.get_type(node)
    covered: set[str] = set()
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        problem = find_problem(node, schema, path)
        if problem is not None:
            raise config_error(problem)
        covered = {k for k, s in settings(schema).items() if dataclasses.is_dataclass(s.kind)}
    elif "_target_" in node:
        target = node["_target_"]
        for key in map(str, node):
            if key != "_target_" and not _accepts(target, key):
                raise config_error(Problem(f"{path}{key}", "unknown", known=tuple(str(k) for k in node if k != key)))
    for key in map(str, node):
        child = node._get_node(key)
        if key not in covered and isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _walk(child, f"{path}{key}.")


def validate(cfg: DictConfig) -> None:
    """Check the composed configuration against the schemas: every key is a field of its node's schema
    (or a keyword of its ``_target_``) and has a value of its type that its rule allows, and the GAN's
    training options fit together (``check_gan_options``).

    Raises:
        ConfigError: the first unknown key, missing or bad value, in one line naming the key and the fix.
    """
    tree = cfg.copy()
    if "hydra" in tree:
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
    declared = settings(schema) if isinstance(schema, type) and dataclasses.is_dataclass(schema) else {}
    if key not in declared:
        return "see conf/"
    check = declared[key]
    return check.rule.allowed if check.rule is not None else f"use {type_name(check.kind)}"


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
        known = tuple(settings(schema)) if isinstance(schema, type) and dataclasses.is_dataclass(schema) else ()
        return str(config_error(Problem(str(cause.full_key), "unknown", known=known)))
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
