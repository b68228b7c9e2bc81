"""Fail fast on a bad configuration: one message naming the key, the value and what is allowed,
before any data is loaded or any training starts."""

from __future__ import annotations

from pathlib import Path

import inspect

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from hydra.types import RunMode
from omegaconf import DictConfig

from anogan.data.cifar10 import CLASSES, IMAGE_SIZES, PROTOCOLS, class_index
from anogan.errors import UserError
from anogan.metrics import THRESHOLD_RULES
from anogan.scores import CORRECTIONS


class ConfigError(UserError):
    pass


def _fail(key: str, value, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}.")


def _number(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra job (tests, notebooks)
        return False


SCORER_ARGS_FROM_RUN = ("generator", "discriminator", "seed")  # given by train.py, not by conf/mapping


def check_scorer_keys(mp: DictConfig) -> None:
    """``conf/mapping`` names a scorer class by ``_target_`` and holds only the keys it reads."""
    target = mp.get("_target_")
    if not target or not str(target).startswith("anogan.scorers."):
        _fail("mapping._target_", target, "choose a scorer with mapping=latent, mapping=encoder or mapping=encoder_search")
    try:
        cls = get_class(target)
    except Exception:
        _fail("mapping._target_", target, "no such scorer class; choose mapping=latent, encoder or encoder_search")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", *SCORER_ARGS_FROM_RUN}
    foreign = sorted(set(mp.keys()) - accepted - {"_target_"})
    if foreign:
        raise ConfigError(
            f"mapping.{foreign[0]} is not read by {cls.__name__} (keys it reads: {', '.join(sorted(accepted))}); "
            f"it was set for another scorer. Fix: remove it (~mapping.{foreign[0]}) or pick the scorer that reads it."
        )


def check_config(cfg: DictConfig) -> None:
    d, mp = cfg.data, cfg.mapping
    cifar = "normal_class" in d  # data=cifar10; data=folder checks its folders when it loads them
    if cifar:
        try:
            class_index(d.normal_class)
        except ValueError:
            _fail("data.normal_class", d.normal_class, f"use 0-9 or one of {', '.join(CLASSES)}")
        if d.protocol not in PROTOCOLS:
            _fail("data.protocol", d.protocol, f"use one of {', '.join(PROTOCOLS)}")
    check_scorer_keys(mp)
    if mp.correction not in CORRECTIONS:
        _fail("mapping.correction", mp.correction, f"use one of {', '.join(CORRECTIONS)}")
    if d.image_size not in IMAGE_SIZES:
        _fail("data.image_size", d.image_size, f"the networks support {', '.join(map(str, IMAGE_SIZES))}")
    if d.channels not in (1, 3):
        _fail("data.channels", d.channels, "use 1 (grey) or 3 (colour)")
    if "alpha" in mp and not (isinstance(mp.alpha, (int, float)) and 0.0 <= mp.alpha <= 1.0):
        _fail("mapping.alpha", mp.alpha, "the weight of the discrimination term must lie in [0, 1]")
    if cfg.threshold.rule not in THRESHOLD_RULES:
        _fail("threshold.rule", cfg.threshold.rule, f"use one of {', '.join(THRESHOLD_RULES)}")
    if not (isinstance(cfg.threshold.target_fpr, float) and 0.0 < cfg.threshold.target_fpr < 1.0):
        _fail("threshold.target_fpr", cfg.threshold.target_fpr, "use a fraction strictly between 0 and 1, e.g. 0.05")
    for key, low in [("mapping.iterations", 0)] * ("iterations" in mp) + [
        ("mapping.batch_size", 1),
        ("model.latent_dim", 1),
        ("model.g_steps", 1),
        ("model.g_width", 1),
        ("model.d_width", 1),
        ("data.batch_size", 1),
    ]:
        value = _number(cfg, key)
        if not isinstance(value, int) or value < low:
            _fail(key, value, f"use a whole number >= {low}")
    for key in ("mapping.lr", "model.lr") if "lr" in mp else ("model.lr",):
        if not _number(cfg, key) > 0:
            _fail(key, _number(cfg, key), "use a positive learning rate")
    fractions = ("data.val_fraction", "data.train_fraction", "data.normal_test_fraction", "data.synthetic_val_fraction")
    for key in (k for k in fractions if k.split(".", 1)[1] in d):  # each data module has some of them
        if not 0.0 < _number(cfg, key) < 1.0:
            _fail(key, _number(cfg, key), "use a fraction strictly between 0 and 1")
    for key in ("data.val_subset", "data.test_subset"):
        value = _number(cfg, key)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            _fail(key, value, "use null (all), a count >= 1 or a fraction in (0, 1]")
    root = Path(d.root).expanduser()
    if cifar and not d.download and not (root / "cifar-10-batches-py").is_dir():
        _fail("data.root", d.root, f"no cifar-10-batches-py folder there ({root.resolve()}); point it at the folder "
              "that holds cifar-10-batches-py, or set data.download=true")
    if _is_multirun() and (cfg.trainer.get("devices", 1) not in (1, "1") or cfg.trainer.get("num_nodes", 1) != 1):
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} in a Hydra sweep (-m) is not supported: Lightning's DDP "
            "re-runs the script, so every process would replay the whole sweep. Fix: sweep with one device "
            "per job (trainer=cpu or trainer=gpu), or start the processes with a cluster launcher per job."
        )
    if bool(cfg.gan.generator) != bool(cfg.gan.discriminator):
        raise ConfigError("gan.generator and gan.discriminator go together: give both weight files, or neither.")
    for key in ("gan.generator", "gan.discriminator", "gan.checkpoint"):
        value = _number(cfg, key)
        if value and not Path(value).expanduser().exists():
            _fail(key, value, "the file or folder does not exist")
