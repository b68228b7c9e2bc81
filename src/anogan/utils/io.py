"""Crash-safe file writing: every file is written whole or not at all.

Each writer puts the new content into a temporary file in the *same folder* as the target
(``.<name>.<random>.tmp``), flushes and fsyncs it, then renames it over the target with
``os.replace`` (atomic on one filesystem). A reader, or a run killed at any moment, sees either
the previous file or the new one, never half a file. On an ``OSError`` (disk full, read-only
folder, ...) the temporary file is removed, the previous version is left intact, and a
:class:`WriteError` with one line saying what happened is raised.

A run killed with SIGKILL in the middle of a write can leave a ``.<name>.*.tmp`` file next to
the target: it is never read and may be deleted.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from anogan.utils.errors import WriteError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def describe_os_error(err: OSError, path: str | Path, doing: str = "writing") -> str:
    """One line naming what went wrong with ``path``: "disk full writing X", "X is read-only", ..."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f"disk full {doing} {path}"
        fix = "free some space or write the run elsewhere (hydra.run.dir=..., paths.gan_cache_dir=...)"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = f"{path} is read-only ({err.strerror})"
        fix = "choose a writable folder (hydra.run.dir=..., paths.log_dir=..., paths.gan_cache_dir=...)"
    else:
        what = f"{doing} {path} failed ({err.strerror or err})"
        fix = "check that the folder exists and is writable"
    return f"{what}; the previous version, if any, is kept. Fix: {fix}."


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some filesystems refuse to open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it


def _temp_file_next_to(path: Path) -> tuple[int, str]:
    """A new temporary file ``.<name>.<random>.tmp`` in ``path``'s folder, open (fd, name), with the
    permissions a plain ``open(path, "w")`` would give (0o666 minus the umask; mkstemp's are 0o600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    Any other exception of ``write`` propagates unchanged (the temporary file is removed).

    Raises:
        WriteError: an ``OSError`` while creating, writing or renaming (the target is untouched).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (``.<name>.<random>.tmp``) for a library that writes to a
    path itself (``torch.onnx.export``, ...): write the file there inside the ``with`` block; on a
    normal exit it is fsynced and renamed to ``path``, on an exception removed (``path`` untouched).

    Any other exception of the block propagates unchanged.

    Raises:
        WriteError: an ``OSError`` while creating, writing or renaming (the target is untouched).
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = _temp_file_next_to(path)
        os.close(fd)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise WriteError(describe_os_error(err, path)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically. Raises: WriteError (disk full, read-only, ...)."""

    def write(handle: io.BufferedWriter) -> None:
        handle.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. Raises: WriteError (disk full, read-only, ...)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically. Raises: WriteError (disk full, read-only, ...)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_savefig(fig: Figure, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig(path, **kwargs)`` (matplotlib), atomically; the format comes from the suffix
    unless ``format=`` is given. Raises: WriteError (disk full, read-only, ...)."""
    kwargs.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    return atomic_write(path, lambda handle: fig.savefig(handle, **kwargs))


def atomic_save_image(tensor: torch.Tensor, path: str | Path, **kwargs: Any) -> Path:
    """``torchvision.utils.save_image(tensor, path, **kwargs)``, atomically.
    Raises: WriteError (disk full, read-only, ...)."""
    from torchvision.utils import save_image

    buffer = io.BytesIO()
    save_image(tensor, buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    return atomic_write_bytes(path, buffer.getvalue())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written through :func:`atomic_torch_save`.

    Lightning's default ``TorchCheckpointIO`` writes through fsspec, which stages the file in the
    system temporary folder and moves it: across filesystems that move is a copy, and a kill or a
    full disk during it leaves ``last.ckpt`` truncated. Here the temporary file lives next to the
    target, so the previous checkpoint stays loadable until the new one is complete.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        """Raises: WriteError (disk full, read-only, ...); TypeError if ``storage_options`` is given."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise WriteError(describe_os_error(err, path.parent, "creating")) from None
        atomic_torch_save(checkpoint, path)
