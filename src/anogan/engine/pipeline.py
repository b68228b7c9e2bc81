"""The one command: train (or reuse) the GAN, score every evaluation image, report.

    python train.py experiment=cifar_car_cpu data.root=../shared/data/cifar10 data.verify_checksums=false

Stage 1 fits the GAN LightningModule on normal images (skipped when ``gan.checkpoint``,
``gan.generator``/``gan.discriminator`` or a cache entry provides one). Stage 2 runs the
LatentMapping LightningModule over validation + test, fits the threshold on validation only and
writes scores.csv, metrics.json, figures and TensorBoard dashboards into the run folder.
Returns the metric named by ``optimized_metric`` (default val/auroc: select on validation) for Hydra sweepers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anogan import conf_dir
from anogan.config.checks import check_config, check_run_environment, group_choices
from anogan.config.schema import explain_composition_error
from anogan.data.splits import AnomalyDataModule, after_setup
from anogan.engine import estimate, gan_store
from anogan.engine.artifact import FILENAME as ARTIFACT
from anogan.engine.artifact import load_gan_checkpoint, save_artifact
from anogan.engine.callbacks import GANIterationLimit
from anogan.engine.hardware import resolve_precision, warn_if_slow_bf16
from anogan.engine.inference import run_scorer
from anogan.engine.run_folder import check_run_folder, removed_if_unused
from anogan.engine.run_info import write_run_info
from anogan.engine.selection import checkpoint_selection
from anogan.models.dcgan import Discriminator, Generator
from anogan.models.gan import GAN
from anogan.post_processing.calibration import Calibration
from anogan.post_processing.scores import complexity
from anogan.reporting.dashboard import add_dashboard_layout
from anogan.reporting.report import write_report
from anogan.reporting.sweep import parse_optimized_metric, run_name, set_job_threads
from anogan.scorers import Scorer
from anogan.utils.errors import UserError, user_error_in
from anogan.utils.io import AtomicCheckpointIO, atomic_write_text
from anogan.utils.progress import progress_callbacks

log = logging.getLogger("anogan")
OmegaConf.register_new_resolver("run_name", run_name, replace=True)  # sweep job folder names
CONF_DIR = conf_dir()


def _rank_zero_only_rank() -> int:
    """Lightning's global rank guess (an attribute it sets on ``rank_zero_only``, undeclared for type checkers)."""
    return int(getattr(rank_zero_only, "rank", 0))


def _is_rank_zero() -> bool:
    """Global rank 0, also before any Trainer exists. Lightning's guess then comes from RANK,
    LOCAL_RANK or SLURM_PROCID; a process started by hand on another node has only NODE_RANK."""
    return _rank_zero_only_rank() == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _arch(cfg: DictConfig) -> dict:
    return {k: cfg.model[k] for k in gan_store.ARCH_KEYS}


def instantiate_list(group: DictConfig | None) -> list:
    """Every entry of a config group that has a ``_target_`` (the lightning-hydra-template pattern):
    callbacks and loggers are added or removed in ``conf/`` without touching code."""
    if not group:
        return []
    if "_target_" in group:
        return [instantiate(group)]
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


