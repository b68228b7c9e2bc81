"""The stages of a run (``anogan.engine.pipeline.run``), each one call: the GAN (given, cached or
trained now), the scorer (fitted and run over the evaluation images), its calibration on the
validation rows and the scorer file.

Stage 1 fits the GAN LightningModule on normal images (skipped when ``gan.checkpoint``,
``gan.generator``/``gan.discriminator`` or a cache entry provides one). Stage 2 builds the scorer
of ``conf/mapping``, trains its encoder where it has one and scores validation + test through the
one inference path (``anogan.engine.inference.run_scorer``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from anogan.data.splits import AnomalyDataModule, after_setup
from anogan.engine import gan_cache, gan_store
from anogan.engine.artifact import FILENAME as ARTIFACT
from anogan.engine.artifact import load_gan_checkpoint, save_artifact
from anogan.engine.bookkeeping import is_rank_zero
from anogan.engine.callbacks import GANIterationLimit
from anogan.engine.inference import run_scorer
from anogan.engine.selection import checkpoint_selection
from anogan.models.dcgan import Discriminator, Generator
from anogan.models.gan import GAN
from anogan.post_processing.calibration import Calibration
from anogan.post_processing.scores import complexity
from anogan.scorers import Scorer
from anogan.utils.io import AtomicCheckpointIO
from anogan.utils.progress import progress_callbacks

log = logging.getLogger("anogan")

# The limits of GAN training alone (fit_gan): not passed to the encoder's training nor to scoring.
GAN_ONLY_TRAINER_KEYS = ("max_steps", "max_time")


def arch(cfg: DictConfig) -> dict:
    """The configured GAN architecture (``gan_store.ARCH_KEYS`` of ``cfg.model``)."""
    return {k: cfg.model[k] for k in gan_store.ARCH_KEYS}


def instantiate_list(group: DictConfig | None) -> list:
    """Every entry of a config group that has a ``_target_`` (the lightning-hydra-template pattern):
    callbacks and loggers are added or removed in ``conf/`` without touching code."""
    if not group:
        return []
    if "_target_" in group:
        return [instantiate(group)]
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``conf/trainer`` as keyword arguments of ``lightning.Trainer``, less the GAN-only limits
    (``fit_gan`` applies them: ``max_steps`` in GAN iterations, ``max_time`` as wall time)."""
    kwargs = cast(dict[str, Any], OmegaConf.to_container(cfg.trainer, resolve=True))  # a config group is a mapping
    for key in ("_target_", *GAN_ONLY_TRAINER_KEYS):
        kwargs.pop(key, None)
    return kwargs


@dataclass(frozen=True)
class LoadedGAN:
    """G and D for scoring, where they came from (``source``: ``trained``, ``cache <key>``,
    ``weights <path>``, ``checkpoint <path>``) and, for a trained or cached GAN, its ``gan.json``
    (``meta``; None for a given one)."""

    generator: Generator
    discriminator: Discriminator
    source: str
    meta: dict | None = None

    def health(self) -> dict:
        """The health check of the GAN's training (``models/health.py``), as saved in its gan.json;
        ``{"ok": None, ...}`` where it is unknown (a given GAN, or one trained before the check existed)."""
        if self.meta is None:
            return {"ok": None, "warning": None, "why": f"not checked: the GAN was given ({self.source})"}
        why = "not checked: the GAN was trained before the health check existed"
        return self.meta.get("health") or {"ok": None, "warning": None, "why": why}

    def selection(self) -> dict | None:
        """The epoch chosen on validation (``model.selection``) of a GAN trained in this run; else None."""
        return self.meta.get("selection") if self.source == "trained" and self.meta else None


def fit_gan(
    cfg: DictConfig, datamodule: AnomalyDataModule, loggers: list[Logger], run_dir: Path, extra: dict | None = None
) -> tuple[Path, dict]:
    """Stage 1: fit the GAN and save G/D as plain state dicts in ``run_dir/gan``. Returns the folder
    and what its gan.json holds (global rank zero writes it; the other ranks get ``{}``)."""
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
    folder, meta = run_dir / "gan", {}
    if trainer.is_global_zero:
        # the EMA generator when model.ema_decay is set; the selected epoch's weights when model.selection is on
        extra = {**(extra or {}), **({"selection": selection.summary()} if selection else {}), "health": model.health_summary()}
        gan_store.save_gan(model.scoring_generator, model.discriminator, arch(cfg), folder, extra)
        meta = {**arch(cfg), **extra}  # gan.json
    trainer.strategy.barrier()
    return folder, meta


def given_gan(cfg: DictConfig) -> LoadedGAN | None:
    """G and D the user handed in (weights or a checkpoint), loaded before any data so that a
    wrong file or a mismatched architecture fails in seconds."""
    if cfg.gan.generator:
        g, d = gan_store.load_weights(cfg.gan.generator, cfg.gan.discriminator, arch(cfg))
        return LoadedGAN(g, d, f"weights {cfg.gan.generator}")
    if cfg.gan.checkpoint:
        g, d = load_gan_checkpoint(cfg.gan.checkpoint, arch(cfg))  # a scorer file (checked), GAN folder or .ckpt
        return LoadedGAN(g, d, f"checkpoint {cfg.gan.checkpoint}")
    return None


