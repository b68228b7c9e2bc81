"""Fail fast on a bad configuration: one message naming the key, the value and what is allowed,
before any data is loaded or any training starts.

:func:`check_config` looks at the composed configuration alone (values, types, ranges, keys nothing
reads, the machine's GPU); :func:`check_run_environment` then looks at the files a run depends on
(writable output and cache folders, a loadable checkpoint to resume from). docs/reliability.md
lists every check.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from anogan import conf_dir
from anogan.data.cifar10 import CLASSES, IMAGE_SIZES, MISSING_DATA_FIX, PROTOCOLS, class_index
from anogan.errors import UserError
from anogan.io import describe_os_error
from anogan.metrics import THRESHOLD_RULES
from anogan.models.gan import check_gan_options
from anogan.scores import CORRECTIONS

CONF_DIR = Path(conf_dir())
# A learning rate above this is refused: Adam moves every weight by up to lr per step, and the
# networks' weights are O(0.01-1), so lr > 1 can only blow up (the recipes use 1e-4 to 1e-3).
MAX_LR = 1.0
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")


class ConfigError(UserError):
    """A configuration value, key, folder or checkpoint is unusable; the message names it and the fix."""


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}.")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _precisions() -> tuple:
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import (
        _PRECISION_INPUT_INT,
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

    return get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS) + get_args(_PRECISION_INPUT_INT)


def _number(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra job (tests, notebooks)
        return False


def check_scorer_keys(mp: DictConfig) -> None:
    """``conf/mapping`` names a scorer class of ``anogan.scorers`` by ``_target_`` (its other keys are
    checked against that class's constructor by ``check_known_keys``)."""
    target = mp.get("_target_")
    if not target or not str(target).startswith("anogan.scorers."):
        _fail("mapping._target_", target, "choose a scorer with mapping=latent, mapping=encoder or mapping=encoder_search")
    try:
        get_class(target)
    except Exception:
        _fail("mapping._target_", target, "no such scorer class; choose mapping=latent, encoder or encoder_search")


def check_config(cfg: DictConfig) -> None:
    """Check the composed configuration; nothing is read from disk but folder/file existence.

    Raises:
        ConfigError: the first bad value, named with its key, what is allowed and the fix.
    """
    check_known_keys(cfg)
    d, mp = cfg.data, cfg.mapping
    check_gan_options(cfg.model)  # the GAN's training options (objective, norms, EMA, selection, ...)
    cifar = "normal_class" in d  # data=cifar10; data=folder checks its folders when it loads them
    if cifar:
        try:
            class_index(d.normal_class)
        except (ValueError, TypeError):
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
    if "alpha" in mp and not (_is_number(mp.alpha) and 0.0 <= mp.alpha <= 1.0):
        _fail("mapping.alpha", mp.alpha, "the weight of the discrimination term must be a number in [0, 1]")
    if cfg.threshold.rule not in THRESHOLD_RULES:
        _fail("threshold.rule", cfg.threshold.rule, f"use one of {', '.join(THRESHOLD_RULES)}")
    if not (_is_number(cfg.threshold.target_fpr) and 0.0 < cfg.threshold.target_fpr < 1.0):
        _fail("threshold.target_fpr", cfg.threshold.target_fpr, "use a fraction strictly between 0 and 1, e.g. 0.05")
    whole = [
        ("mapping.batch_size", 1),
        ("model.latent_dim", 1),
        ("model.g_steps", 1),
        ("model.g_width", 1),
        ("model.d_width", 1),
        ("data.batch_size", 1),
        ("data.num_workers", 0),
    ]
    whole += [("mapping.iterations", 1)] * ("iterations" in mp) + [("mapping.epochs", 1)] * ("epochs" in mp)
    for key, low in whole:
        value = _number(cfg, key)
        if not _is_whole(value) or value < low:
            _fail(key, value, f"use a whole number >= {low}")
    for key in ("mapping.lr", "model.lr") if "lr" in mp else ("model.lr",):
        value = _number(cfg, key)
        if not (_is_number(value) and 0 < value <= MAX_LR):
            _fail(key, value, f"use a positive learning rate <= {MAX_LR:g} (the recipes use 1e-4 to 1e-3; larger steps diverge)")
    for key in ("model.weight_decay",) + (("mapping.kappa",) if "kappa" in mp else ()):
        if not (_is_number(_number(cfg, key)) and _number(cfg, key) >= 0):
            _fail(key, _number(cfg, key), "use a number >= 0")
    fractions = ("data.val_fraction", "data.train_fraction", "data.normal_test_fraction", "data.synthetic_val_fraction")
    for key in (k for k in fractions if k.split(".", 1)[1] in d):  # each data module has some of them
        value = _number(cfg, key)
        if not (_is_number(value) and 0.0 < value < 1.0):
            _fail(key, value, "use a fraction strictly between 0 and 1")
    if cifar and not (_is_number(d.val_anomaly_ratio) and d.val_anomaly_ratio > 0):
        _fail("data.val_anomaly_ratio", d.val_anomaly_ratio, "use a number > 0 (validation anomalies per validation normal)")
    for key in ("data.val_subset", "data.test_subset"):
        value = _number(cfg, key)
        if value is None:
            continue
        if not (_is_number(value) and value > 0 and (value <= 1 or float(value).is_integer())):
            _fail(key, value, "use null (all), a whole count >= 1 or a fraction in (0, 1]")
    root = Path(str(d.root)).expanduser()
    if cifar and not d.download and not (root / "cifar-10-batches-py").is_dir():
        raise ConfigError(
            f"data.root={d.root}: no cifar-10-batches-py folder in {root.resolve()} (data.download=false). Fix: {MISSING_DATA_FIX}."
        )
    _check_trainer(cfg)
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
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(str(ckpt)).expanduser().is_file():
        _fail("ckpt_path", ckpt, "use null, last (this run folder's checkpoints/last.ckpt) or an existing .ckpt file")
    if not isinstance(cfg.get("overwrite", False), bool):
        _fail("overwrite", cfg.get("overwrite"), "use true or false")
    if not _is_whole(cfg.seed):
        _fail("seed", cfg.seed, "use a whole number")


def _check_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    precisions = _precisions()
    if t.get("precision") is not None and t.precision not in precisions:
        _fail("trainer.precision", t.precision, f"Lightning accepts {', '.join(map(str, precisions))}")
    accelerator = t.get("accelerator", "auto")
    if accelerator not in ACCELERATORS:
        _fail("trainer.accelerator", accelerator, f"use one of {', '.join(ACCELERATORS)} (or trainer=cpu / trainer=gpu)")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu) needs a CUDA GPU, but torch.cuda.is_available() is False "
            "on this machine. Fix: trainer=cpu (or trainer.accelerator=auto)."
        )
    devices = t.get("devices", "auto")
    ok = (
        devices == "auto"
        or (_is_whole(devices) and (devices >= 1 or devices == -1))
        or (
            isinstance(devices, str)
            and devices.strip() not in ("", "0")
            and all(p.strip().lstrip("-").isdigit() for p in devices.split(","))
        )
        or (OmegaConf.is_list(devices) and len(devices) > 0 and all(_is_whole(x) and x >= 0 for x in devices))
    )
    if not ok:
        _fail("trainer.devices", devices, "use a count >= 1, -1 (all), auto, or a non-empty list of device indices")
    if not (_is_whole(t.get("num_nodes", 1)) and t.get("num_nodes", 1) >= 1):
        _fail("trainer.num_nodes", t.get("num_nodes"), "use a whole number >= 1")
    if cfg.gan.generator or cfg.gan.checkpoint:
        return  # the GAN is given: the training settings are not used
    untrained = "the GAN would not be trained and an untrained GAN would be scored"
    epochs, steps = t.get("max_epochs"), t.get("max_steps", -1)
    if epochs not in (None, -1) and not (_is_whole(epochs) and epochs >= 1):
        _fail(
            "trainer.max_epochs",
            epochs,
            f"use a whole number >= 1 ({untrained}; a trained GAN can be given with gan.checkpoint=...)",
        )
    if steps not in (None, -1) and not (_is_whole(steps) and steps >= 1):
        _fail("trainer.max_steps", steps, f"use -1 (no limit) or a whole number >= 1 ({untrained})")
    if epochs == -1 and steps in (None, -1):
        _fail("trainer.max_epochs", epochs, "use a whole number >= 1, or set trainer.max_steps >= 1: training would never end")
    limit = t.get("limit_train_batches")
    if (
        limit is not None
        and not (_is_whole(limit) and limit >= 1)
        and not (_is_number(limit) and not _is_whole(limit) and 0 < limit <= 1)
    ):
        _fail("trainer.limit_train_batches", limit, f"use null, a whole count >= 1 or a fraction in (0, 1] ({untrained})")


