"""Fail fast on a bad configuration: one message naming the key, the value and what is allowed,
before any data is loaded or any training starts."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from anogan.data.cifar10 import CLASSES, IMAGE_SIZES, PROTOCOLS, class_index
from anogan.errors import UserError
from anogan.models.gan import check_gan_options
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


def check_config(cfg: DictConfig) -> None:
    d, mp = cfg.data, cfg.mapping
    check_gan_options(cfg.model)  # the GAN's training options (objective, norms, EMA, selection, ...)
    cifar = "normal_class" in d  # data=cifar10; data=folder checks its folders when it loads them
    if cifar:
        try:
            class_index(d.normal_class)
        except ValueError:
            _fail("data.normal_class", d.normal_class, f"use 0-9 or one of {', '.join(CLASSES)}")
        if d.protocol not in PROTOCOLS:
            _fail("data.protocol", d.protocol, f"use one of {', '.join(PROTOCOLS)}")
    if mp.method not in ("latent", "encoder"):
        _fail("mapping.method", mp.method, "use mapping=latent (AnoGAN search) or mapping=encoder (f-AnoGAN)")
    if mp.correction not in CORRECTIONS:
        _fail("mapping.correction", mp.correction, f"use one of {', '.join(CORRECTIONS)}")
    if d.image_size not in IMAGE_SIZES:
        _fail("data.image_size", d.image_size, f"the networks support {', '.join(map(str, IMAGE_SIZES))}")
    if d.channels not in (1, 3):
        _fail("data.channels", d.channels, "use 1 (grey) or 3 (colour)")
    if not 0.0 <= mp.alpha <= 1.0:
        _fail("mapping.alpha", mp.alpha, "the weight of the discrimination term must lie in [0, 1]")
    for key, low in (
        ("mapping.iterations", 1),
        ("mapping.batch_size", 1),
        ("model.latent_dim", 1),
        ("model.g_steps", 1),
        ("model.g_width", 1),
        ("model.d_width", 1),
        ("data.batch_size", 1),
    ):
        value = _number(cfg, key)
        if not isinstance(value, int) or value < low:
            _fail(key, value, f"use a whole number >= {low}")
    for key in ("mapping.lr", "model.lr"):
        if not _number(cfg, key) > 0:
            _fail(key, _number(cfg, key), "use a positive learning rate")
    for key in ("data.val_fraction", "data.train_fraction" if cifar else "data.normal_test_fraction"):
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
