"""The schema of ``conf/model`` (the GAN: :class:`Model`) and the check of its training options.

Each field's type and allowed values are declared here once; :func:`check_gan_options` checks a
``model`` node or the GAN's hyperparameters against them (``GAN.__init__`` and the config check
both call it) and adds what involves several keys (WGAN-GP needs a gradient penalty, which needs a
per-image critic; spectral norm needs a discriminator without BatchNorm). The parsers of the
comma-separated options (``parse_policy``, ``parse_nda``) are the rules of those fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from anogan.config.choices import (
    AUGMENT_POLICIES,
    D_NORMS,
    NDA_TRANSFORMS,
    OBJECTIVES,
    SCHEDULERS,
    TRANSFORM_SET_NAMES,
)
from anogan.config.fields import (
    Rule,
    Setting,
    among,
    check,
    declare,
    describe,
    find_problem,
    fraction,
    is_number,
    learning_rate,
    non_negative,
    one_of,
    rule,
    settings,
    whole,
)
from anogan.utils.errors import UserError

__all__ = ["Model", "check_gan_options", "parse_nda", "parse_policy"]

# What GAN(divergence=None, health=None) uses: the GAN built outside a run (tests, notebooks). A run
# always passes conf/model/dcgan.yaml's values.
DEFAULT_DIVERGENCE = {"max_abs_loss": 1.0e4, "saturation": 0.01, "saturated_epochs": 10}
DEFAULT_HEALTH = {"collapse_ratio": 0.1, "d_real_above": 0.9, "d_fake_below": 0.1, "epochs": 3}


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``None``/``""`` -> ``()``.

    Raises ``UserError`` naming ``model.diffaugment`` for an unknown or repeated transform.
    """
    if not policy:
        return ()
    names = tuple(p.strip() for p in str(policy).split(",") if p.strip())
    bad = [n for n in names if n not in AUGMENT_POLICIES]
    if bad or len(set(names)) != len(names):
        raise UserError(f"model.diffaugment={policy!r} is not allowed: {_POLICY_WORDS}.")
    return names


def parse_nda(value: str | None) -> tuple[str, ...]:
    """``model.nda`` (null or a comma-separated subset of ``NDA_TRANSFORMS``) as a tuple of names, in
    the given order without repeats; ``UserError`` naming the key for anything else."""
    if value is None or value == "":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in str(value).split(",")))
    if any(n not in NDA_TRANSFORMS for n in names):
        raise UserError(f"model.nda={value!r} is not allowed: {_NDA_WORDS}.")
    return names


def check_discriminator_options(norm: str, spectral_norm: bool) -> None:
    """Raise ``UserError`` naming the config key for a norm the ``model.d_norm`` rule refuses
    (``model.d_norm=<value>: use one of ...``) or SN with BatchNorm."""
    check("model.d_norm", norm, D_NORM_RULE, UserError)
    _check_spectral_norm(norm, spectral_norm)


def _check_spectral_norm(norm: str, spectral_norm: bool) -> None:
    if spectral_norm and norm == "batch":
        raise UserError(
            "model.spectral_norm=true needs a discriminator without BatchNorm (Miyato et al. 2018): "
            "set model.d_norm=none (or layer / instance)."
        )


def check_transform_set(name: str | None) -> None:
    """Raise ``UserError`` with the ``model.self_supervised`` rule's one line
    (``model.self_supervised=<value>: use null (off) or one of ...``) unless ``name`` is null or a known set."""
    check("model.self_supervised", name, TRANSFORM_SET_RULE, UserError)


_POLICY_WORDS = (
    f"use null or a comma-separated subset of {','.join(AUGMENT_POLICIES)} (each at most once), e.g. color,translation,cutout"
)
_NDA_WORDS = (
    f"use null (off) or a comma-separated subset of {', '.join(NDA_TRANSFORMS)}, "
    "quoted on the command line: \"model.nda='jigsaw,cutout'\""
)
_TRANSFORM_WORDS = f"use null (off) or one of {', '.join(TRANSFORM_SET_NAMES)}"
D_NORM_RULE: Rule = among(D_NORMS)
TRANSFORM_SET_RULE: Rule = among((None, *TRANSFORM_SET_NAMES), _TRANSFORM_WORDS)


def _parses(parse: Callable[[Any], object]) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        try:
            parse(value)
        except (UserError, TypeError):
            return False
        return isinstance(value, str) or value is None

    return ok


