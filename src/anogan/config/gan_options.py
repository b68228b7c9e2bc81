"""The GAN's training options (``model.*``): allowed values and the cross-key check, declared once.
``GAN.__init__`` and the config check both call ``check_gan_options``."""

from __future__ import annotations

from collections.abc import Mapping

from anogan.utils.errors import UserError

OBJECTIVES = ("bce", "wgan_gp")
SELECTION_KEYS = ("every_n_epochs", "images", "steps", "lr", "seed")
DIVERGENCE_KEYS = ("max_abs_loss", "saturation", "saturated_epochs")
DEFAULT_DIVERGENCE = {"max_abs_loss": 1.0e4, "saturation": 0.01, "saturated_epochs": 10}
D_NORMS = ("batch", "layer", "instance", "none")
AUGMENT_POLICIES = ("color", "translation", "cutout")  # model.diffaugment: a comma-separated subset
TRANSFORM_SET_NAMES = ("rotations", "geotrans")  # model.self_supervised (anogan.models.transforms.TRANSFORM_SETS)
HEALTH_KEYS = ("collapse_ratio", "d_real_above", "d_fake_below", "epochs")
DEFAULT_HEALTH = {"collapse_ratio": 0.1, "d_real_above": 0.9, "d_fake_below": 0.1, "epochs": 3}


