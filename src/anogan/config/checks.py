"""Fail fast on a bad configuration: one message naming the key, the value and what is allowed,
before any data is loaded or any training starts.

:func:`check_config` checks the composed configuration: first against its schema
(``anogan.config.schema``: unknown keys, types, each value's range), then what involves several keys
or the machine (the data folder, the GPU, DDP in a sweep, the GAN files, the training length);
:func:`check_run_environment` then looks at the files a run depends on (writable output and cache
folders, a loadable checkpoint to resume from). docs/reliability.md lists every check.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig

from anogan.config.choices import MISSING_DATA_FIX
from anogan.config.schema import validate
from anogan.config.scorer_schema import MAPPING_SCHEMAS
from anogan.utils.errors import ConfigError
from anogan.utils.io import describe_os_error

__all__ = ["check_config", "check_run_environment", "group_choices", "probe_writable"]


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}.")


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra job (tests, notebooks)
        return False


def check_scorer_keys(mp: DictConfig) -> None:
    """``conf/mapping`` names a scorer class of ``anogan.scorers`` by ``_target_`` (its other keys are
    checked against its schema or constructor by ``anogan.config.schema.validate``)."""
    target = mp.get("_target_")
    scorers = f"mapping={', '.join(MAPPING_SCHEMAS)} (or a preset of conf/mapping)"
    if not target or not str(target).startswith("anogan.scorers."):
        _fail("mapping._target_", target, f"choose a scorer with {scorers}")
    try:
        get_class(target)
    except Exception:
        _fail("mapping._target_", target, f"no such scorer class; choose {scorers}")


def check_config(cfg: DictConfig) -> None:
    """Check the composed configuration; nothing is read from disk but folder/file existence.

    Raises:
        ConfigError: the first bad value, named with its key, what is allowed and the fix.
    """
    validate(cfg)  # keys, types and ranges (anogan.config.schema)
    d = cfg.data
    check_scorer_keys(cfg.mapping)
    root = Path(str(d.root)).expanduser()
    if "normal_class" in d and not d.download and not (root / "cifar-10-batches-py").is_dir():
        raise ConfigError(
            f"data.root={d.root}: no cifar-10-batches-py folder in {root.resolve()} (data.download=false). Fix: {MISSING_DATA_FIX}."
        )
    _check_trainer(cfg)
    if _is_multirun() and (cfg.trainer.devices not in (1, "1") or cfg.trainer.num_nodes != 1):
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} in a Hydra sweep (-m) is not supported: Lightning's DDP "
            "re-runs the script, so every process would replay the whole sweep. Fix: sweep with one device "
            "per job (trainer=cpu or trainer=gpu), or start the processes with a cluster launcher per job."
        )
    if bool(cfg.gan.generator) != bool(cfg.gan.discriminator):
        raise ConfigError("gan.generator and gan.discriminator go together: give both weight files, or neither.")
    for key in ("generator", "discriminator", "checkpoint"):
        value = cfg.gan[key]
        if value and not Path(value).expanduser().exists():
            _fail(f"gan.{key}", value, "the file or folder does not exist")
    ckpt = cfg.ckpt_path
    if ckpt not in (None, "last") and not Path(str(ckpt)).expanduser().is_file():
        _fail("ckpt_path", ckpt, "use null, last (this run folder's checkpoints/last.ckpt) or an existing .ckpt file")


def _check_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={t.accelerator} (trainer=gpu) needs a CUDA GPU, but torch.cuda.is_available() is False "
            "on this machine. Fix: trainer=cpu (or trainer.accelerator=auto)."
        )
    if cfg.gan.generator or cfg.gan.checkpoint:
        return  # the GAN is given: the training settings are not used
    if t.max_epochs == -1 and t.max_steps == -1 and t.max_time is None:
        _fail(
            "trainer.max_epochs", t.max_epochs, "use a whole number >= 1, or set trainer.max_steps >= 1: training would never end"
        )


def group_choices(cfg: DictConfig) -> dict | None:
    """The selected option of each config group (``data: cifar10``, ...), or None if unknown."""
    try:
        return dict(HydraConfig.get().runtime.choices)
    except ValueError:  # not inside a Hydra job: a config composed with return_hydra_config=True
        if "hydra" in cfg and "runtime" in cfg.hydra:
            return dict(cfg.hydra.runtime.choices)
        return None


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
    ckpt = cfg.ckpt_path
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
