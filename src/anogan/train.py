"""The one command: train (or reuse) the GAN, score every evaluation image, report.

    python train.py experiment=cifar_car_cpu data.root=../shared/data/cifar10 data.verify_checksums=false

Stage 1 fits the GAN LightningModule on normal images (skipped when ``gan.checkpoint``,
``gan.generator``/``gan.discriminator`` or a cache entry provides one). Stage 2 runs the
LatentMapping LightningModule over validation + test, fits the threshold on validation only and
writes scores.csv, metrics.json, figures and TensorBoard dashboards into the run folder.
Returns the test metric named by ``optimized_metric`` (for Hydra sweepers).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from anogan import gan_store
from anogan.callbacks import SampleGrid
from anogan.config_check import check_config
from anogan.errors import UserError
from anogan.models.gan import GAN
from anogan.models.latent_mapping import LatentMapping
from anogan.report import write_report
from anogan.run_info import write_run_info
from anogan.sweep import run_name

log = logging.getLogger("anogan")
OmegaConf.register_new_resolver("run_name", run_name, replace=True)  # sweep job folder names
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _is_rank_zero() -> bool:
    """Global rank 0, also before any Trainer exists. Lightning's guess then comes from RANK,
    LOCAL_RANK or SLURM_PROCID; a process started by hand on another node has only NODE_RANK."""
    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _arch(cfg: DictConfig) -> dict:
    return {k: cfg.model[k] for k in gan_store.ARCH_KEYS}


def fit_gan(cfg: DictConfig, datamodule, logger, run_dir: Path, extra: dict | None = None) -> Path:
    """Stage 1: fit the GAN and save G/D as plain state dicts in ``run_dir/gan``."""
    model: GAN = instantiate(cfg.model, _convert_="all")
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False, **cfg.callbacks.checkpoint
    )  # one rolling checkpoints/last.ckpt, rewritten atomically by Lightning (temp file + move)
    callbacks = [checkpoints, SampleGrid(str(run_dir / "samples"), **cfg.callbacks.sample_grid)]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
        log.info("resuming from %s" if ckpt_path else "ckpt_path=last but %s does not exist: starting from scratch", last)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    folder = run_dir / "gan"
    if trainer.is_global_zero:
        # the EMA generator when model.ema_decay is set; the selected epoch's weights when model.selection is on
        selection = model.selection_summary()
        extra = {**(extra or {}), **({"selection": selection} if selection else {})}
        gan_store.save_gan(model.scoring_generator, model.discriminator, _arch(cfg), folder, extra)
    trainer.strategy.barrier()
    return folder


def given_gan(cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module, str] | None:
    """G and D the user handed in (weights or a checkpoint), loaded before any data so that a
    wrong file or a mismatched architecture fails in seconds."""
    arch = _arch(cfg)
    if cfg.gan.generator:
        g, d = gan_store.load_weights(cfg.gan.generator, cfg.gan.discriminator, arch)
        return g, d, f"weights {cfg.gan.generator}"
    if cfg.gan.checkpoint:
        g, d = gan_store.load_checkpoint(cfg.gan.checkpoint, arch)
        return g, d, f"checkpoint {cfg.gan.checkpoint}"
    return None


def obtain_gan(cfg: DictConfig, datamodule, logger, run_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """G and D from the cache (same data, model, training settings and seed), or trained now."""
    if not cfg.gan.cache:
        g, d, _ = gan_store.load_gan_folder(fit_gan(cfg, datamodule, logger, run_dir))
        return g, d, "trained"
    key, spec = gan_store.cache_key(cfg)
    cache_dir = Path(cfg.paths.gan_cache_dir)
    zero = _is_rank_zero()
    # DDP: only rank 0 locks and publishes. The other ranks must not wait for the lock: rank 0
    # holds it while it trains, and its training needs them. Under the lock the entry cannot
    # appear, so they make the same reuse-or-train choice as rank 0.
    with gan_store.cache_lock(cache_dir, key) if zero else nullcontext():
        entry = cache_dir / key
        if (entry / "gan.json").is_file():
            log.info("reusing the cached GAN %s (same data, model, training settings and seed)", entry)
            g, d, _ = gan_store.load_gan_folder(entry)
            if zero:
                (run_dir / "gan_source.txt").write_text(f"reused {entry.resolve()}\n")
            return g, d, f"cache {key}"
        folder = fit_gan(cfg, datamodule, logger, run_dir, extra={"cache_key": key, "spec": spec})
        if zero:
            gan_store.publish(folder, cache_dir, key)
            log.info("trained a new GAN, cached as %s", cache_dir / key)
    g, d, _ = gan_store.load_gan_folder(folder)
    return g, d, "trained"


def score(cfg: DictConfig, generator, discriminator, datamodule, logger) -> dict[str, torch.Tensor]:
    """Stage 2: score validation + test in one Lightning test loop, with the latent search
    (``mapping.method=latent``) or an encoder fitted first on the training images (``encoder``)."""
    if cfg.mapping.method == "encoder":
        from anogan.models.encoder import fit_encoder

        mapping = fit_encoder(cfg, generator, discriminator, datamodule, logger or False)
    else:
        mapping = LatentMapping(
            generator,
            discriminator,
            alpha=cfg.mapping.alpha,
            iterations=cfg.mapping.iterations,
            lr=cfg.mapping.lr,
            betas=tuple(cfg.mapping.betas),
            seed=cfg.seed,
        )
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, inference_mode=False
    )
    trainer.test(mapping, dataloaders=datamodule.eval_dataloader(cfg.mapping.batch_size), verbose=False)
    return mapping.results


def log_hparams(cfg: DictConfig, metrics: dict, logger) -> None:
    """TensorBoard's HPARAMS tab: the same keys in every run, with the real test metrics."""
    hparams = {
        "alpha": cfg.mapping.alpha,
        "iterations": cfg.mapping.iterations,
        "mapping_lr": cfg.mapping.lr,
        "latent_dim": cfg.model.latent_dim,
        "gan_lr": cfg.model.lr,
        "g_steps": cfg.model.g_steps,
        "epochs": cfg.trainer.max_epochs,
        "image_size": cfg.data.image_size,
        "normal_class": str(cfg.data.get("normal_class", "folder")),
        "protocol": cfg.data.get("protocol", "folder"),
        "method": cfg.mapping.method,
        "correction": cfg.mapping.correction,
        "precision": str(cfg.trainer.precision),
        "seed": cfg.seed,
    }
    logger.log_hyperparams(
        hparams,
        metrics={
            "hparams/test_auroc": metrics["test"]["auroc"],
            "hparams/test_ap": metrics["test"]["ap"],
            "hparams/test_f1": metrics["test"]["f1"],
            "hparams/val_auroc": metrics["val"]["auroc"],
        },
    )
    logger.finalize("success")


