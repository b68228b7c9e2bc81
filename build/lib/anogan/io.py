"""Atomic file writes: a temporary file in the destination's own folder, then ``os.replace``, so a
reader (or a resumed run) sees the old version or the new one, never half a file."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def _replace_into(path: Path, write) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _replace_into(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj, path: Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    return _replace_into(path, lambda tmp: torch.save(obj, tmp))


def atomic_savefig(fig, path: Path, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically (the format follows ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _replace_into(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
