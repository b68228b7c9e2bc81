"""Where a trained GAN lives: a folder of plain G/D state dicts and its ``gan.json``.

A GAN folder holds ``generator.pt``, ``discriminator.pt`` (plain state dicts, so any pretrained
pair can be dropped in) and ``gan.json`` (the architecture, plus what the pipeline adds: the cache
key, the selected epoch, the health check). Files are written to a temporary name and renamed, so
a reader never sees half a file; ``gan.json`` is written last, its presence means "complete".
The cache of trained GANs, whose entries are such folders, is ``anogan.engine.gan_cache``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from anogan.models.dcgan import Discriminator, Generator
from anogan.models.transforms import transform_count
from anogan.utils.errors import GANLoadError
from anogan.utils.io import atomic_torch_save, atomic_write_text

ARCH_KEYS = ("latent_dim", "channels", "image_size", "g_width", "d_width", "d_norm", "spectral_norm", "self_supervised")
# Values of architecture keys added later, for GAN folders and checkpoints saved before them.
ARCH_DEFAULTS = {"d_norm": "batch", "spectral_norm": False, "self_supervised": None}


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file in the same folder (see :mod:`anogan.utils.io`).

    Raises:
        anogan.utils.errors.WriteError: disk full or read-only folder (the previous file is kept).
    """
    atomic_torch_save(obj, path)


