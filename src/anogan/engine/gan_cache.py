"""The GAN cache: a trained GAN reused by every run with the same key, and the f-AnoGAN encoders beside it.

An entry is a GAN folder (``anogan.engine.gan_store``) named by a hash of everything that makes the
GAN (``cache_key``: data, model, training settings, seed, the training code's version and the
number of training processes; docs/sweeps.md). Entries are published by renaming a whole folder,
under a lock (``filelock``), so parallel sweep jobs never train the same GAN twice nor read a
half-written one. An entry is checked when it is opened (gan.json, its key, both weight files): a
damaged one is moved aside as ``<key>.broken-<timestamp>`` and the GAN is trained again.

The encoders of the f-AnoGAN scorers (``mapping=encoder``, ``encoder_search``) are cached beside
them, in ``encoders/<key>.pt``, keyed by the GAN's weights, the training images and the encoder's
own settings (``encoder_cache_key``): a sweep over the scorer's search settings, or a rerun of the
same run, trains its encoder once.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import filelock
import torch
from omegaconf import DictConfig, OmegaConf

from anogan.engine.gan_store import load_weights, read_gan_json
from anogan.models.dcgan import Discriminator, Generator
from anogan.utils.errors import GANLoadError, UserError
from anogan.utils.io import atomic_torch_save

if TYPE_CHECKING:
    from anogan.scorers.base import Scorer

log = logging.getLogger(__name__)
LoadedT = TypeVar("LoadedT")
BuiltT = TypeVar("BuiltT")

# Data settings that change only the evaluation, never the GAN's training images.
EVAL_ONLY_DATA_KEYS = ("val_subset", "test_subset", "num_workers", "download", "verify_checksums")
# The source files whose content defines "the training code" in the cache key: the GAN module,
# checkpoint selection (a callback the pipeline attaches to the GAN's training: it picks the kept
# epoch) and the data modules (they choose and preprocess the training images), each with every
# package module it imports, directly or not (``import_closure``: DiffAugment, the networks, ...).
TRAINING_CODE = ("models/gan.py", "engine/selection.py", "data/*.py")
# The same for a cached encoder: its training (izi_f) and the data modules.
ENCODER_CODE = ("scorers/encoder.py", "data/*.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path | None:
    """The source file of the package module ``name`` (``anogan.models.gan``), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE_DIR.name:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def import_closure(roots: list[Path]) -> list[Path]:
    """``roots`` and every source file of this package they import, directly or not: each ``import
    anogan.x`` and ``from anogan.x import y`` statement (also inside functions), ``y`` itself when it is
    a module, and the ``__init__.py`` of each package on the way (Python runs them on import). Not
    followed: the imports of a module-level ``__getattr__`` (PEP 562), which run only when a missing
    attribute is looked up (``anogan.fit``, ``anogan.load``: the API), never on import."""
    seen: set[Path] = set()
    todo = [Path(r).resolve() for r in roots]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        names: list[str] = []
        tree = ast.parse(path.read_text(), filename=str(path))
        lazy = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in lazy:
                continue
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the packages on the way, then the module itself
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return sorted(seen)


def training_code_version(patterns: tuple[str, ...] = TRAINING_CODE) -> str:
    """A hash of the training code's source files: the ``import_closure`` of the files matching
    ``patterns`` under the package (TRAINING_CODE for GANs, ENCODER_CODE for encoders). Any edit there,
    including one that comes with a new git commit or package version, gives new cache keys."""
    roots = [path for pattern in patterns for path in sorted(PACKAGE_DIR.glob(pattern))]
    digest = hashlib.sha256()
    for path in import_closure(roots):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def world_size(cfg: DictConfig) -> int | str:
    """Training processes: trainer.devices x trainer.num_nodes (devices as a count, a list or a
    "0,1" string of ids; "auto" / -1 resolved on GPUs to the visible count, on CPU to 1)."""
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        devices = len([d for d in devices.split(",") if d.strip()])
    elif not isinstance(devices, int):
        devices = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else -1
    if devices == -1:  # "auto" or -1: every device of the accelerator
        gpu = cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if gpu else 1
    return devices * int(cfg.trainer.get("num_nodes", 1) or 1)


