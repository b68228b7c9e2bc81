"""Where trained GANs live: plain G/D state dicts, a cache keyed by everything that makes a GAN.

A GAN folder holds ``generator.pt``, ``discriminator.pt`` (plain state dicts, so any pretrained
pair can be dropped in) and ``gan.json`` (the architecture, plus the cache key when cached).
Files are written to a temporary name and renamed, so a reader never sees half a file; cache
entries are published by renaming a whole folder, under a lock, so parallel sweep jobs never
train the same GAN twice nor read a half-written one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from anogan.errors import UserError
from anogan.models.dcgan import Discriminator, Generator

log = logging.getLogger(__name__)

ARCH_KEYS = ("latent_dim", "channels", "image_size", "g_width", "d_width", "d_norm", "spectral_norm")
# Values of architecture keys added later, for GAN folders and checkpoints saved before them.
ARCH_DEFAULTS = {"d_norm": "batch", "spectral_norm": False}
# Data settings that change only the evaluation, never the GAN's training images.
EVAL_ONLY_DATA_KEYS = ("val_subset", "test_subset", "num_workers", "download", "verify_checksums")


class GANLoadError(UserError):
    """A checkpoint or weight file is missing, unreadable or does not fit the configured model."""


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_gan(generator: torch.nn.Module, discriminator: torch.nn.Module, arch: dict, folder: Path, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save(generator.state_dict(), folder / "generator.pt")
    atomic_save(discriminator.state_dict(), folder / "discriminator.pt")
    tmp = folder / ".gan.json.tmp"
    tmp.write_text(json.dumps({**arch, **(extra or {})}, indent=1))
    os.replace(tmp, folder / "gan.json")  # written last: its presence means "complete"
    return folder


def _load_state(path: Path, what: str) -> dict:
    if not path.is_file():
        raise GANLoadError(f"{what} weights not found: {path}. Fix: give an existing file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GANLoadError(f"{path} is not a PyTorch state dict ({type(err).__name__}: {err}).") from None
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint given by mistake
        raise GANLoadError(f"{path} is a Lightning checkpoint; pass it as gan.checkpoint=..., not as plain weights.")
    return state


def build_networks(arch: dict) -> tuple[Generator, Discriminator]:
    arch = {**ARCH_DEFAULTS, **arch}
    g = Generator(arch["latent_dim"], arch["channels"], arch["image_size"], arch["g_width"])
    d = Discriminator(arch["channels"], arch["image_size"], arch["d_width"], norm=arch["d_norm"], spectral_norm=arch["spectral_norm"])
    return g, d


def load_weights(generator_path: Path, discriminator_path: Path, arch: dict) -> tuple[Generator, Discriminator]:
    g, d = build_networks(arch)
    for net, path, what in ((g, Path(generator_path), "generator"), (d, Path(discriminator_path), "discriminator")):
        state = _load_state(path, what)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            shapes = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
            raise GANLoadError(
                f"the {what} weights in {path} do not fit the configured model "
                f"({', '.join(f'{k}={arch.get(k, ARCH_DEFAULTS.get(k))}' for k in ARCH_KEYS)}): {shapes}. "
                "Fix: set model.latent_dim / data.channels / data.image_size / model.*_width / model.d_norm / model.spectral_norm to the values it was trained with."
            ) from None
    return g, d


def load_gan_folder(folder: Path) -> tuple[Generator, Discriminator, dict]:
    meta = json.loads((folder / "gan.json").read_text())
    g, d = load_weights(folder / "generator.pt", folder / "discriminator.pt", meta)
    return g, d, meta


def cache_key(cfg: DictConfig) -> tuple[str, dict]:
    """A hash of everything that determines the trained GAN (and nothing that does not)."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k not in EVAL_ONLY_DATA_KEYS}
    data["root"] = str(Path(data["root"]).expanduser().resolve())
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    spec = {
        "data": data,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "training": {k: trainer.get(k) for k in ("max_epochs", "max_steps", "precision", "limit_train_batches")},
        "seed": cfg.seed,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return digest, spec


@contextmanager
def cache_lock(cache_dir: Path, key: str):
    """An exclusive lock per cache entry: a second job waits, then finds the entry trained."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(source: Path, cache_dir: Path, key: str) -> Path:
    """Copy a finished GAN folder into the cache under ``key`` (temp folder + rename)."""
    target = cache_dir / key
    tmp = cache_dir / f".{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if target.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target


def load_checkpoint(path: str | Path, arch: dict) -> tuple[Generator, Discriminator]:
    """G and D from a GAN stage's output: a Lightning .ckpt, a ``gan/`` folder or a run folder."""
    path = Path(path).expanduser()
    for folder in (path, path / "gan"):
        if (folder / "gan.json").is_file():
            g, d, meta = load_gan_folder(folder)
            _check_arch(meta, arch, folder)
            return g, d
    if path.is_dir() and (path / "checkpoints" / "last.ckpt").is_file():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise GANLoadError(
            f"gan.checkpoint={path} does not exist or holds no GAN (expected a .ckpt file, a run folder "
            "with gan/ or checkpoints/last.ckpt, or a folder with gan.json)."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hparams, state = ckpt["hyper_parameters"], ckpt["state_dict"]
    except Exception as err:
        raise GANLoadError(f"gan.checkpoint={path} is not a Lightning checkpoint of the GAN stage ({type(err).__name__}: {err}).") from None
    _check_arch({k: hparams[k] for k in ARCH_KEYS if k in hparams}, arch, path)
    g, d = build_networks(arch)
    # the EMA generator when the GAN kept one (model.ema_decay): the one the run scores with
    g_prefix = "generator_ema.module." if any(k.startswith("generator_ema.module.") for k in state) else "generator."
    g.load_state_dict({k[len(g_prefix):]: v for k, v in state.items() if k.startswith(g_prefix)})
    d.load_state_dict({k[len("discriminator."):]: v for k, v in state.items() if k.startswith("discriminator.")})
    return g, d


def _check_arch(found: dict, wanted: dict, where: Path) -> None:
    diff = {k: (found.get(k, ARCH_DEFAULTS.get(k)), wanted[k]) for k in ARCH_KEYS if found.get(k, ARCH_DEFAULTS.get(k)) != wanted[k]}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
        raise GANLoadError(f"the GAN in {where} does not match the configured model ({detail}). Fix: set those config values to the checkpoint's.")