# The limits of GAN training alone (fit_gan): not passed to the encoder's training nor to scoring.
GAN_ONLY_TRAINER_KEYS = ("max_steps", "max_time")


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``conf/trainer`` as keyword arguments of ``lightning.Trainer``, less the GAN-only limits
    (``fit_gan`` applies them: ``max_steps`` in GAN iterations, ``max_time`` as wall time)."""
    kwargs = cast(dict[str, Any], OmegaConf.to_container(cfg.trainer, resolve=True))  # a config group is a mapping
    for key in ("_target_", *GAN_ONLY_TRAINER_KEYS):
        kwargs.pop(key, None)
    return kwargs


def fit_gan(
    cfg: DictConfig, datamodule: AnomalyDataModule, loggers: list[Logger], run_dir: Path, extra: dict | None = None
) -> Path:
    """Stage 1: fit the GAN and save G/D as plain state dicts in ``run_dir/gan``."""
    model: GAN = instantiate(cfg.model, _convert_="all")
    # conf/callbacks: checkpoints/last.ckpt, sample grids, random states for exact resume, ...
    callbacks = instantiate_list(cfg.callbacks) + progress_callbacks("GAN training", cfg.trainer.enable_progress_bar)
    if cfg.trainer.max_steps != -1:  # GAN iterations (batches), not Lightning's optimizer steps
        callbacks.append(GANIterationLimit(cfg.trainer.max_steps))
    selection = checkpoint_selection(cfg.model.get("selection"))  # model.selection: the epoch chosen on validation
    callbacks += [selection] if selection else []
    # AtomicCheckpointIO: last.ckpt is written beside itself and renamed, never left half-written
    trainer = L.Trainer(
        **trainer_kwargs(cfg),
        max_time=cfg.trainer.max_time,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
        log.info("resuming from %s" if ckpt_path else "ckpt_path=last but %s does not exist: starting from scratch", last)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    folder = run_dir / "gan"
    if trainer.is_global_zero:
        # the EMA generator when model.ema_decay is set; the selected epoch's weights when model.selection is on
        extra = {**(extra or {}), **({"selection": selection.summary()} if selection else {}), "health": model.health_summary()}
        gan_store.save_gan(model.scoring_generator, model.discriminator, _arch(cfg), folder, extra)
    trainer.strategy.barrier()
    return folder


def gan_health(cfg: DictConfig, run_dir: Path, source: str) -> dict:
    """The health check of the GAN's training (``models/health.py``), as saved in its ``gan.json``
    (trained in this run or in the cached run); ``{"ok": None, ...}`` where it is unknown."""
    if source == "trained":
        meta = run_dir / "gan" / "gan.json"
    elif source.startswith("cache "):
        meta = Path(cfg.paths.gan_cache_dir) / source.split(" ", 1)[1] / "gan.json"
    else:
        return {"ok": None, "warning": None, "why": f"not checked: the GAN was given ({source})"}
    health = json.loads(meta.read_text()).get("health") if meta.is_file() else None
    return health or {"ok": None, "warning": None, "why": "not checked: the GAN was trained before the health check existed"}


def given_gan(cfg: DictConfig) -> tuple[Generator, Discriminator, str] | None:
    """G and D the user handed in (weights or a checkpoint), loaded before any data so that a
    wrong file or a mismatched architecture fails in seconds."""
    arch = _arch(cfg)
    if cfg.gan.generator:
        g, d = gan_store.load_weights(cfg.gan.generator, cfg.gan.discriminator, arch)
        return g, d, f"weights {cfg.gan.generator}"
    if cfg.gan.checkpoint:
        g, d = load_gan_checkpoint(cfg.gan.checkpoint, arch)  # a scorer file (checked), GAN folder or .ckpt
        return g, d, f"checkpoint {cfg.gan.checkpoint}"
    return None


def obtain_gan(
    cfg: DictConfig, datamodule: AnomalyDataModule, logger: list[Logger], run_dir: Path
) -> tuple[Generator, Discriminator, str]:
    """G and D from the cache (same data, model, training settings and seed), or trained now."""
    if not cfg.gan.cache:
        g, d, _ = gan_store.load_gan_folder(fit_gan(cfg, datamodule, logger, run_dir))
        return g, d, "trained"
    key, spec = gan_store.cache_key(cfg)
    cache_dir = Path(cfg.paths.gan_cache_dir)
    zero = _is_rank_zero()  # DDP: only rank 0 locks and publishes (gan_store.cached)

    def load() -> tuple[torch.nn.Module, torch.nn.Module] | None:  # a damaged entry: moved aside (by rank 0), None
        return gan_store.load_cache_entry(cache_dir / key, key, _arch(cfg), move_damaged=zero)

    def build() -> Path:
        return fit_gan(cfg, datamodule, logger, run_dir, extra={"cache_key": key, "spec": spec})

    def publish(folder: object) -> None:  # the folder build() returned (object: mypy joins load's and build's types here)
        if gan_store.publish(cast(Path, folder), cache_dir, key):
            log.info("trained a new GAN, cached as %s", cache_dir / key)

    found, hit = gan_store.cached(key, load, build, publish, lock_dir=cache_dir, owner=zero)
    if hit:
        log.info("reusing the cached GAN %s (same data, model, training settings, seed, code and world size)", cache_dir / key)
        g, d = cast("tuple[Generator, Discriminator]", found)
        return g, d, f"cache {key}"
    g, d, _ = gan_store.load_gan_folder(cast(Path, found))
    return g, d, "trained"


def fit_scorer(cfg: DictConfig, scorer: Scorer, datamodule: AnomalyDataModule, kwargs: dict[str, Any]) -> None:
    """Train the scorer's encoder on the normal training images, or load it from the cache
    (``<gan_cache_dir>/encoders``, with ``gan.cache``; key: ``gan_store.encoder_cache_key``).
    DDP: as for the GAN, only rank 0 locks and publishes; every rank makes the same choice."""
    if not cfg.gan.cache or not hasattr(scorer, "encoder"):  # no encoder (a D-feature memory bank): built each run
        scorer.fit(datamodule.train_dataloader(), kwargs)
        return
    key = gan_store.encoder_cache_key(cfg, scorer)
    path = Path(cfg.paths.gan_cache_dir) / "encoders" / f"{key}.pt"
    encoder = cast(torch.nn.Module, scorer.encoder)  # scorers with needs_fit train an encoder

    def load() -> torch.nn.Module | None:
        return encoder if gan_store.load_encoder(path, key, encoder) else None

    def build() -> torch.nn.Module:
        scorer.fit(datamodule.train_dataloader(), kwargs)
        return encoder

    def publish(trained: torch.nn.Module) -> None:
        gan_store.publish_encoder(trained, path, key)
        log.info("trained the encoder, cached as %s", path)

    if gan_store.cached(key, load, build, publish, lock_dir=path.parent, owner=_is_rank_zero())[1]:
        log.info("reusing the cached encoder %s (same GAN weights, training images and encoder settings)", path)


def score(
    cfg: DictConfig,
    generator: Generator,
    discriminator: Discriminator,
    datamodule: AnomalyDataModule,
    loggers: list[Logger],
    run_dir: Path,
) -> tuple[Scorer, dict]:
    """Stage 2: build the scorer of ``conf/mapping`` (``_target_``), fit it if it has a training phase
    (the encoder, on the normal training images), and score validation + test through the one
    inference path (``anogan.engine.inference.run_scorer``), resumable from ``<run>/scoring``."""
    scorer: Scorer = instantiate(cfg.mapping, generator=generator, discriminator=discriminator, seed=cfg.seed, _convert_="all")
    kwargs = trainer_kwargs(cfg)
    if scorer.needs_fit:
        fit_scorer(cfg, scorer, datamodule, {**kwargs, "logger": loggers or False, "callbacks": []})
    eval_set = after_setup(datamodule.eval_set, "eval_set")
    results = run_scorer(scorer, eval_set, kwargs, cache_dir=run_dir / "scoring", what="evaluation images")
    return scorer, results


def log_hparams(cfg: DictConfig, metrics: dict, logger: TensorBoardLogger) -> None:
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
    logger.log_hyperparams(hparams, metrics={k: float("nan") if v is None else float(v) for k, v in values.items()})
    logger.finalize("success")


def fit_calibration(
    cfg: DictConfig, scorer: Scorer, results: dict[str, torch.Tensor], datamodule: AnomalyDataModule
) -> Calibration:
    """The run's calibration (``anogan.post_processing.calibration``), fitted on the validation rows only: the
    correction (``mapping.correction``), every threshold rule (``threshold.*``), the validation
    normals' scores for p-values and, when the scorer names ``combine``, the components' scaling.
    An unreachable ``threshold.target_fpr`` is logged as a warning naming the fix."""
    val = torch.from_numpy(after_setup(datamodule.eval_split, "eval_split") == "val")
    dataset = after_setup(datamodule.eval_set, "eval_set")
    components = {k: v[val] for k, v in results.items() if k not in ("row", "map", "z") and len(v) == len(val)}
    calibration = Calibration.fit(
        components,
        complexity(dataset.images[val]),
        dataset.labels[val],
        correction=scorer.hparams.correction,
        rule=cfg.threshold.rule,
        target_fpr=float(cfg.threshold.target_fpr),
        combine=scorer.hparams.get("combine"),
    )
    for warning in calibration.warnings:
        log.warning("%s", warning)
    return calibration


def save_scorer(cfg: DictConfig, scorer: Scorer, calibration: Calibration, run_dir: Path, source: str) -> Path:
    """The run's one self-contained scorer file (``anogan.engine.artifact``)."""
    preprocess = {
        "image_size": int(cfg.data.image_size),
        "channels": int(cfg.data.channels),
        "resize": cfg.data.get("resize", "stretch"),
        "alpha": cfg.data.get("alpha", "black"),  # data=cifar10 reads no file: predict.py flattens on black
        "downscale": "area",  # anogan.data.images.to_model_input; scorer files without it: bilinear
    }
    provenance = {"run_dir": str(run_dir.resolve()), "gan_source": source, "seed": int(cfg.seed)}
    return save_artifact(run_dir / ARTIFACT, scorer, _arch(cfg), calibration, preprocess, str(cfg.trainer.precision), provenance)


