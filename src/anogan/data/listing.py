"""Which files of a folder are candidate images (``list_images``): the one listing used by training,
evaluation and ``predict.py``.

Every regular file under a folder (recursively, symlinked folders followed once) is a candidate;
whether it is an image is decided by opening it with Pillow, not by its extension (a PNG named
``.dat`` is read; ``.PNG`` and ``.png`` are the same). Not candidates:

* hidden files and folders (name starting with ``.``, e.g. ``.DS_Store``): ignored silently;
* text and metadata files by extension (``NOT_IMAGE_SUFFIXES``: ``.txt``, ``.json``, ``.csv``, ...):
  skipped with reason "not an image";
* broken symlinks, looping symlinks, files that cannot be stat'ed: skipped with the reason;
* a second path to a file already listed (a symlink or hard link to it, a folder reached twice):
  skipped as a duplicate; the real path is preferred over the symlink.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from pathlib import Path

# Files skipped by name: text and metadata that often sit beside images. Everything else is opened.
NOT_IMAGE_SUFFIXES = frozenset(
    {
        ".txt",
        ".json",
        ".jsonl",
        ".csv",
        ".tsv",
        ".md",
        ".rst",
        ".yaml",
        ".yml",
        ".xml",
        ".html",
        ".htm",
        ".log",
        ".ini",
        ".cfg",
        ".toml",
        ".py",
        ".ipynb",
        ".sh",
        ".pdf",
        ".zip",
        ".gz",
        ".tar",
        ".npy",
        ".npz",
        ".pt",
        ".pth",
        ".ckpt",
        ".pkl",
    }
)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _stat_problem(path: Path, err: OSError) -> str:
    if path.is_symlink():
        if err.errno == errno.ELOOP:
            return "looping symlink (it points back to itself)"
        return f"broken symlink (its target {os.readlink(path)} does not exist)"
    return f"cannot be read ({err.strerror or err})"


def list_images(folder: str | Path, seen: dict | None = None) -> tuple[list[Path], list[dict]]:
    """Candidate image files under ``folder`` (recursively) and the entries skipped while listing.

    Returns ``(files, skipped)``: ``files`` sorted paths (each file once), ``skipped`` a list of
    ``{"file": str, "reason": str}`` for broken/looping symlinks, duplicates (the same file reached by
    a second path: symlink, hard link, folder linked twice) and files named like text/metadata
    (``NOT_IMAGE_SUFFIXES``). Hidden entries (``.name``) are ignored silently. Whether a candidate is
    a readable image is decided later by ``read_image``.

    ``seen`` (optional, updated in place) maps a file's identity to the path it was listed under:
    pass the same dict for several folders to count a file shared between them once.
    """
    folder = Path(folder)
    seen = {} if seen is None else seen
    skipped: list[dict] = []
    candidates: list[tuple[Path, os.stat_result]] = []
    visited: set[tuple[int, int]] = set()
    real_dirs, linked_dirs = deque([folder]), deque[Path]()  # real folders first: their paths are preferred
    while real_dirs or linked_dirs:
        current = real_dirs.popleft() if real_dirs else linked_dirs.popleft()
        try:
            key = _identity(current.stat())
        except OSError as err:
            skipped.append({"file": str(current), "reason": _stat_problem(current, err)})
            continue
        if key in visited:
            skipped.append({"file": str(current), "reason": "duplicate (a folder already searched under another path)"})
            continue
        visited.add(key)
        try:
            entries = sorted(current.iterdir())
        except OSError as err:
            skipped.append({"file": str(current), "reason": f"folder cannot be listed ({err.strerror or err})"})
            continue
        for path in entries:
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()  # follows symlinks
            except OSError as err:
                skipped.append({"file": str(path), "reason": _stat_problem(path, err)})
                continue
            if stat.S_ISDIR(st.st_mode):
                (linked_dirs if path.is_symlink() else real_dirs).append(path)
            elif not stat.S_ISREG(st.st_mode):
                skipped.append({"file": str(path), "reason": "not a regular file"})
            elif path.suffix.lower() in NOT_IMAGE_SUFFIXES:
                skipped.append({"file": str(path), "reason": f"not an image ({path.suffix} file)"})
            else:
                candidates.append((path, st))
    files = []
    for path, st in sorted(candidates, key=lambda c: (c[0].is_symlink(), str(c[0]))):
        key = _identity(st)
        if key in seen:
            skipped.append({"file": str(path), "reason": f"duplicate (the same file as {seen[key]})"})
        else:
            seen[key] = path
            files.append(path)
    return sorted(files), skipped


def relative_name(folder: Path, path: Path) -> str:
    """``path`` as a manifest names it: relative to ``folder`` when inside it, else as given."""
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