def run(cfg: DictConfig) -> float:
    check_config(cfg)
    run_start = time.perf_counter()
    given = given_gan(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():  # DDP processes > 0 re-run this script with extra overrides
        write_run_info(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    if _is_rank_zero():
        datamodule.write_manifest(run_dir)
    logger = instantiate(cfg.logger)

    start = time.perf_counter()
    generator, discriminator, source = given or obtain_gan(cfg, datamodule, logger, run_dir)
    train_s = time.perf_counter() - start
    log.info("GAN from %s (%.1f s)", source, train_s)

    start = time.perf_counter()
    results = score(cfg, generator, discriminator, datamodule, logger)
    score_s = time.perf_counter() - start
    if rank_zero_only.rank != 0:  # every rank holds the gathered scores; rank zero reports
        return float("nan")

    writer = logger.experiment if logger else None
    metrics = write_report(results, datamodule, generator, run_dir, writer, correction=cfg.mapping.correction)
    metrics["gan_source"] = source
    metrics["wall_time_s"] = {"gan": round(train_s, 1), "scoring": round(score_s, 1), "total": round(time.perf_counter() - run_start, 1)}
    metrics["images_scored"] = len(results["score"])
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if logger:
        log_hparams(cfg, metrics, logger)
    value = metrics["test"][cfg.optimized_metric.split("/")[-1]]
    log.info("%s = %.4f  (run folder: %s)", cfg.optimized_metric, value, run_dir)
    return float(value)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except UserError as err:
        log.error("%s", err)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