def _in_range(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: is_number(v) and low <= v <= high


@dataclass
class Divergence:
    """``model.divergence``: when training stops with ``DivergenceError``."""

    max_abs_loss: float = rule(lambda v: is_number(v) and v > 0, "use a positive number, e.g. 1.0e4")
    saturation: float = rule(lambda v: is_number(v) and 0.0 < v < 0.5, "use a probability in (0, 0.5), e.g. 0.01")
    saturated_epochs: int | None = whole(1, nullable=True)


@dataclass
class Health:
    """``model.health``: thresholds of the failed-GAN warning (``anogan.models.health``)."""

    collapse_ratio: float = rule(_in_range(0.0, 1.0), "use a number in [0, 1], e.g. 0.1")
    d_real_above: float = rule(_in_range(0.0, 1.0), "use a number in [0, 1], e.g. 0.9")
    d_fake_below: float = rule(_in_range(0.0, 1.0), "use a number in [0, 1], e.g. 0.1")
    epochs: int = whole(1)


@dataclass
class Selection:
    """``model.selection``: checkpoint choice on validation (``anogan.engine.selection``)."""

    every_n_epochs: int | None = whole(1, nullable=True)
    images: int = whole(1)
    steps: int = whole(1)
    lr: float = rule(lambda v: is_number(v) and v > 0, "use a positive learning rate, e.g. 0.01")
    seed: int = MISSING


@dataclass
class Model:
    """``conf/model/dcgan.yaml``: the GAN's constructor keywords (``anogan.models.gan.GAN``)."""

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
    scheduler: str | None = one_of((None, *SCHEDULERS), f"use {', '.join(SCHEDULERS)} or null")
    scheduler_t0: int = whole(1)
    scheduler_t_mult: int = whole(1)
    n_samples: int = whole(1)
    sample_seed: int = MISSING
    objective: str = one_of(OBJECTIVES)
    gp_weight: float = non_negative("use a number >= 0 (Gulrajani et al. use 10)")
    critic_steps: int = whole(1)
    d_norm: str = declare(D_NORM_RULE)
    spectral_norm: bool = MISSING
    diffaugment: str | None = rule(_parses(parse_policy), _POLICY_WORDS)
    ema_decay: float | None = rule(
        lambda v: v is None or (isinstance(v, float) and 0.0 < v < 1.0), "use null (off) or a decay in (0, 1), e.g. 0.999"
    )
    self_supervised: str | None = declare(TRANSFORM_SET_RULE)
    ss_weight_d: float = non_negative("use a number >= 0 (Chen et al. 2019: d 1.0, g 0.2)")
    ss_weight_g: float = non_negative("use a number >= 0 (Chen et al. 2019: d 1.0, g 0.2)")
    nda: str | None = rule(_parses(parse_nda), _NDA_WORDS)
    nda_weight: float = fraction("use the negatives' share of D's fake distribution, in (0, 1), e.g. 0.5")
    divergence: Divergence = MISSING
    health: Health = MISSING
    selection: Selection = MISSING


def check_gan_options(model: Mapping) -> None:
    """Check ``model.*`` (a config node, or the GAN's hyperparameters) against :class:`Model` and the
    options that go together; raise ``UserError`` with one line naming the key and the fix. Keys the
    mapping lacks are not checked here (the config check requires every one), nor a ``divergence`` /
    ``health`` / ``selection`` of None (a GAN built outside a run: see ``GAN.__init__``)."""
    declared: dict[str, Setting] = settings(Model)
    present = {k: model[k] for k in model if k in declared and not (model[k] is None and k in _NESTED)}
    problem = find_problem(present, {k: declared[k] for k in present}, "model.")
    if problem is not None:
        raise UserError(describe(problem))
    objective, gp_weight, d_norm = model["objective"], model["gp_weight"], model["d_norm"]
    if objective == "wgan_gp" and gp_weight <= 0:
        raise UserError("model.objective=wgan_gp needs model.gp_weight > 0 (the critic is unbounded without it): use 10.")
    if gp_weight > 0 and d_norm == "batch":
        raise UserError(
            "model.gp_weight > 0 needs a per-image critic, and BatchNorm mixes the images of a batch: "
            "set model.d_norm=layer (Gulrajani et al.), instance or none."
        )
    _check_spectral_norm(d_norm, bool(model["spectral_norm"]))  # d_norm's own rule: find_problem above


_NESTED = ("divergence", "health", "selection")
