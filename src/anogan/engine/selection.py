"""Checkpoint choice without test labels: keep the GAN of the epoch with the best validation criterion.

Every ``every_n_epochs`` epochs (and after the last one), ``CheckpointSelection`` scores a small,
fixed, stratified subset of the data module's **validation** rows (``eval_set`` rows whose
``eval_split`` is ``"val"``; test rows are never read) with a short AnoGAN latent search: ``steps``
Adam steps (lr ``lr``) on z, residual only (alpha 0), per-image L1 residual Σ|x − G(z)| (Schlegl et
al. 2017, eq. of R(x)), each image starting from the z the scorer would give it (``seed``). The G is
``GAN.scoring_generator`` (the EMA copy when ``model.ema_decay`` is set). The criterion (higher is
better):

* validation holds normal and anomalous images: the validation AUROC of the residual or of the
  residual per unit of input complexity (``anogan.post_processing.scores``), whichever is higher — the choice
  ``mapping.correction=auto`` makes afterwards on the full validation split;
* validation holds normal images only: minus the mean residual of those held-out normals.

The G, D (and EMA G) weights of the best epoch are kept in memory (and in the Lightning checkpoint,
so a resumed run keeps them); when fitting ends they are loaded back into the GAN, so what the run
saves as its GAN is the chosen epoch's. ``best_epoch``, ``best_criterion`` and ``history`` (one
entry per evaluated epoch) stay on the callback (``summary()``) and go to the loggers as
``selection/*``.

The pipeline (``anogan.engine.stages.fit_gan``) attaches the callback to the GAN's trainer when
``model.selection.every_n_epochs`` is set: it reads the data module and runs the latent search, so it
lives above ``models/`` (which imports nothing from ``data/`` or ``scorers/``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch

from anogan.data.splits import after_setup, stratified_subset
from anogan.metrics.image import ranking_metrics
from anogan.post_processing.scores import complexity, corrected_score
from anogan.scorers.latent import LatentMapping, initial_latents
from anogan.utils.errors import UserError

if TYPE_CHECKING:
    from anogan.data.splits import AnomalyDataModule
    from anogan.models.gan import GAN

CHUNK = 256  # images per search batch (bounds memory; the search is exact per image, see anogan.scorers.latent)


def checkpoint_selection(settings: Mapping | None) -> CheckpointSelection | None:
    """The callback for ``model.selection`` (``every_n_epochs``, ``images``, ``steps``, ``lr``,
    ``seed``; checked by ``anogan.config.gan_options.check_gan_options``), or None when it is off."""
    if not settings or settings["every_n_epochs"] is None:
        return None
    return CheckpointSelection(**settings)


class CheckpointSelection(L.Callback):
    """Keep the G/D of the epoch with the highest validation-only criterion (module docstring).

    Args: every_n_epochs (evaluate after epochs N, 2N, ... and the last), images (size of the
    stratified validation subset; all validation rows if fewer), steps and lr (the latent search),
    seed (the subset and the starting z). Raises ``UserError`` when the data module has no
    validation rows.
    """

    def __init__(self, every_n_epochs: int, images: int = 256, steps: int = 30, lr: float = 0.01, seed: int = 0):
        self.every_n_epochs = every_n_epochs
        self.images = images
        self.steps = steps
        self.lr = lr
        self.seed = seed
        self.best_epoch: int | None = None
        self.best_criterion: float | None = None
        self.history: list[dict] = []
        self._best_state: dict | None = None

    # --- the criterion ---------------------------------------------------------------------------
    def validation_rows(self, datamodule: AnomalyDataModule) -> np.ndarray:
        """Positions in ``datamodule.eval_set`` of the fixed stratified validation subset (sorted)."""
        split = getattr(datamodule, "eval_split", None)
        val = np.flatnonzero(np.asarray(split) == "val") if split is not None else np.arange(0)
        if len(val) == 0:
            raise UserError(
                "model.selection.every_n_epochs is set but the GAN is fitted without validation rows (a data module with eval_split 'val'): "
                "set it to null, or give validation images."
            )
        classes = after_setup(datamodule.eval_set, "eval_set").classes[torch.as_tensor(val)].numpy()
        return val[stratified_subset(classes, self.images, self.seed)]

    def evaluate(self, pl_module: GAN, datamodule: AnomalyDataModule) -> dict[str, Any]:
        """The criterion of the current weights: ``{"criterion", "kind", ...}`` (module docstring)."""
        rows = self.validation_rows(datamodule)
        eval_set = after_setup(datamodule.eval_set, "eval_set")
        items = [eval_set[int(i)] for i in rows]  # only validation rows are read
        images = torch.stack([it["image"] for it in items])
        labels = torch.stack([torch.as_tensor(it["label"]) for it in items])
        keys = torch.tensor([it["key"] for it in items], dtype=torch.long)
        scorer = LatentMapping(
            copy.deepcopy(pl_module.scoring_generator).float(),
            copy.deepcopy(pl_module.discriminator).float(),
            alpha=0.0,
            iterations=self.steps,
            lr=self.lr,
            seed=self.seed,
            maps=False,
        )
        device = pl_module.device
        scorer.to(device)
        z0 = initial_latents(keys, pl_module.hparams.latent_dim, self.seed)
        residual = torch.cat(
            [
                scorer.search(images[i : i + CHUNK].to(device), z0[i : i + CHUNK].to(device))["residual"].cpu()
                for i in range(0, len(rows), CHUNK)
            ]
        )
        n_anom = int(labels.sum())
        if 0 < n_anom < len(labels):
            # complexity() takes uint8 pixel values: the eval images are uint8 / 127.5 - 1
            pixels = torch.round((images + 1.0) * 127.5)
            auroc_raw = ranking_metrics(residual, labels, "the selection subset")["auroc"]
            auroc_cor = ranking_metrics(corrected_score(residual, complexity(pixels)), labels, "the selection subset")["auroc"]
            return {
                "criterion": max(auroc_raw, auroc_cor),
                "kind": "val_auroc",
                "auroc_raw": auroc_raw,
                "auroc_complexity": auroc_cor,
                "images": len(rows),
            }
        mean = float(residual[labels == 0].mean())
        return {"criterion": -mean, "kind": "minus_mean_residual_val_normals", "mean_residual": mean, "images": len(rows)}

    # --- Lightning hooks -------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs and not trainer.should_stop:
            return  # trainer.should_stop: the last epoch of a run ended by trainer.max_steps / max_time
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector, not declared on Trainer
        result = {"epoch": epoch, **self.evaluate(cast("GAN", pl_module), datamodule)}
        self.history.append(result)
        for logger in trainer.loggers:
            logger.log_metrics({f"selection/{k}": v for k, v in result.items() if isinstance(v, float)}, step=epoch)
        if self.best_criterion is None or result["criterion"] > self.best_criterion:
            self.best_epoch, self.best_criterion = epoch, result["criterion"]
            self._best_state = {k: v.detach().cpu().clone() for k, v in _nets_state(pl_module).items()}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._best_state is None:
            return
        current = _nets_state(pl_module)
        state = {k: v.to(device=current[k].device) for k, v in self._best_state.items()}
        pl_module.load_state_dict(state, strict=False)
        for logger in trainer.loggers:
            logger.log_metrics({"selection/best_epoch": float(cast(int, self.best_epoch))}, step=trainer.current_epoch)

    def summary(self) -> dict:
        """What to report: best epoch (0-based), its criterion and every evaluated epoch's values."""
        return {"best_epoch": self.best_epoch, "best_criterion": self.best_criterion, "history": list(self.history)}

    def state_dict(self) -> dict:
        return {**self.summary(), "best_state": self._best_state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_epoch, self.best_criterion = state_dict["best_epoch"], state_dict["best_criterion"]
        self.history, self._best_state = list(state_dict["history"]), state_dict["best_state"]


def _nets_state(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The module's state entries of G, D and the EMA G (not optimiser or sample buffers)."""
    prefixes = ("generator.", "discriminator.", "generator_ema.")
    return {k: v for k, v in pl_module.state_dict().items() if k.startswith(prefixes)}
