"""What a run needs to be reproduced: resolved config, versions, git commit, command line."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from anogan.utils.io import atomic_write_text

LIBRARIES = ("anogan", "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "torchmetrics", "tensorboard", "numpy")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_run_info(cfg: DictConfig, folder: Path) -> None:
    """Write ``config_resolved.yaml`` and ``run_info.json`` into ``folder`` (each atomically).

    Raises:
        anogan.utils.errors.WriteError: the folder is read-only or the disk is full.
    """
    atomic_write_text(folder / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "command": sys.argv,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in LIBRARIES},
    }
    atomic_write_text(folder / "run_info.json", json.dumps(info, indent=1))
