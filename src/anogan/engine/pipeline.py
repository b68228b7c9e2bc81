"""The pipeline of one run: data → GAN → scorer → calibration → report (``run``).

    anogan train experiment=cifar_car_cpu data.root=../shared/data/cifar10 data.verify_checksums=false

``run`` checks the config, opens the run folder, sets up the data, obtains the GAN (given, cached
or trained: ``anogan.engine.stages``), fits and runs the scorer over validation + test, fits the
calibration on validation only and writes scorer.pt, scores.csv, figures, TensorBoard dashboards
and, last, metrics.json into the run folder. It returns a ``RunResult`` (the Python API's
``anogan.fit`` and the command line's Hydra entry point, ``anogan.cli.train``, use it: the latter
returns its ``objective`` to Hydra's sweepers).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, cast

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from anogan.config.checks import check_config, check_run_environment, group_choices
from anogan.data.splits import AnomalyDataModule
from anogan.engine import estimate
from anogan.engine.artifact import FILENAME as ARTIFACT
from anogan.engine.bookkeeping import PhaseClock, is_rank_zero, rank_zero_step
from anogan.engine.hardware import resolve_precision, warn_if_slow_bf16
from anogan.engine.result import RunResult
from anogan.engine.run_folder import check_run_folder
from anogan.engine.run_info import write_run_info
from anogan.engine.stages import (
    LoadedGAN,
    fit_calibration,
    given_gan,
    instantiate_list,
    obtain_gan,
    save_scorer,
    score,
    trainer_kwargs,
)
from anogan.reporting.dashboard import add_dashboard_layout
from anogan.reporting.report import write_report
from anogan.reporting.sweep import parse_optimized_metric, run_name, set_job_threads
from anogan.utils.io import atomic_write_text

log = logging.getLogger("anogan")
OmegaConf.register_new_resolver("run_name", run_name, replace=True)  # sweep job folder names


def run(cfg: DictConfig) -> RunResult | None:
    """One run of ``cfg`` (composed by Hydra, ``hydra`` node removed). Returns its ``RunResult``; None
    where this process has no result: ``plan=true`` (nothing is trained) and DDP ranks other than zero.

    Raises ``anogan.utils.errors.UserError`` (one line naming the key or file and the fix) for bad
    input, before any data loads where the config alone shows it."""
    split, name = prepare(cfg)  # optimized_metric: checked before any data loads
    given = given_gan(cfg)  # a wrong file or architecture fails before any data loads
    run_dir = Path(cfg.paths.output_dir)
    if cfg.plan:  # splits, steps and estimated time of each phase; nothing trained or written
        estimate.show_plan(cfg, trainer_kwargs(cfg), run_dir, given=given is not None)
        return None
    clock = PhaseClock()
    run_dir.mkdir(parents=True, exist_ok=True)
    open_run_folder(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = setup_data(cfg)
    announce(cfg, datamodule, run_dir, given)
    loggers = instantiate_list(cfg.logger)
    writer = tensorboard_writer(loggers)

    with clock.phase("gan"):
        gan = given or obtain_gan(cfg, datamodule, loggers, run_dir)
    log.info("GAN from %s (%.1f s)", gan.source, clock.seconds["gan"])
    with clock.phase("scoring"):
        scorer, results = score(cfg, gan, datamodule, loggers, run_dir)
    if not is_rank_zero():  # every rank holds the gathered scores; rank zero reports
        return None

    # scores -> calibration (validation only) -> scorer.pt -> report -> metrics.json, written once and
    # last: it marks the run finished, so a kill at any point before leaves an unfinished run
    calibration = fit_calibration(cfg, scorer, results, datamodule)
    scorer_file = save_scorer(cfg, scorer, calibration, run_dir, gan.source)
    metrics = write_report(results, datamodule, scorer, calibration, run_dir, writer)  # scores.csv, figures
    metrics.update(gan_metrics(gan, writer))
    metrics.update(scorer_file=ARTIFACT, wall_time_s=clock.wall_time_s(), cpu_time_s=clock.cpu_time_s())
    metrics.update(images_scored=len(results["score"]))
    metrics = write_metrics(run_dir, metrics)
    log_hparams(cfg, metrics, loggers)
    value = metrics[split].get(name)
    result = RunResult(run_dir, metrics, cfg.optimized_metric, float("nan" if value is None else value), scorer_file)
    log.info("%s = %.4f  (run folder: %s)", result.metric, result.objective, run_dir)
    return result


def prepare(cfg: DictConfig) -> tuple[str, str]:
    """Check the config and settle the process's settings (threads, precision) before anything
    loads. Returns ``optimized_metric`` as ``(split, metric)`` (a config error here, not after training)."""
    check_config(cfg)
    objective = parse_optimized_metric(cfg.optimized_metric, cfg.allow_test_objective)
    set_job_threads(cfg)  # threads: null | auto | N (launcher presets)
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)  # auto: bf16-mixed or 32-true
    rank_zero_step(warn_if_slow_bf16)(cfg.trainer.precision, cfg.trainer.accelerator)
    return objective


@rank_zero_step
def open_run_folder(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse another or a finished run in ``run_dir`` (or clear it: ``overwrite=true``); check
    that the folders are writable and the checkpoint to resume from loadable; write run_info.json
    and config_resolved.yaml. DDP processes > 0 skip it."""
    check_run_folder(cfg, run_dir)
    check_run_environment(cfg, run_dir)
    write_run_info(cfg, run_dir)