# ---------------------------------------------------------------------------------- unknown keys
def group_choices(cfg: DictConfig) -> dict | None:
    """The selected option of each config group (``data: cifar10``, ...), or None if unknown."""
    try:
        return dict(HydraConfig.get().runtime.choices)
    except ValueError:  # not inside a Hydra job: a config composed with return_hydra_config=True
        if "hydra" in cfg and "runtime" in cfg.hydra:
            return dict(cfg.hydra.runtime.choices)
        return None


def _declared(group: str, option: str) -> dict | None:
    """The keys ``conf/<group>/<option>.yaml`` declares (following its in-group defaults), or
    None for a ``# @package _global_`` overlay (experiments, debug: they only change declared keys)
    or an option outside conf/."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return None
    text = path.read_text()
    if "@package _global_" in text:
        return None
    tree = yaml.safe_load(text) or {}
    merged: dict = {}
    for entry in tree.pop("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_":
            _merge(merged, _declared(group, entry) or {})
    _merge(merged, tree)
    return merged


def _merge(into: dict, tree: dict) -> None:
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _accepts(target: str | None, key: str) -> bool:
    """Whether the class ``target`` takes ``key`` as a keyword argument."""
    if not target:
        return False
    try:
        params = inspect.signature(get_class(target)).parameters  # the constructor's, without self
    except Exception:  # not importable here: let instantiate report it
        return True
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _unknown(node: dict, declared: dict, path: str) -> list[tuple[str, list]]:
    found = []
    target = node.get("_target_")
    for key, value in node.items():
        full = f"{path}.{key}" if path else key
        if key not in declared:
            if not _accepts(target, key):
                found.append((full, list(declared)))
        elif isinstance(value, dict) and isinstance(declared[key], dict):
            found += _unknown(value, declared[key], full)
    return found


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys that nothing reads, e.g. ``+mapping.alpah=0.5``.

    The declared keys are those of ``conf/config.yaml`` plus, for each config group, those of the
    selected option's yaml file (``conf/mapping/latent.yaml`` for ``mapping=latent``); a node that
    is instantiated (``_target_``) also accepts every keyword of its
    class (``+trainer.gradient_clip_val=1`` is fine). ``_global_`` overlays (experiment, debug,
    hparams_search) only set declared keys, so a key they add is refused too. Skipped when the
    group choices are unknown (a config not composed by Hydra).

    Raises:
        ConfigError: the first unknown keys, with the closest declared name.
    """
    choices = group_choices(cfg)
    if choices is None:
        return
    declared = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    declared.pop("defaults", None)
    for group, option in choices.items():
        if group.startswith("hydra") or "/" in group or option is None:
            continue
        keys = _declared(group, option)
        if keys is not None:
            declared[group] = keys
        elif group not in declared and group in cfg and not (CONF_DIR / group).is_dir():
            return  # a group from outside conf/: its keys cannot be known here
    tree = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=False))  # the root config is a mapping
    tree.pop("hydra", None)
    found = _unknown(tree, declared, "")
    if found:
        key, siblings = found[0]
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [str(s) for s in siblings], n=1)
        hint = f" (did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?)" if close else ""
        more = f"; also {', '.join(k for k, _ in found[1:4])}" if len(found) > 1 else ""
        raise ConfigError(
            f"{key} is not a setting: nothing reads it{hint}{more}. Fix: check the spelling against conf/ "
            "(a +key=value override adds a new key; key=value changes an existing one)."
        )