def _as_dict(group: DictConfig) -> dict[str, Any]:
    """A config group as a plain dict (OmegaConf declares lists and scalars too; a group is a mapping)."""
    return cast(dict[str, Any], OmegaConf.to_container(group, resolve=True))


def cache_key(cfg: DictConfig) -> tuple[str, dict]:
    """A hash of everything that determines the trained GAN (and nothing that does not): the data
    it is trained on, the model, the training settings, the seed, the training code's version and
    the world size (the per-process batch and the data order depend on it)."""
    # checkpoint selection (model.selection.every_n_epochs) picks the epoch on validation rows: then
    # val_subset (which rows) changes the GAN that is kept
    selection = (cfg.model.get("selection") or {}).get("every_n_epochs") is not None
    eval_only = [k for k in EVAL_ONLY_DATA_KEYS if not (selection and k == "val_subset")]
    data = {k: v for k, v in _as_dict(cfg.data).items() if k not in eval_only}
    data["root"] = str(Path(data["root"]).expanduser().resolve())
    trainer = _as_dict(cfg.trainer)
    spec = {
        "data": data,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "training": {k: trainer.get(k) for k in ("max_epochs", "max_steps", "max_time", "precision", "limit_train_batches")},
        "seed": cfg.seed,
        "code": training_code_version(),
        "world_size": world_size(cfg),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return digest, spec


@contextmanager
def cache_lock(cache_dir: Path, key: str) -> Iterator[None]:
    """An exclusive lock per cache entry (``filelock.FileLock`` on ``<key>.lock``): a second job
    waits, then finds the entry trained. Where the filesystem refuses locks, jobs go on without
    one (a warning): publishing stays atomic, at worst two jobs train the same GAN."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(cache_dir / f"{key}.lock"))
    try:
        lock.acquire()
    except (OSError, NotImplementedError) as err:
        log.warning("cannot lock %s (%s): going on without the lock; two jobs may train this GAN", cache_dir / f"{key}.lock", err)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def cached(
    key: str,
    load: Callable[[], LoadedT | None],
    build: Callable[[], BuiltT],
    publish: Callable[[BuiltT], object],
    lock_dir: Path,
    owner: bool = True,
) -> tuple[LoadedT | BuiltT, bool]:
    """The one cache protocol of the GAN and encoder caches: under ``key``'s lock (``cache_lock`` in
    ``lock_dir``), ``load()`` the entry (None: absent or damaged), else ``build()`` it and
    ``publish(built)``. Returns ``(loaded, True)`` for a cache hit, ``(built, False)`` otherwise
    (what ``load`` returns may differ from what ``build`` returns: a GAN entry loads as networks but
    is built as a folder).

    DDP: only the ``owner`` (global rank 0) locks and publishes. The other ranks must not wait for the
    lock: rank 0 holds it while it trains, and its training needs them. They are started by rank 0's
    first ``Trainer`` call, so they load while rank 0 holds the lock (or after it reused the entry):
    the entry cannot appear or vanish meanwhile, and they make rank 0's reuse-or-build choice."""
    with cache_lock(lock_dir, key) if owner else nullcontext():
        found = load()
        if found is not None:
            return found, True
        built = build()
        if owner:
            publish(built)
    return built, False


