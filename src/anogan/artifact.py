"""One self-contained scorer file (``<run>/scorer.pt``): everything needed to score new images.

It holds the networks (G, D and any encoder) with their architecture, the scorer's class and
settings, the preprocessing (image size, channels, resize policy), the precision the run scored
in, and the calibration fitted on the run's validation split only: the resolved correction, the
thresholds of every rule and the validation normals' scores (for conformal p-values). It never
points into the GAN cache or to other files, so ``predict.py``, ``anogan-export`` and
``gan.checkpoint`` work with this one file, wherever it is copied.

Written atomically (temp file in the same folder, then rename); read with ``weights_only=True``
(plain tensors, numbers and strings: no code is unpickled).
"""

from __future__ import annotations

import importlib
import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from anogan.calibration import Calibration
from anogan.errors import UserError
from anogan.gan_store import build_networks

FORMAT = "anogan-scorer"
VERSION = 1
FILENAME = "scorer.pt"


class ArtifactError(UserError):
    """The scorer file is missing, unreadable or not an anogan scorer."""


def resolve_path(path: str | Path) -> Path:
    """A scorer file, or a run folder holding ``scorer.pt``; ``ArtifactError`` otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / FILENAME).is_file():
            return path / FILENAME
        raise ArtifactError(
            f"{path} holds no {FILENAME}: give the folder of a finished train.py run (one that wrote metrics.json) or its {FILENAME}."
        )
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: give a run folder or its {FILENAME}.")
    return path


def save_artifact(
    path: Path, scorer, gan_arch: dict, calibration: Calibration | dict, preprocess: dict, precision: str, provenance: dict
) -> Path:
    """Write the scorer file (module docstring) atomically and return its path. ``calibration``:
    the run's ``Calibration`` (or its ``state()``)."""
    cls = type(scorer)
    if not isinstance(calibration, Calibration):
        calibration = Calibration.from_state(calibration)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "scorer": {"target": f"{cls.__module__}.{cls.__qualname__}", "hparams": dict(scorer.hparams)},
        "gan_arch": dict(gan_arch),
        "state_dict": {k: v.detach().cpu() for k, v in scorer.state_dict().items()},
        "calibration": calibration.state(),
        "preprocess": dict(preprocess),
        "precision": str(precision),
        "provenance": {**provenance, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"could not write {path}: {err.strerror or err}") from None
    return path


def read_artifact(path: str | Path) -> dict:
    """The raw contents of a scorer file (a run folder is accepted too)."""
    path = resolve_path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(f"{path} is not a readable anogan scorer file ({type(err).__name__}: {err}).") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an anogan scorer file (no '{FORMAT}' format tag).")
    if payload.get("version", 0) > VERSION:
        raise ArtifactError(f"{path} was written by a newer anogan (format version {payload['version']}): upgrade anogan.")
    return payload


def gan_from_artifact(payload: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D (eval mode) rebuilt from a scorer file's contents."""
    generator, discriminator = build_networks(payload["gan_arch"])
    state = payload["state_dict"]
    generator.load_state_dict({k[len("generator.") :]: v for k, v in state.items() if k.startswith("generator.")})
    discriminator.load_state_dict({k[len("discriminator.") :]: v for k, v in state.items() if k.startswith("discriminator.")})
    return generator.eval(), discriminator.eval()


def load_artifact(path: str | Path):
    """``(scorer, payload)``: the scorer rebuilt with its weights (eval mode) and the file's contents
    (``payload["calibration"]``, ``["preprocess"]``, ``["precision"]``, ``["provenance"]``)."""
    payload = read_artifact(path)
    target = payload["scorer"]["target"]
    module_name, _, class_name = target.rpartition(".")
    if not module_name.startswith("anogan.scorers"):
        raise ArtifactError(f"{path}: unknown scorer class {target!r}.")
    cls = getattr(importlib.import_module(module_name), class_name)
    generator, discriminator = gan_from_artifact(payload)
    scorer = cls(generator, discriminator, **payload["scorer"]["hparams"])
    scorer.load_state_dict(payload["state_dict"])
    return scorer.eval(), payload