def _whole(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``None``/``""`` -> ``()``.

    Raises ``UserError`` naming ``model.diffaugment`` for an unknown or repeated transform.
    """
    if not policy:
        return ()
    names = tuple(p.strip() for p in str(policy).split(",") if p.strip())
    bad = [n for n in names if n not in AUGMENT_POLICIES]
    if bad or len(set(names)) != len(names):
        raise UserError(
            f"model.diffaugment={policy!r} is not allowed: use null or a comma-separated subset of {','.join(AUGMENT_POLICIES)} "
            "(each at most once), e.g. color,translation,cutout."
        )
    return names


def check_discriminator_options(norm: str, spectral_norm: bool) -> None:
    """Raise ``UserError`` naming the config key for an unknown norm or SN with BatchNorm."""
    if norm not in D_NORMS:
        raise UserError(f"model.d_norm={norm!r} is not allowed: use one of {', '.join(D_NORMS)}.")
    if spectral_norm and norm == "batch":
        raise UserError(
            "model.spectral_norm=true needs a discriminator without BatchNorm (Miyato et al. 2018): "
            "set model.d_norm=none (or layer / instance)."
        )


def check_health_options(health: Mapping | None) -> None:
    """Raise ``UserError`` naming the ``model.health.*`` key for a value out of range."""
    if health is None:
        return
    if set(health) != set(HEALTH_KEYS):
        raise UserError(f"model.health must have exactly the keys {', '.join(HEALTH_KEYS)}; it has {', '.join(health)}.")
    for key in ("collapse_ratio", "d_real_above", "d_fake_below"):
        value = health[key]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0):
            raise UserError(
                f"model.health.{key}={value!r} is not allowed: use a number in [0, 1] (default {DEFAULT_HEALTH[key]})."
            )
    epochs = health["epochs"]
    if not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1):
        raise UserError(f"model.health.epochs={epochs!r} is not allowed: use a whole number >= 1 (default 3).")


def check_transform_set(name: str | None) -> None:
    """Raise ``UserError`` naming ``model.self_supervised`` when ``name`` is not null or a known set."""
    if name is not None and name not in TRANSFORM_SET_NAMES:
        raise UserError(
            f"model.self_supervised={name!r} is not allowed: use null (off) or one of {', '.join(TRANSFORM_SET_NAMES)}."
        )


def check_gan_options(model: Mapping) -> None:
    """Check the training options of ``model.*`` (a config node or dict); raise ``UserError`` with a
    one-line message naming the key and the fix. Called by ``GAN.__init__`` and by the config check."""
    objective = model.get("objective", "bce")
    if objective not in OBJECTIVES:
        raise UserError(f"model.objective={objective!r} is not allowed: use one of {', '.join(OBJECTIVES)}.")
    gp_weight = model.get("gp_weight", 0.0)
    if not (isinstance(gp_weight, (int, float)) and gp_weight >= 0):
        raise UserError(f"model.gp_weight={gp_weight!r} is not allowed: use a number >= 0 (Gulrajani et al. use 10).")
    if objective == "wgan_gp" and gp_weight <= 0:
        raise UserError("model.objective=wgan_gp needs model.gp_weight > 0 (the critic is unbounded without it): use 10.")
    d_norm = model.get("d_norm", "batch")
    if gp_weight > 0 and d_norm == "batch":
        raise UserError(
            "model.gp_weight > 0 needs a per-image critic, and BatchNorm mixes the images of a batch: "
            "set model.d_norm=layer (Gulrajani et al.), instance or none."
        )
    check_discriminator_options(d_norm, bool(model.get("spectral_norm", False)))
    for key in ("critic_steps", "g_steps"):
        if not _whole(model.get(key, 1), 1):
            raise UserError(f"model.{key}={model.get(key)!r} is not allowed: use a whole number >= 1.")
    ema = model.get("ema_decay")
    if ema is not None and not (isinstance(ema, float) and 0.0 < ema < 1.0):
        raise UserError(f"model.ema_decay={ema!r} is not allowed: use null (off) or a decay in (0, 1), e.g. 0.999.")
    parse_policy(model.get("diffaugment"))
    check_transform_set(model.get("self_supervised"))
    check_health_options(model.get("health", DEFAULT_HEALTH))
    parse_nda(model.get("nda"))
    nda_weight = model.get("nda_weight", 0.5)
    if not (isinstance(nda_weight, (int, float)) and not isinstance(nda_weight, bool) and 0.0 < nda_weight < 1.0):
        raise UserError(
            f"model.nda_weight={nda_weight!r} is not allowed: use the negatives' share of D's fake distribution, in (0, 1), e.g. 0.5."
        )
    for key in ("ss_weight_d", "ss_weight_g"):
        value = model.get(key, 0.0)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise UserError(f"model.{key}={value!r} is not allowed: use a number >= 0 (Chen et al. 2019: d 1.0, g 0.2).")
    div = model.get("divergence") or DEFAULT_DIVERGENCE
    if set(div) != set(DIVERGENCE_KEYS):
        raise UserError(f"model.divergence must have exactly the keys {', '.join(DIVERGENCE_KEYS)}; it has {', '.join(div)}.")
    if not div["max_abs_loss"] > 0:
        raise UserError(
            f"model.divergence.max_abs_loss={div['max_abs_loss']!r} is not allowed: use a positive number, e.g. 1.0e4."
        )
    if not 0.0 < div["saturation"] < 0.5:
        raise UserError(
            f"model.divergence.saturation={div['saturation']!r} is not allowed: use a probability in (0, 0.5), e.g. 0.01."
        )
    if div["saturated_epochs"] is not None and not _whole(div["saturated_epochs"], 1):
        raise UserError(
            f"model.divergence.saturated_epochs={div['saturated_epochs']!r} is not allowed: use null (no check) or a whole number >= 1."
        )
    sel = model.get("selection")
    if sel is None:
        return
    if set(sel) != set(SELECTION_KEYS):
        raise UserError(f"model.selection must have exactly the keys {', '.join(SELECTION_KEYS)}; it has {', '.join(sel)}.")
    if sel["every_n_epochs"] is not None and not _whole(sel["every_n_epochs"], 1):
        raise UserError(
            f"model.selection.every_n_epochs={sel['every_n_epochs']!r} is not allowed: use null (off) or a whole number >= 1."
        )
    for key in ("images", "steps"):
        if not _whole(sel[key], 1):
            raise UserError(f"model.selection.{key}={sel[key]!r} is not allowed: use a whole number >= 1.")
    if not sel["lr"] > 0:
        raise UserError(f"model.selection.lr={sel['lr']!r} is not allowed: use a positive learning rate, e.g. 0.01.")


NDA_TRANSFORMS = ("jigsaw", "cutout", "rotation")  # model.nda: negative data augmentation (anogan.models.nda)


def parse_nda(value: str | None) -> tuple[str, ...]:
    """``model.nda`` (null or a comma-separated subset of ``NDA_TRANSFORMS``) as a tuple of names, in
    the given order without repeats; ``UserError`` naming the key for anything else."""
    if value is None or value == "":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in str(value).split(",")))
    bad = [n for n in names if n not in NDA_TRANSFORMS]
    if bad:
        raise UserError(
            f"model.nda={value!r} is not allowed: use null (off) or a comma-separated subset of "
            f"{', '.join(NDA_TRANSFORMS)}, quoted on the command line: \"model.nda='jigsaw,cutout'\"."
        )
    return names