def _trained(cfg: DictConfig, folder: Path, meta: dict) -> LoadedGAN:
    """The GAN ``fit_gan`` saved in ``folder`` (its weights, read back as scoring reads them; ``meta``: its gan.json)."""
    g, d = gan_store.load_weights(folder / "generator.pt", folder / "discriminator.pt", arch(cfg))
    return LoadedGAN(g, d, "trained", meta)


def obtain_gan(cfg: DictConfig, datamodule: AnomalyDataModule, loggers: list[Logger], run_dir: Path) -> LoadedGAN:
    """G and D from the cache (same data, model, training settings and seed), or trained now."""
    if not cfg.gan.cache:
        return _trained(cfg, *fit_gan(cfg, datamodule, loggers, run_dir))
    key, spec = gan_cache.cache_key(cfg)
    cache_dir = Path(cfg.paths.gan_cache_dir)
    zero = is_rank_zero()  # DDP: only rank 0 locks and publishes (gan_cache.cached)

    def load() -> tuple[Generator, Discriminator, dict] | None:  # a damaged entry: moved aside (by rank 0), None
        return gan_cache.load_cache_entry(cache_dir / key, key, arch(cfg), move_damaged=zero)

    def build() -> tuple[Path, dict]:
        return fit_gan(cfg, datamodule, loggers, run_dir, extra={"cache_key": key, "spec": spec})

    def publish(built: object) -> None:  # what build() returned (object: mypy joins load's and build's types here)
        if gan_cache.publish(cast("tuple[Path, dict]", built)[0], cache_dir, key):
            log.info("trained a new GAN, cached as %s", cache_dir / key)

    found, hit = gan_cache.cached(key, load, build, publish, lock_dir=cache_dir, owner=zero)
    if hit:
        log.info("reusing the cached GAN %s (same data, model, training settings, seed, code and world size)", cache_dir / key)
        g, d, meta = cast("tuple[Generator, Discriminator, dict]", found)
        return LoadedGAN(g, d, f"cache {key}", meta)
    return _trained(cfg, *cast("tuple[Path, dict]", found))


def fit_scorer(cfg: DictConfig, scorer: Scorer, datamodule: AnomalyDataModule, kwargs: dict[str, Any]) -> None:
    """Train the scorer's encoder on the normal training images, or load it from the cache
    (``<gan_cache_dir>/encoders``, with ``gan.cache``; key: ``gan_cache.encoder_cache_key``).
    DDP: as for the GAN, only rank 0 locks and publishes; every rank makes the same choice."""
    if not cfg.gan.cache or not hasattr(scorer, "encoder"):  # no encoder (a D-feature memory bank): built each run
        scorer.fit(datamodule.train_dataloader(), kwargs)
        return
    key = gan_cache.encoder_cache_key(cfg, scorer)
    path = Path(cfg.paths.gan_cache_dir) / "encoders" / f"{key}.pt"
    encoder = cast(torch.nn.Module, scorer.encoder)  # scorers with needs_fit train an encoder

    def load() -> torch.nn.Module | None:
        return encoder if gan_cache.load_encoder(path, key, encoder) else None

    def build() -> torch.nn.Module:
        scorer.fit(datamodule.train_dataloader(), kwargs)
        return encoder

    def publish(trained: torch.nn.Module) -> None:
        gan_cache.publish_encoder(trained, path, key)
        log.info("trained the encoder, cached as %s", path)

    if gan_cache.cached(key, load, build, publish, lock_dir=path.parent, owner=is_rank_zero())[1]:
        log.info("reusing the cached encoder %s (same GAN weights, training images and encoder settings)", path)


def score(
    cfg: DictConfig, gan: LoadedGAN, datamodule: AnomalyDataModule, loggers: list[Logger], run_dir: Path
) -> tuple[Scorer, dict]:
    """Stage 2: build the scorer of ``conf/mapping`` (``_target_``) on ``gan``'s G and D, fit it if it
    has a training phase (the encoder, on the normal training images), and score validation + test
    through the one inference path (``anogan.engine.inference.run_scorer``), resumable from
    ``<run>/scoring``. Every rank returns the scores of every image."""
    scorer: Scorer = instantiate(
        cfg.mapping, generator=gan.generator, discriminator=gan.discriminator, seed=cfg.seed, _convert_="all"
    )
    kwargs = trainer_kwargs(cfg)
    if scorer.needs_fit:
        fit_scorer(cfg, scorer, datamodule, {**kwargs, "logger": loggers or False, "callbacks": []})
    eval_set = after_setup(datamodule.eval_set, "eval_set")
    results = run_scorer(scorer, eval_set, kwargs, cache_dir=run_dir / "scoring", what="evaluation images")
    return scorer, results


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
    """The run's one self-contained scorer file (``anogan.engine.artifact``); returns its path."""
    preprocess = {
        "image_size": int(cfg.data.image_size),
        "channels": int(cfg.data.channels),
        "resize": cfg.data.get("resize", "stretch"),
        "alpha": cfg.data.get("alpha", "black"),  # data=cifar10 reads no file: predict.py flattens on black
        "downscale": "area",  # anogan.data.images.to_model_input; scorer files without it: bilinear
    }
    provenance = {"run_dir": str(run_dir.resolve()), "gan_source": source, "seed": int(cfg.seed)}
    return save_artifact(run_dir / ARTIFACT, scorer, arch(cfg), calibration, preprocess, str(cfg.trainer.precision), provenance)