def set_aside(entry: Path, reason: str) -> Path:
    """Move a damaged cache entry to ``<key>.broken-<timestamp>`` (kept for inspection)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = entry.with_name(f"{entry.name}.broken-{stamp}")
    n = 1
    while target.exists():
        target, n = entry.with_name(f"{entry.name}.broken-{stamp}-{n}"), n + 1
    os.replace(entry, target)
    log.warning("damaged GAN cache entry %s (%s): moved to %s; the GAN is trained again", entry, reason, target)
    return target


def load_cache_entry(
    entry: Path, key: str, arch: dict, move_damaged: bool = True
) -> tuple[Generator, Discriminator, dict] | None:
    """G, D and the checked gan.json of the cache entry ``entry``, or None when there is none or it
    is damaged (no or unreadable gan.json, another key in it, a missing, truncated or unloadable
    weight file). A damaged entry is moved aside with a log line when ``move_damaged`` (one process only)."""
    if not entry.exists():
        return None
    try:
        meta = read_gan_json(entry)
        if meta.get("cache_key") != key:
            raise GANLoadError(f"gan.json has cache_key {meta.get('cache_key')!r}, not {key!r}")
        g, d = load_weights(entry / "generator.pt", entry / "discriminator.pt", arch)
    except (OSError, ValueError, GANLoadError) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        if move_damaged:
            set_aside(entry, reason)
        else:
            log.warning("damaged GAN cache entry %s (%s)", entry, reason)
        return None
    return g, d, meta


def publish(source: Path, cache_dir: Path, key: str) -> Path | None:
    """Copy a finished GAN folder into the cache under ``key`` (temp folder + rename). Returns the
    entry, or None when it was not published (another job published it first, or the copy
    failed: a warning; the run goes on with its own GAN)."""
    target = cache_dir / key
    tmp = cache_dir / f".{key}.tmp{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        if target.exists():
            log.info("the GAN cache entry %s appeared meanwhile (another job): keeping it", target)
            shutil.rmtree(tmp)
            return None
        os.replace(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not cache the GAN as %s (%s: %s)", target, type(err).__name__, err)
        return None
    return target


def encoder_cache_key(cfg: DictConfig, scorer: Scorer) -> str:
    """A hash of everything that determines a scorer's trained encoder: the weights of its G and D
    (wherever the GAN came from: trained, cached or given), the training images and their batches
    (``cfg.data`` as in ``cache_key``), precision, batch limit and world size, the encoder's own
    settings and seed (``scorer.fit_settings()``) and the encoder code's version. The scorer's
    search settings (steps, lr, alpha, ...) are not in it: they do not change the encoder."""
    gan_spec = cache_key(cfg)[1]
    spec = {
        "data": gan_spec["data"],
        "training": {k: gan_spec["training"][k] for k in ("precision", "limit_train_batches")},
        "world_size": gan_spec["world_size"],
        "encoder": scorer.fit_settings(),
        "code": training_code_version(ENCODER_CODE),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for prefix, net in (("generator.", scorer.generator), ("discriminator.", scorer.discriminator)):
        for name, tensor in sorted(net.state_dict().items()):
            digest.update((prefix + name).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_encoder(path: Path, key: str, encoder: torch.nn.Module) -> bool:
    """Load the cached encoder ``path`` into ``encoder``; False when there is none or it is damaged
    (unreadable, another key, weights that do not fit: a warning, and it is trained again)."""
    if not path.is_file():
        return False
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(entry, dict) or entry.get("key") != key:
            raise ValueError(f"it holds key {entry.get('key') if isinstance(entry, dict) else None!r}, not {key!r}")
        encoder.load_state_dict(entry["state_dict"])
    except Exception as err:  # any damage means: train it again, never fail the run
        log.warning(
            "damaged encoder cache entry %s (%s): the encoder is trained again",
            path,
            f"{type(err).__name__}: {err}".splitlines()[0][:300],
        )
        return False
    encoder.requires_grad_(False)
    return True


def publish_encoder(encoder: torch.nn.Module, path: Path, key: str) -> None:
    """Write the trained ``encoder`` to the cache as ``path`` (atomically); a failure is a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"key": key, "state_dict": encoder.state_dict()}, path)
    except (OSError, UserError) as err:
        log.warning("could not cache the encoder as %s (%s)", path, err)
