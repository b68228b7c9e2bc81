"""The Python API: score images with a finished run, and train a run, from Python (a notebook).

    import anogan

    detector = anogan.load("outputs/runs/<run>")       # a run folder or its scorer.pt
    result = detector.predict("photos/")                 # a path, a folder, a list, PIL, numpy, tensors
    result.to_pandas()                                   # or result.to_records(): one dict per image

    run = anogan.fit(["experiment=cifar_car_cpu", "data.root=../shared/data/cifar10"])
    run.run_dir, run.metrics["test"]["auroc"]

``load`` builds a ``Detector`` (``anogan.deploy.detector``) from a run's scorer file alone
(``anogan.engine.artifact``); the steps that score an image (reading, preprocessing, inference,
calibration) are documented there. ``fit`` runs the pipeline (``anogan.engine.pipeline.run``, what
``anogan train`` runs) in this process on the real config (``compose``) and returns a
``TrainResult``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anogan.deploy.detector import Detector, Predictions
from anogan.engine.artifact import resolve_path
from anogan.engine.result import RunResult
from anogan.utils.errors import ConfigError, InputError

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["ConfigError", "Detector", "InputError", "Predictions", "TrainResult", "compose", "fit", "load"]


def load(path: str | Path, device: str = "auto", batch_size: int | None = None) -> Detector:
    """The detector of a finished run: ``path`` is its run folder or its ``scorer.pt`` (copied
    anywhere; nothing else is read). ``device``: ``auto`` | ``cpu`` | ``cuda``; ``batch_size``:
    images scored together (scores do not depend on it, up to float rounding). Raises ``ArtifactError`` for a missing or
    unreadable scorer file, ``InputError`` for a bad ``device`` or ``batch_size``."""
    return Detector(resolve_path(path), device=device, batch_size=batch_size)


# ---------------------------------------------------------------------- training
TrainResult = RunResult  # what anogan.fit returns: run_dir, metrics, metric, objective, scorer_file


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The project's real Hydra config (``conf/``, as ``anogan-train`` composes it) with
    ``overrides``, including the ``hydra`` node. Raises ``ConfigError`` (Hydra's reason, one line)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from anogan.config.paths import conf_dir
    from anogan.config.schema import explain_composition_error  # also registers the config schemas

    if GlobalHydra.instance().is_initialized():
        raise ConfigError("anogan.fit cannot run inside another Hydra application (Hydra is already initialised)")
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(explain_composition_error(err, list(overrides))) from None


def fit(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> TrainResult:
    """Train and evaluate one run in this process, as ``anogan-train <overrides>`` would: the real
    config (``conf/``) composed with ``overrides`` (e.g. ``["experiment=cifar_car_cpu",
    "data.root=../shared/data/cifar10"]``). ``run_dir``: the run folder (default: Hydra's
    ``hydra.run.dir``, ``outputs/runs/<time>``). Returns a ``TrainResult``. Raises ``ConfigError``
    for overrides Hydra cannot compose and the pipeline's ``UserError``s (one line each); a run that
    fails before writing anything leaves no folder behind."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from omegaconf import open_dict

    from anogan.engine.pipeline import run
    from anogan.engine.run_folder import removed_if_unused
    from anogan.utils.errors import user_error_in

    overrides = list(overrides)
    if run_dir is not None:
        overrides.append(f"hydra.run.dir={Path(run_dir).expanduser().resolve()}")
    cfg = compose(overrides)
    folder = Path(cfg.hydra.run.dir).expanduser().resolve()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(folder)
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.output_dir} (paths.output_dir) resolves to the run folder
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        with removed_if_unused(folder):
            try:
                result = run(cfg)
            except InstantiationException as err:  # a setting refused by the target Hydra builds: its own error
                if (cause := user_error_in(err)) is None:
                    raise
                raise cause from None
    finally:
        HydraConfig.instance().cfg = previous
    if result is None:  # plan=true: nothing trained
        raise ConfigError("anogan.fit trains a run; plan=true only prints the plan: drop it, or run anogan train plan=true")
    return result
