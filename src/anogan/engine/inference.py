"""The one inference path: a scorer's ``predict_step`` under ``Trainer.predict``.

The run's stage 2 and ``predict.py`` both call ``run_scorer``: Lightning picks devices and
precision and, with several processes, splits the images without repeats (its unrepeated sampler
for prediction); the rows of every process are gathered and sorted here. ``inference_mode=False``
because the latent search needs gradients with respect to z.

Resumable: with ``cache_dir``, every finished batch is written there atomically as it completes;
a later call with the same scorer and images scores only the rows that are missing, and returns
exactly what an uninterrupted call would (each image's result never depends on its batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, Dataset, Subset

from anogan.utils.console import quiet_lightning
from anogan.utils.io import atomic_torch_save, atomic_write_text
from anogan.utils.progress import progress_callbacks

if TYPE_CHECKING:
    from anogan.scorers.base import Scorer

log = logging.getLogger(__name__)


class ScoringProgressBar(TQDMProgressBar):
    """The prediction bar says what it does ("Scoring 3000 images: latent search, 200 steps")."""

    def __init__(self, description: str):
        super().__init__()
        self._description = description

    @property
    def predict_description(self) -> str:
        return self._description

    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self.predict_progress_bar.set_description(self._description)  # not "... DataLoader 0"


class _BatchCache(L.Callback):
    """Writes each finished batch's outputs to ``folder/part-r<rank>-<first row>.pt`` atomically."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        path = self.folder / f"part-r{trainer.global_rank}-{int(outputs['row'][0]):08d}.pt"
        atomic_torch_save(outputs, path)


def fingerprint(scorer: Scorer, dataset: Dataset) -> str:
    """A hash of the scorer's weights and settings and of the images: cached batches are reused
    only for the same scorer on the same images."""
    h = hashlib.sha256(json.dumps(dict(scorer.hparams), sort_keys=True, default=str).encode())
    for name, tensor in sorted(scorer.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    images = getattr(dataset, "images", None)
    h.update(images.contiguous().numpy().tobytes() if images is not None else str(len(cast(Sized, dataset))).encode())
    return h.hexdigest()[:32]


def _load_cache(folder: Path, key: str) -> list[dict]:
    """The cached batches of ``folder`` if its fingerprint is ``key`` (else the folder is cleared).

    Under DDP (a process group already set up, as after the GAN's fit) only global rank 0 clears
    and stamps the folder, then every rank reads the same parts after a barrier: two ranks
    clearing or stamping one folder at once raced (CI, stop 21)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        stamp = folder / "fingerprint.txt"
        if stamp.is_file() and stamp.read_text().strip() != key:
            log.info("scoring cache %s belongs to another scorer or image set: starting afresh", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            atomic_write_text(stamp, key + "\n")
    if distributed:
        torch.distributed.barrier()
    parts = []
    for path in sorted(folder.glob("part-*.pt")):
        try:
            parts.append(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # a part cut short by a kill before its rename cannot exist; be safe anyway
            log.warning("ignoring unreadable scoring cache part %s", path)
    return parts


def _merge(parts: list[dict]) -> dict[str, torch.Tensor]:
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = torch.argsort(merged["row"], stable=True)
    merged = {k: v[order] for k, v in merged.items()}
    keep = torch.ones(len(order), dtype=torch.bool)
    keep[1:] = merged["row"][1:] != merged["row"][:-1]
    return {k: v[keep] for k, v in merged.items()}


def run_scorer(
    scorer: Scorer,
    dataset: Dataset,
    trainer_kwargs: dict,
    cache_dir: Path | None = None,
    what: str = "images",
    callbacks: list | None = None,
) -> dict[str, torch.Tensor]:
    """Score every item of ``dataset`` (dicts with ``image``, ``key``, ``row``) with
    ``scorer.predict_step``; return the outputs of all rows (``row`` 0..len-1, sorted), gathered
    across processes. ``trainer_kwargs``: Trainer arguments (accelerator, devices, precision, ...);
    ``callbacks``: extra Lightning callbacks for the prediction loop."""
    n_rows = len(cast(Sized, dataset))  # a map-style dataset: one row per image
    done: list[dict] = []
    if cache_dir is not None:
        done = _load_cache(Path(cache_dir), fingerprint(scorer, dataset))
    done_rows = set(torch.cat([p["row"] for p in done]).tolist()) if done else set()
    todo = [i for i in range(n_rows) if i not in done_rows]
    if done_rows:
        log.info("resuming scoring: %d of %d %s already scored in %s", len(done_rows), n_rows, what, cache_dir)
    new: list[dict] = []
    if todo:
        phase = f"Scoring {len(todo)} {what} ({scorer.summary()})"
        bar = progress_callbacks(phase, trainer_kwargs.get("enable_progress_bar", True), ScoringProgressBar(phase))
        callbacks = [*(callbacks or []), *bar]
        if cache_dir is not None:
            callbacks.insert(0, _BatchCache(Path(cache_dir)))
        kwargs = {
            k: v for k, v in trainer_kwargs.items() if k not in ("callbacks", "logger", "enable_checkpointing", "inference_mode")
        }
        with quiet_lightning():
            trainer = L.Trainer(**kwargs, logger=False, callbacks=callbacks, enable_checkpointing=False, inference_mode=False)
        subset = dataset if len(todo) == n_rows else Subset(dataset, todo)
        loader = DataLoader(subset, batch_size=int(scorer.hparams.batch_size), shuffle=False)
        new = cast(list[dict], trainer.predict(scorer, dataloaders=loader, return_predictions=True) or [])  # one dict per batch
        if trainer.world_size > 1:
            gathered: list[list[dict] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, new)
            new = [p for rank in gathered for p in rank or []]
    results = _merge(done + new)
    if len(results["row"]) != n_rows:
        raise RuntimeError(f"scoring returned {len(results['row'])} rows for {n_rows} {what}: some were lost")
    return results
