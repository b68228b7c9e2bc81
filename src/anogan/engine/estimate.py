"""What a run will cost, said before it starts: a few timed steps of each phase on this machine.

The unit costs come from ``anogan.engine.probe`` (a few batches of each phase on random images,
extrapolated to the configured batch); here they are multiplied by the run's batches (images) per
phase, and phases that cost nothing (a cached or given GAN, a cached encoder) are said so.
``plan=true`` prints the plan (splits, steps per phase, estimates, run folder) and exits without
training or writing a run folder. What the estimates are worth (estimate against measured time):
``make bench``, docs/performance.md.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from anogan.config.checks import group_choices
from anogan.data.splits import after_setup
from anogan.engine import gan_cache, gan_store
from anogan.engine.probe import UnitCosts, unit_costs
from anogan.engine.run_folder import is_fresh
from anogan.utils.progress import duration

if TYPE_CHECKING:
    from anogan.data.splits import AnomalyDataModule

log = logging.getLogger("anogan.engine.estimate")
HOUR = 3600.0
CPU_PRESET = "cifar_car_cpu"  # the preset the over-an-hour warning names


@dataclass
class Phase:
    """One phase of a run: ``name``; ``what`` it does (epochs × batches, images × steps);
    ``steps``: batches (training) or images (scoring) in all; ``seconds``: the estimate (None where
    it cannot be measured here); ``note``: why it costs nothing (cached, given) or what is left out."""

    name: str
    what: str
    steps: int
    seconds: float | None
    note: str = ""

    def line(self, device: str) -> str:
        if self.note and not self.seconds:
            return f"{self.name}: {self.what}: {self.note}"
        cost = f"≈ {duration(self.seconds)} on {device}" if self.seconds is not None else "not measurable on this machine"
        return f"{self.name}: {self.what} {cost}" + (f" ({self.note})" if self.note else "")


def _batches(n_items: int, batch: int, limit: int | float | None) -> int:
    per_epoch = max(1, n_items // batch) if n_items > batch else 1  # drop_last, as the training loader
    if limit is None:
        return per_epoch
    return min(per_epoch, int(limit)) if isinstance(limit, int) or float(limit) > 1 else max(1, int(per_epoch * float(limit)))


def _gan_cached(cfg: DictConfig) -> bool:
    if not cfg.gan.cache:
        return False
    key, _ = gan_cache.cache_key(cfg)
    return (Path(cfg.paths.gan_cache_dir) / key).is_dir()


def _encoder_cached(cfg: DictConfig, networks: tuple[torch.nn.Module, torch.nn.Module] | None) -> bool:
    """True when the scorer's encoder will be reused from the cache: its key needs the GAN's weights,
    so it is known only for a given GAN (``networks``) or a cached one (read here, nothing moved)."""
    if not cfg.gan.cache:
        return False
    if networks is None:
        key, _ = gan_cache.cache_key(cfg)
        arch = {k: cfg.model[k] for k in gan_store.ARCH_KEYS}
        entry = gan_cache.load_cache_entry(Path(cfg.paths.gan_cache_dir) / key, key, arch, move_damaged=False)
        if entry is None:
            return False
        networks = entry[0], entry[1]
    scorer = instantiate(cfg.mapping, generator=networks[0], discriminator=networks[1], seed=cfg.seed, _convert_="all")
    if not scorer.needs_fit or not hasattr(scorer, "encoder"):  # a D-feature memory bank is never cached
        return False
    key = gan_cache.encoder_cache_key(cfg, scorer)
    return (Path(cfg.paths.gan_cache_dir) / "encoders" / f"{key}.pt").is_file()


def device_name(trainer_kwargs: dict) -> str:
    """'this CPU' or 'this GPU' (where the probe ran)."""
    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "this GPU" if gpu else "this CPU"


def _unmeasured_costs(cfg: DictConfig) -> UnitCosts:
    """No seconds, only what the scorer needs (encoder epochs, summary), from a throwaway instance."""
    model = instantiate(cfg.model, _convert_="all")
    scorer = instantiate(cfg.mapping, generator=model.generator, discriminator=model.discriminator, seed=0, _convert_="all")
    fit = scorer.fit_settings() if scorer.needs_fit and hasattr(scorer, "encoder") else None
    return UnitCosts(None, None, None, fit and int(fit["epochs"]), scorer.summary())


def estimate_run(
    cfg: DictConfig,
    datamodule: AnomalyDataModule,
    trainer_kwargs: dict,
    given: bool = False,
    networks: tuple[torch.nn.Module, torch.nn.Module] | None = None,
) -> list[Phase]:
    """The phases of the run ``cfg`` on ``datamodule`` (set up), each with its estimated seconds.

    ``trainer_kwargs``: the run's Trainer arguments (resolved precision); ``given``: the GAN comes
    from ``gan.generator``/``gan.checkpoint`` (not trained; ``networks``: its G and D, which tell
    whether the encoder cache holds the scorer's encoder). Several devices: one is measured and the
    others assumed to divide the work evenly. A GPU run on a machine without one: steps only."""
    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    devices = trainer_kwargs.get("devices", 1)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * int(trainer_kwargs.get("num_nodes", 1) or 1)
    measurable = not (accelerator in ("gpu", "cuda") and not torch.cuda.is_available())
    batch = int(getattr(datamodule, "train_batch_size", None) or cfg.data.batch_size)
    n_train = len(after_setup(datamodule.train_set, "train_set")) * int(getattr(datamodule, "train_repeats", 1) or 1)
    per_epoch = _batches(n_train, batch, trainer_kwargs.get("limit_train_batches"))
    epochs, n_eval = int(cfg.trainer.max_epochs), len(after_setup(datamodule.eval_set, "eval_set"))
    gan_note = "given (gan.generator / gan.checkpoint), not trained" if given else ""
    if not given and _gan_cached(cfg):
        gan_note = f"reused from the cache {cfg.paths.gan_cache_dir}"
    encoder_cached = bool(gan_note) and _encoder_cached(cfg, networks)
    cost = (
        unit_costs(
            cfg,
            trainer_kwargs,
            max(1, batch // world),
            gan=not gan_note,
            encoder=not encoder_cached,
            bank_images=len(after_setup(datamodule.train_set, "train_set")),
        )
        if measurable
        else None
    )

    def total(unit: float | None, steps: int) -> float | None:
        return None if unit is None else unit * steps

    what = f"{epochs} epochs × {per_epoch} batches ({cfg.data.image_size} px, batch {batch}, {trainer_kwargs.get('precision')})"
    gan_steps = epochs * per_epoch
    max_steps = cfg.trainer.get("max_steps", -1)
    if max_steps not in (None, -1) and max_steps < gan_steps:  # trainer.max_steps: GAN iterations (batches)
        gan_steps = int(max_steps)
        what += f", stopped after {gan_steps} batches (trainer.max_steps)"
    if gan_note:
        phases = [Phase("GAN", what, 0, 0.0, gan_note)]
    else:
        phases = [Phase("GAN", what, gan_steps, total(cost.gan_batch_s if cost is not None else None, gan_steps))]
    measured = cost is not None
    if cost is None:
        cost = _unmeasured_costs(cfg)
    if cost.encoder_epochs is not None:
        steps = cost.encoder_epochs * per_epoch
        seconds = total(cost.encoder_batch_s, steps) if measured else None
        note = "reused from the cache" if encoder_cached else ("less if cached" if cfg.gan.cache else "")
        phases.append(Phase("encoder", f"{cost.encoder_epochs} epochs × {per_epoch} batches", steps, seconds, note))
    if cost.bank_what:
        phases.append(Phase("memory bank", cost.bank_what, 1, cost.bank_s))
    seconds = cost.scoring_image_s * n_eval / world if measured and cost.scoring_image_s is not None else None
    phases.append(Phase("scoring", f"{n_eval} images ({cost.scorer_summary})", n_eval, seconds))
    return phases


def total_seconds(phases: list[Phase]) -> float | None:
    """The sum of the estimates (None when a phase could not be measured)."""
    known = [p.seconds for p in phases if p.seconds is not None]
    return None if len(known) < len(phases) else float(sum(known))


def report(phases: list[Phase], trainer_kwargs: dict, experiment: str | None = None) -> list[str]:
    """One line per phase and the total; a warning when a CPU run would take more than an hour,
    naming the cheaper preset (unless ``experiment`` is already it) and ``trainer=gpu``."""
    device = device_name(trainer_kwargs)
    lines = [p.line(device) for p in phases]
    total = total_seconds(phases)
    known = [p.seconds for p in phases if p.seconds is not None]
    if total is not None:
        lines.append(f"total ≈ {duration(total)} on {device}")
    elif known:
        missing = ", ".join(p.name for p in phases if p.seconds is None)
        lines.append(f"total ≈ {duration(sum(known))} on {device} without {missing} (not estimated)")
    else:
        lines.append("total: not measurable on this machine")
    for line in lines:
        log.info("estimate: %s", line)
    if total is not None and total > HOUR and device == "this CPU":
        cheaper = (
            "fewer epochs (trainer.max_epochs)"
            if experiment == CPU_PRESET
            else f"experiment={CPU_PRESET} (the recipe shrunk for a CPU; docs/performance.md)"
        )
        log.warning("this run would take about %s on this CPU. Cheaper: %s, or a GPU: trainer=gpu.", duration(total), cheaper)
    return lines


def log_estimate(
    cfg: DictConfig,
    datamodule: AnomalyDataModule,
    trainer_kwargs: dict,
    given: bool = False,
    networks: tuple[torch.nn.Module, torch.nn.Module] | None = None,
) -> list[Phase]:
    """Estimate the run (``estimate_run``) and log one line per phase, the total and, for a CPU run
    over an hour, the warning naming the cheaper choices."""
    phases = estimate_run(cfg, datamodule, trainer_kwargs, given, networks)
    report(phases, trainer_kwargs, (group_choices(cfg) or {}).get("experiment"))
    return phases


def show_plan(cfg: DictConfig, trainer_kwargs: dict, run_dir: Path, given: bool = False) -> dict:
    """``plan=true``: set up the data, log the splits and their sizes, the phases with their steps
    and estimates, and the run folder; train nothing and leave no run folder behind (the folder
    Hydra created for this command is removed if it held nothing else). Returns the plan as a dict."""
    fresh = is_fresh(run_dir)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    splits = {name: entry["size"] for name, entry in datamodule.manifest["splits"].items()}
    phases = estimate_run(cfg, datamodule, trainer_kwargs, given)
    log.info("plan (plan=true: nothing is trained or written)")
    log.info("plan: run folder %s", run_dir)
    log.info("plan: splits %s", ", ".join(f"{k} {v}" for k, v in splits.items()))
    report(phases, trainer_kwargs, (group_choices(cfg) or {}).get("experiment"))
    if fresh and run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "run_dir": str(run_dir),
        "splits": splits,
        "phases": {p.name: {"steps": p.steps, "seconds": p.seconds, "what": p.what, "note": p.note} for p in phases},
        "total_s": total_seconds(phases),
    }
