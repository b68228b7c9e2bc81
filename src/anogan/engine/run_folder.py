"""The run folder guard: one folder holds one run.

Before anything is written, :func:`check_run_folder` looks at the output folder (Hydra's
``hydra.run.dir``, or a sweep job's folder). Hydra itself has already written ``.hydra/`` and the
job log (``train.log``) there, so those never count as "a run". The folder is refused, with one
message naming the three choices (resume with ``ckpt_path=last``, a new folder with
``hydra.run.dir=...``, or ``overwrite=true``), when it holds

* a **different run**: its ``config_resolved.yaml`` differs from this run's configuration in a key
  other than :data:`RESUME_IRRELEVANT_KEYS`;
* a **finished run** (``metrics.json``) and ``ckpt_path`` is not ``last``;
* an **unfinished run** with results (checkpoints, a trained GAN, samples, ...) and ``ckpt_path``
  is not ``last`` (starting again would overwrite its checkpoint);
* project files but no ``config_resolved.yaml`` to compare with.

With ``overwrite=true`` the old run's files are removed first: only :data:`PROJECT_OUTPUTS`, the
names the project writes; anything else in the folder (your notes, Hydra's ``.hydra/`` and log)
is left alone.

:func:`removed_if_unused` removes a run folder that a failed run leaves with nothing useful in it
(only ``.hydra/``, the log and the run's own config/manifest files), provided the folder held
nothing but ``.hydra/`` and logs when the run started (i.e. Hydra created it for this run).
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from anogan.utils.errors import RunFolderError, UserError

log = logging.getLogger(__name__)

# Every file or folder the project writes into a run folder (the only things overwrite=true removes).
PROJECT_OUTPUTS = (
    "gan",
    "checkpoints",
    "samples",
    "figures",
    "tensorboard",
    "encoder",
    "scoring",
    "scorer.pt",
    "predictions",
    "export",
    "csv",
    "scores.csv",
    "metrics.json",
    "splits.json",
    "config_resolved.yaml",
    "run_info.json",
)
# Written before any work is done: their presence alone does not make a folder "a run with results".
SETUP_OUTPUTS = ("config_resolved.yaml", "run_info.json", "splits.json")
# Keys that may differ between a run and its resumption (where data lives, how much is printed,
# how long to train); any other difference makes it a different run.
RESUME_IRRELEVANT_KEYS = (
    "ckpt_path",
    "overwrite",
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.root",
    "data.download",
    "data.verify_checksums",
    "data.num_workers",
    "paths.data_dir",
    "paths.log_dir",
    "paths.gan_cache_dir",
    "paths.output_dir",
    "gan.cache",
    "trainer.default_root_dir",
    "logger.save_dir",  # the run folder itself (a moved folder still resumes)
)
HYDRA_FILES = (".hydra",)


def _is_hydra_file(path: Path) -> bool:
    return path.name in HYDRA_FILES or (path.is_file() and path.suffix == ".log")


def is_fresh(run_dir: Path) -> bool:
    """True when ``run_dir`` holds nothing but what Hydra writes on start (``.hydra/``, ``*.log``)."""
    return run_dir.is_dir() and all(_is_hydra_file(p) for p in run_dir.iterdir())


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key that differs, except :data:`RESUME_IRRELEVANT_KEYS`."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith("hydra."))
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}" for k in keys if k not in RESUME_IRRELEVANT_KEYS]


def _choices(run_dir: Path) -> str:
    return (
        "Choose: resume it with ckpt_path=last (same config; trainer.max_epochs may grow), "
        "write to a new folder (hydra.run.dir=<new folder>; for -m sweeps hydra.sweep.dir=...), "
        f"or replace it with overwrite=true (removes only the project's files in {run_dir})."
    )


def clear_run(run_dir: Path) -> list[str]:
    """Remove the project's files (:data:`PROJECT_OUTPUTS`) from ``run_dir``; returns their names.

    Raises:
        RunFolderError: a file could not be removed (read-only folder, ...).
    """
    removed = []
    for name in PROJECT_OUTPUTS:
        path = run_dir / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
        except OSError as err:
            raise RunFolderError(
                f"overwrite=true could not remove {path} ({err.strerror}). Fix: remove it by hand or use a new folder (hydra.run.dir=...)."
            ) from None
        removed.append(name)
    return removed


def check_run_folder(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse ``run_dir`` if it holds a different, a finished or an unfinished run (see module
    doc), or clear it first when ``overwrite=true``.

    Raises:
        RunFolderError: the folder is refused; the message names resume / new folder / overwrite.
    """
    present = [name for name in PROJECT_OUTPUTS if (run_dir / name).exists()]
    if not present:
        return
    if cfg.get("overwrite", False):
        log.warning("overwrite=true: removed %s from %s", ", ".join(clear_run(run_dir)), run_dir)
        return
    resume = cfg.get("ckpt_path") == "last"
    saved = run_dir / "config_resolved.yaml"
    if not saved.is_file():
        raise RunFolderError(
            f"the run folder {run_dir} already holds {', '.join(present)} but no config_resolved.yaml to compare with. {_choices(run_dir)}"
        )
    try:
        # a mapping's YAML gives a dict (to_container's declared type also allows lists and scalars)
        old = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(saved), resolve=False))
    except Exception as err:  # a damaged file: treat as a different run
        raise RunFolderError(
            f"the run folder {run_dir} holds an unreadable config_resolved.yaml ({type(err).__name__}). {_choices(run_dir)}"
        ) from None
    new = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    diff = config_differences(old, new)
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise RunFolderError(f"the run folder {run_dir} holds a different run ({shown}). {_choices(run_dir)}")
    if resume:
        return
    if "metrics.json" in present:
        raise RunFolderError(f"the run folder {run_dir} holds a finished run (metrics.json). {_choices(run_dir)}")
    results = [name for name in present if name not in SETUP_OUTPUTS]
    if results:
        raise RunFolderError(
            f"the run folder {run_dir} holds an unfinished run ({', '.join(results)}); starting again would overwrite it. {_choices(run_dir)}"
        )


@contextmanager
def removed_if_unused(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """On an exception inside the block, remove ``run_dir`` if it held only Hydra's files when
    the block started and holds nothing useful now (``.hydra/``, ``*.log`` and
    :data:`SETUP_OUTPUTS` only). The exception is re-raised either way."""
    fresh = enabled and is_fresh(run_dir)
    try:
        yield
    except BaseException:
        if fresh and run_dir.is_dir() and all(_is_hydra_file(p) or p.name in SETUP_OUTPUTS for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


class OutputFolderCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): before Hydra creates the run or sweep folder and
    writes ``.hydra/`` into it, check that it can be created and written. Otherwise Hydra fails
    with its own traceback; here the user gets one line naming the key, and exit code 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._probe(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._probe(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _probe(folder: str, key: str) -> None:
        from anogan.config.checks import probe_writable

        path = Path(str(folder)).expanduser().absolute()
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise RunFolderError(
                    f"{key}={folder}: {existing} is a file, not a folder. Fix: choose another folder ({key}=...)."
                )
            probe_writable(existing, key)  # a writable ancestor: Hydra can create the rest
        except UserError as err:
            sys.stderr.write(f"Error: {err}\n")
            raise SystemExit(2) from None