# ------------------------------------------------------------------------------ run environment
def probe_writable(folder: Path, key: str) -> None:
    """Create ``folder`` if needed, write and remove a small temporary file there.

    Raises:
        ConfigError: the folder cannot be created or written (read-only, disk full, not a folder).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".anogan-write-test.")
        try:
            os.write(fd, b"\0" * 65536)  # a full disk refuses data blocks, not always empty files
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as err:
        line = describe_os_error(err, folder, "writing to").split("; the previous")[0]
        raise ConfigError(f"{key}: {line}. Fix: choose another folder ({key}=... or free some space).") from None


def check_run_environment(cfg: DictConfig, run_dir: Path) -> None:
    """Before any data loads: the output and GAN cache folders are writable, and the checkpoint to
    resume from (``ckpt_path``) loads.

    Raises:
        ConfigError: a folder is read-only, full or not a folder; the checkpoint is corrupt.
    """
    probe_writable(run_dir, "hydra.run.dir")
    if cfg.gan.cache and not (cfg.gan.generator or cfg.gan.checkpoint):
        probe_writable(Path(str(cfg.paths.gan_cache_dir)).expanduser(), "paths.gan_cache_dir")
    ckpt = cfg.get("ckpt_path")
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(str(ckpt)).expanduser() if ckpt else None
    if path is None or not path.is_file():
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        ok = isinstance(state, dict) and "state_dict" in state and "epoch" in state
    except Exception as err:
        raise ConfigError(
            f"ckpt_path={ckpt}: {path} is damaged and cannot be loaded ({type(err).__name__}). Fix: delete it and start "
            "again (overwrite=true), or resume from another copy (ckpt_path=<file>)."
        ) from None
    if not ok:
        _fail("ckpt_path", ckpt, f"{path} is not a Lightning checkpoint of the GAN stage")