def setup_data(cfg: DictConfig) -> AnomalyDataModule:
    """The data module of ``conf/data``, prepared (downloaded, checked) and split."""
    datamodule: AnomalyDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@rank_zero_step
def announce(cfg: DictConfig, datamodule: AnomalyDataModule, run_dir: Path, given: LoadedGAN | None) -> None:
    """Write the split manifest (splits.json), warn when the training set is too small for the
    configured training (naming the preset for small folders) and log the estimate of each phase."""
    datamodule.write_manifest(run_dir)
    steps_warning = getattr(datamodule, "steps_warning", lambda *limits: None)
    warning = steps_warning(cfg.trainer.max_epochs, cfg.trainer.max_steps, cfg.trainer.limit_train_batches)
    if warning and not given:
        if (group_choices(cfg) or {}).get("experiment") not in ("folder_small", "small_textures"):
            warning += " For a small folder, start from experiment=folder_small."
        log.warning("%s", warning)
    networks = (given.generator, given.discriminator) if given else None
    estimate.log_estimate(cfg, datamodule, trainer_kwargs(cfg), given=given is not None, networks=networks)  # one line per phase


@rank_zero_step
def tensorboard_writer(loggers: list[Logger]) -> SummaryWriter | None:
    """The TensorBoard logger's writer, its dashboard layout added; None without one (and on DDP ranks > 0)."""
    tensorboard = next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
    if tensorboard is None:
        return None
    add_dashboard_layout(tensorboard.experiment)
    return tensorboard.experiment


def gan_metrics(gan: LoadedGAN, writer: SummaryWriter | None) -> dict[str, Any]:
    """metrics.json's GAN entries: ``gan_source``, ``gan_health`` (mode collapse, D overpowering G:
    logged as one warning line, and as TensorBoard text) and, where chosen, ``gan_selection``."""
    health = gan.health()
    if health["warning"]:
        log.warning("%s", health["warning"])
    if writer is not None:
        writer.add_text("gan/health", health["warning"] or health.get("why") or "ok")
    selection = gan.selection()  # the epoch chosen on validation (model.selection)
    return {"gan_source": gan.source, "gan_health": health, **({"gan_selection": selection} if selection is not None else {})}


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write metrics.json (it marks the run finished) and remove the resumable scoring folder
    (scores.csv and scorer.pt hold it all now). Returns the metrics as the file holds them."""
    text = json.dumps(metrics, indent=1)
    atomic_write_text(run_dir / "metrics.json", text)
    shutil.rmtree(run_dir / "scoring", ignore_errors=True)
    return cast(dict[str, Any], json.loads(text))


def log_hparams(cfg: DictConfig, metrics: dict, loggers: list[Logger]) -> None:
    """TensorBoard's HPARAMS tab: the scorer's own settings and the shared ones, with real metrics
    (``hparams/<val|test>_<auroc|ap|f1>``, NaN where the run has none) and the *resolved* correction."""
    mapping = cast(dict[str, Any], OmegaConf.to_container(cfg.mapping, resolve=True))  # a config group is a mapping
    scorer_keys = {f"mapping/{k}": v for k, v in mapping.items() if k != "_target_"}
    hparams = {
        "scorer": cfg.mapping._target_.rsplit(".", 1)[-1],
        **{k: (str(v) if isinstance(v, (list, dict)) or v is None else v) for k, v in scorer_keys.items()},
        "correction": metrics.get("correction", cfg.mapping.correction),
        "latent_dim": cfg.model.latent_dim,
        "gan_lr": cfg.model.lr,
        "g_steps": cfg.model.g_steps,
        "epochs": cfg.trainer.max_epochs,
        "image_size": cfg.data.image_size,
        "normal_class": str(cfg.data.get("normal_class", "folder")),
        "protocol": cfg.data.get("protocol", "folder"),
        "precision": str(cfg.trainer.precision),
        "seed": cfg.seed,
    }
    # every run logs the same metric names (NaN where a run has no value), so that the HPARAMS table
    # of a sweep (tensorboard --logdir <sweep folder>) lists every job in the same columns
    values = {f"hparams/{split}_{m}": metrics[split].get(m) for split in ("val", "test") for m in ("auroc", "ap", "f1")}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics={k: float("nan") if v is None else float(v) for k, v in values.items()})
            logger.finalize("success")