def run(cfg: DictConfig) -> float:
    check_config(cfg)
    split, metric = parse_optimized_metric(cfg.optimized_metric, cfg.allow_test_objective)  # a config error before any data loads
    set_job_threads(cfg)  # threads: null | auto | N (launcher presets)
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)  # auto: bf16-mixed or 32-true
    if _is_rank_zero():
        warn_if_slow_bf16(cfg.trainer.precision, cfg.trainer.accelerator)
    run_start = time.perf_counter()
    given = given_gan(cfg)
    run_dir = Path(cfg.paths.output_dir)
    if cfg.plan:  # splits, steps and estimated time of each phase; nothing trained or written
        estimate.show_plan(cfg, trainer_kwargs(cfg), run_dir, given=given is not None)
        return float("nan")
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():  # DDP processes > 0 re-run this script with extra overrides
        check_run_folder(cfg, run_dir)  # another or a finished run there: refused (or cleared: overwrite=true)
        check_run_environment(cfg, run_dir)  # writable folders, a loadable checkpoint to resume from
        write_run_info(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: AnomalyDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    if _is_rank_zero():
        datamodule.write_manifest(run_dir)
        steps_warning = getattr(datamodule, "steps_warning", lambda *limits: None)
        warning = steps_warning(cfg.trainer.max_epochs, cfg.trainer.max_steps, cfg.trainer.limit_train_batches)
        if warning and not given:
            if (group_choices(cfg) or {}).get("experiment") not in ("folder_small", "small_textures"):
                warning += " For a small folder, start from experiment=folder_small."
            log.warning("%s", warning)
        networks = (given[0], given[1]) if given else None
        estimate.log_estimate(
            cfg, datamodule, trainer_kwargs(cfg), given=given is not None, networks=networks
        )  # one line per phase
    loggers = instantiate_list(cfg.logger)
    tensorboard = next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
    if tensorboard is not None and _is_rank_zero():
        add_dashboard_layout(tensorboard.experiment)

    start = time.perf_counter()
    generator, discriminator, source = given or obtain_gan(cfg, datamodule, loggers, run_dir)
    train_s = time.perf_counter() - start
    log.info("GAN from %s (%.1f s)", source, train_s)

    start = time.perf_counter()
    scorer, results = score(cfg, generator, discriminator, datamodule, loggers, run_dir)
    score_s = time.perf_counter() - start
    if _rank_zero_only_rank() != 0:  # every rank holds the gathered scores; rank zero reports
        return float("nan")

    # scores -> calibration (validation only) -> scorer.pt -> report -> metrics.json, written once and
    # last: it marks the run finished, so a kill at any point before leaves an unfinished run
    calibration = fit_calibration(cfg, scorer, results, datamodule)
    save_scorer(cfg, scorer, calibration, run_dir, source)
    writer = tensorboard.experiment if tensorboard is not None else None
    metrics = write_report(results, datamodule, scorer, calibration, run_dir, writer)
    metrics["gan_source"] = source
    metrics["gan_health"] = gan_health(cfg, run_dir, source)  # mode collapse, D overpowering G: one warning line
    if metrics["gan_health"]["warning"]:
        log.warning("%s", metrics["gan_health"]["warning"])
    if writer is not None:
        writer.add_text("gan/health", metrics["gan_health"]["warning"] or metrics["gan_health"].get("why") or "ok")
    gan_meta = run_dir / "gan" / "gan.json"
    if source == "trained" and gan_meta.is_file() and "selection" in (meta := json.loads(gan_meta.read_text())):
        metrics["gan_selection"] = meta["selection"]  # the epoch chosen on validation (model.selection)
    metrics["scorer_file"] = ARTIFACT
    metrics["wall_time_s"] = {
        "gan": round(train_s, 1),
        "scoring": round(score_s, 1),
        "total": round(time.perf_counter() - run_start, 1),
    }
    metrics["images_scored"] = len(results["score"])
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=1))
    shutil.rmtree(run_dir / "scoring", ignore_errors=True)  # scores.csv and scorer.pt hold it all now
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            log_hparams(cfg, metrics, lg)
    value = metrics[split][metric] if metrics[split].get(metric) is not None else float("nan")
    log.info("%s = %.4f  (run folder: %s)", cfg.optimized_metric, value, run_dir)
    return float(value)