def save_gan(
    generator: torch.nn.Module, discriminator: torch.nn.Module, arch: dict, folder: Path, extra: dict | None = None
) -> Path:
    """Write G, D and ``gan.json`` into ``folder``, each file atomically, ``gan.json`` last.

    Raises:
        anogan.utils.errors.WriteError: disk full or read-only folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save(generator.state_dict(), folder / "generator.pt")
    atomic_save(discriminator.state_dict(), folder / "discriminator.pt")
    # written last: its presence means "complete"
    atomic_write_text(folder / "gan.json", json.dumps({**arch, **(extra or {})}, indent=1))
    return folder


def _load_state(path: Path, what: str) -> dict:
    if not path.is_file():
        raise GANLoadError(f"{what} weights not found: {path}. Fix: give an existing file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        raise GANLoadError(f"{path} is not a PyTorch state dict ({type(err).__name__}: {detail}).") from None
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint given by mistake
        raise GANLoadError(f"{path} is a Lightning checkpoint; pass it as gan.checkpoint=..., not as plain weights.")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise GANLoadError(f"{path} is not a state dict of the {what} (names to tensors). Fix: give the {what}'s weights file.")
    return state


# gan.json: the architecture (ARCH_KEYS, with these types) and what the pipeline adds
GAN_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "latent_dim": int,
    "channels": int,
    "image_size": int,
    "g_width": int,
    "d_width": int,
    "d_norm": str,
    "spectral_norm": bool,
    "self_supervised": (str, type(None)),
}
GAN_JSON_EXTRAS: dict[str, type | tuple[type, ...]] = {"cache_key": str, "spec": dict, "selection": dict, "health": dict}


def read_gan_json(folder: Path) -> dict:
    """A GAN folder's ``gan.json``, checked: a JSON object with every architecture key (``d_norm``
    and ``spectral_norm``, added later, default to ``ARCH_DEFAULTS`` for older folders: the only
    behaviour before them) of the right type, and no key outside ``GAN_JSON_TYPES`` and
    ``GAN_JSON_EXTRAS``. ``GANLoadError`` (one line naming the key and the fix) otherwise."""
    path = Path(folder) / "gan.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise GANLoadError(f"{path} does not exist: a GAN folder holds generator.pt, discriminator.pt and gan.json.") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise GANLoadError(
            f"{path} is not readable JSON ({type(err).__name__}: {str(err)[:200]}). Fix: restore it or retrain the GAN."
        ) from None
    if not isinstance(meta, dict):
        raise GANLoadError(f"{path} holds a JSON {type(meta).__name__}, not an object. Fix: restore it or retrain the GAN.")
    meta = {**ARCH_DEFAULTS, **meta}
    for key, kind in {**GAN_JSON_TYPES, **GAN_JSON_EXTRAS}.items():
        if key not in meta:
            if key in GAN_JSON_EXTRAS:
                continue
            raise GANLoadError(
                f"{path} lacks '{key}': the architecture cannot be guessed. Fix: restore gan.json or retrain the GAN."
            )
        value = meta[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise GANLoadError(
                f"{path}: '{key}' is {json.dumps(value)}, not {'an integer' if kind is int else 'a string or null' if isinstance(kind, tuple) else kind.__name__}. Fix: restore gan.json."
            )
    unknown = [k for k in meta if k not in GAN_JSON_TYPES and k not in GAN_JSON_EXTRAS]
    if unknown:
        raise GANLoadError(
            f"{path}: unknown key '{unknown[0]}' (gan.json holds {', '.join([*GAN_JSON_TYPES, *GAN_JSON_EXTRAS])}): "
            "written by another anogan or edited. Fix: restore gan.json or retrain the GAN."
        )
    return meta


def build_networks(arch: dict) -> tuple[Generator, Discriminator]:
    """G and D (freshly initialised) for the architecture ``arch`` (the ``ARCH_KEYS``; missing later
    keys take ``ARCH_DEFAULTS``); ``self_supervised`` gives D its transformation head."""
    arch = {**ARCH_DEFAULTS, **arch}
    g = Generator(arch["latent_dim"], arch["channels"], arch["image_size"], arch["g_width"])
    ss = arch["self_supervised"]
    d = Discriminator(
        arch["channels"],
        arch["image_size"],
        arch["d_width"],
        norm=arch["d_norm"],
        spectral_norm=arch["spectral_norm"],
        transform_classes=transform_count(ss) if ss else 0,
    )
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
                "Fix: set model.latent_dim / data.channels / data.image_size / model.*_width / model.d_norm / model.spectral_norm "
                "/ model.self_supervised to the values it was trained with."
            ) from None
    return g, d


def load_gan_folder(folder: Path) -> tuple[Generator, Discriminator, dict]:
    """G, D and the checked ``gan.json`` of a GAN folder; ``GANLoadError`` (one line) for any problem."""
    meta = read_gan_json(folder)
    g, d = load_weights(folder / "generator.pt", folder / "discriminator.pt", meta)
    return g, d, meta


def load_checkpoint(path: str | Path, arch: dict) -> tuple[Generator, Discriminator]:
    """G and D from an earlier run's ``gan/`` folder (or any folder with gan.json) or a GAN .ckpt
    (a run folder's ``checkpoints/last.ckpt``). Scorer files are read by
    ``anogan.engine.artifact.load_gan_checkpoint``, which calls this for everything else."""
    path = Path(path).expanduser()
    for folder in (path, path / "gan"):
        if (folder / "gan.json").is_file():
            g, d, meta = load_gan_folder(folder)
            check_arch(meta, arch, folder)
            return g, d
    if path.is_dir() and (path / "checkpoints" / "last.ckpt").is_file():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise GANLoadError(
            f"gan.checkpoint={path} does not exist or holds no GAN (expected a .ckpt file, a run folder "
            "with scorer.pt, gan/ or checkpoints/last.ckpt, or a folder with gan.json)."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hparams, state = ckpt["hyper_parameters"], ckpt["state_dict"]
    except Exception as err:
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        raise GANLoadError(
            f"gan.checkpoint={path} is not a Lightning checkpoint of the GAN stage ({type(err).__name__}: {detail})."
        ) from None
    check_arch({k: hparams[k] for k in ARCH_KEYS if k in hparams}, arch, path)
    g, d = build_networks(arch)
    # the EMA generator when the GAN kept one (model.ema_decay): the one the run scores with
    g_prefix = "generator_ema.module." if any(k.startswith("generator_ema.module.") for k in state) else "generator."
    for net, prefix, what in ((g, g_prefix, "generator"), (d, "discriminator.", "discriminator")):
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(found)
        except RuntimeError as err:
            detail = "; ".join(line.strip() for line in str(err).splitlines()[:2])[:300]
            raise GANLoadError(f"gan.checkpoint={path}: the {what}'s weights are incomplete or do not fit ({detail}).") from None
    return g, d


def check_arch(found: dict, wanted: dict, where: Path) -> None:
    """``GANLoadError`` naming every architecture key where ``found`` (a file's) differs from ``wanted`` (the config's)."""
    found, wanted = {**ARCH_DEFAULTS, **found}, {**ARCH_DEFAULTS, **wanted}
    diff = {k: (found.get(k), wanted.get(k)) for k in ARCH_KEYS if found.get(k) != wanted.get(k)}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
        raise GANLoadError(
            f"the GAN in {where} does not match the configured model ({detail}). Fix: set those config values to the checkpoint's."
        )