_job_started = False  # set once Hydra has composed the config and calls the job
_FULL_ERROR = "HYDRA_FULL_ERROR"
_user_full_error: str | None = None  # the user's own HYDRA_FULL_ERROR, restored when the job starts


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    global _job_started
    _job_started = True
    _restore_full_error()  # errors of the job itself are reported as Hydra reports them
    # a run that fails before producing anything leaves no empty run folder behind
    with removed_if_unused(Path(cfg.paths.output_dir), enabled=_is_rank_zero()):
        try:
            return run(cfg)
        except UserError as err:
            log.error("%s", err)
            raise SystemExit(2) from None
        except InstantiationException as err:  # a setting refused by the target Hydra builds: its own line
            if (cause := user_error_in(err)) is None:
                raise
            log.error("%s", cause)
            raise SystemExit(2) from None


def _restore_full_error() -> None:
    if _user_full_error is None:
        os.environ.pop(_FULL_ERROR, None)
    else:
        os.environ[_FULL_ERROR] = _user_full_error


def main() -> float | None:
    """The command line. A SIGTERM (a scheduler's stop, ``kill``) ends with exit code 143 and no
    ``metrics.json``, never 0. Input errors end with exit code 2 and one line: ours (see config_check) and
    Hydra's while it composes the config (a value of the wrong type, an unknown key, an override it
    cannot parse, an unknown config group option), which ``explain_composition_error`` rewrites;
    HYDRA_FULL_ERROR=1 set by the user keeps Hydra's own report."""
    global _user_full_error
    _user_full_error = os.environ.get(_FULL_ERROR)
    os.environ[_FULL_ERROR] = "1"  # Hydra raises composition errors instead of printing them
    try:
        return _hydra_main()
    except SIGTERMException:  # Lightning stops on SIGTERM with SystemExit() = exit code 0, as if it had finished
        log.error("stopped by SIGTERM: the run is not finished (no metrics.json); ckpt_path=last resumes its GAN training")
        raise SystemExit(128 + signal.SIGTERM) from None
    except SystemExit as stop:
        if stop.code == 1 and not _job_started:
            raise SystemExit(2) from None
        raise
    except (HydraException, OmegaConfBaseException) as err:  # composing the config (a job's own errors: re-raised)
        if _job_started or _user_full_error:
            raise
        print(f"Error: {explain_composition_error(err, sys.argv[1:])}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        _restore_full_error()


if __name__ == "__main__":
    main()
