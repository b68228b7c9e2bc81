"""Speed benchmark: ``python benchmarks/bench.py [--quick]`` (or ``make bench``) prints one JSON object.

Measured side by side in one process, on the same freshly initialised networks (fixed seed) and the
same random images, at 32 px (top-level keys) and 64 px (under ``"64px"``), in fp32 and bf16-mixed:

* latent search: image-steps/s of ``LatentMapping.search`` at ``mapping.batch_size`` against a loop
  of batch-size-1 searches over the first images (the guidebook's way), and the largest relative
  difference between their per-image scores (same z0 per image); in fp32 also the search as it was
  before ``search_copy`` (``"32-true-before"``, ``search_gain_vs_before_fp32``) and the gain of
  alpha 0, where D leaves the search loop (``search_alpha0_gain_fp32``, against ``mapping.alpha``);
* GAN training: images/s of the project's ``GAN`` LightningModule under a Lightning ``Trainer``
  against a plain PyTorch loop of the same step as one would write it (one D step with
  BCE-with-logits on real/fake, then ``g_steps`` G steps, Adam with the same settings), warm-up steps
  excluded. ``plain_matched`` (fp32) is a plain loop that also does what the module does beyond
  that (no gradients for the network not being stepped, channels_last on CPU): its ratio to the
  module (``lightning_vs_matched_plain_fp32``) is Lightning's own cost;
* with ``--ssgan-steps N``: the GAN's training speed with and without the self-supervised
  transformation task (``"ssgan"``: ``model.self_supervised`` rotations / geotrans, fp32).
* phases (``"phases"``, per experiment of ``--phase-experiments``; ``--phases-only`` for this alone):
  the run's three phases (GAN training, encoder training, scoring) through the project's own
  modules, in fp32 and bf16-mixed (``bf16_speedup``), and the cost estimate a run prints
  (``anogan.engine.estimate``) against the measured cost (``estimate_vs_measured``, ratio within 0.7-1.3).

Speeds are wall-clock. A busy machine makes them noisy, so every measurement is repeated
(``--rounds``, in alternating order) and the fastest round counts; a training run counts its median
step time after the warm-up steps. Memory is the peak resident set size (VmHWM, reset through
/proc/self/clear_refs after ``malloc_trim``) above the resident size before the measurement, in MiB;
``null`` where /proc lacks it. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import logging
import os
import platform
import re
import statistics
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from anogan.models import Discriminator, Generator
from anogan.models.gan import GAN
from anogan.scorers import LatentMapping, score_components

log = logging.getLogger("anogan.bench")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
PRECISIONS = ("32-true", "bf16-mixed")


# --------------------------------------------------------------------------- configuration


def project_defaults() -> dict:
    """The settings the benchmark mirrors, read from the project's Hydra configs."""
    mapping = OmegaConf.load(CONF_DIR / "mapping" / "latent.yaml")
    model = OmegaConf.load(CONF_DIR / "model" / "dcgan.yaml")
    trainer = OmegaConf.load(CONF_DIR / "trainer" / "cpu.yaml")
    data = OmegaConf.load(CONF_DIR / "data" / "cifar10.yaml")
    return {
        "search_batch_size": int(mapping.batch_size),
        "mapping_alpha": float(mapping.alpha),
        "mapping_lr": float(mapping.lr),
        "mapping_betas": tuple(float(b) for b in mapping.betas),
        "latent_dim": int(model.latent_dim),
        "width": int(model.g_width),
        "d_width": int(model.d_width),
        "lr": float(model.lr),
        "betas": tuple(float(b) for b in model.betas),
        "weight_decay": float(model.weight_decay),
        "g_steps": int(model.g_steps),
        "train_batch_size": int(data.batch_size),
        "precision": normalise_precision(trainer.precision),
    }


def normalise_precision(p) -> str:
    p = str(p)
    return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}.get(p, p)


def autocast(precision: str):
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision != "32-true":
        raise ValueError(f"precision {precision!r} is not benchmarked; use 32-true or bf16-mixed")
    return nullcontext()


# --------------------------------------------------------------------------- measurement helpers


def _proc_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


@contextmanager
def peak_memory(out: dict, key: str):
    """out[key] = peak RSS above the RSS at entry, in MiB (None where unsupported)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the baseline is honest
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    before = _proc_kib("VmRSS")
    try:
        yield
    finally:
        peak = _proc_kib("VmHWM")
        out[key] = round((peak - before) / 1024, 1) if resettable and peak is not None and before is not None else None


def build_nets(image_size: int, latent_dim: int, width: int, d_width: int, seed: int):
    torch.manual_seed(seed)
    return Generator(latent_dim, 3, image_size, width), Discriminator(3, image_size, d_width)


def random_images(n: int, image_size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- latent search


def reference_search(generator, discriminator, x, z0, *, iterations, alpha, lr, betas) -> torch.Tensor:
    """The search as it was before ``search_copy`` (the networks as they are: NCHW, BatchNorm
    separate); the same maths. Per-image scores."""
    generator, discriminator = generator.eval(), discriminator.eval()
    features = discriminator.features
    with torch.no_grad():
        fx = features(x)
    z = z0.detach().clone().view(len(x), -1, 1, 1).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr, betas=betas)
    with torch.enable_grad():
        for _ in range(iterations):
            generated = generator(z)
            loss, _, _ = score_components(x, fx, generated, features(generated), alpha)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
    with torch.no_grad():
        generated = generator(z)
        return score_components(x, fx, generated, features(generated), alpha)[0]


def bench_search(search, x: torch.Tensor, z: torch.Tensor, *, steps: int, single_images: int, rounds: int = 1) -> dict:
    """``search(x, z, iterations) -> scores`` on the whole batch vs one image at a time over the first
    ``single_images``. Each round times one batched search and the single-image loop, split around it
    so that drifting load hits both alike; the fastest round of each counts. Scores are compared in
    the first round. ``scores`` holds the batched scores of the first round.
    """
    out: dict = {}
    half = single_images // 2
    best_batched = best_single = float("inf")
    search(x, z, 1)  # warm-up: primitive creation, allocator
    search(x[:1], z[:1], 1)
    for r in range(rounds):
        single_scores, single_s = [], 0.0
        with peak_memory(out, "single_peak_rss_mib") if r == 0 else nullcontext():
            for i in range(half):
                t0 = time.perf_counter()
                single_scores.append(search(x[i : i + 1], z[i : i + 1], steps))
                single_s += time.perf_counter() - t0
        with peak_memory(out, "batched_peak_rss_mib") if r == 0 else nullcontext():
            t0 = time.perf_counter()
            batched = search(x, z, steps)
            best_batched = min(best_batched, time.perf_counter() - t0)
        for i in range(half, single_images):
            t0 = time.perf_counter()
            single_scores.append(search(x[i : i + 1], z[i : i + 1], steps))
            single_s += time.perf_counter() - t0
        best_single = min(best_single, single_s)
        if r == 0:
            single = torch.cat(single_scores)
            out["max_rel_diff"] = ((batched[:single_images] - single).abs() / single.abs()).max().item()
            out["scores"] = batched
    out["batched_img_steps_s"] = round(len(x) * steps / best_batched, 2)
    out["single_img_steps_s"] = round(single_images * steps / best_single, 2)
    out["speedup"] = round(out["batched_img_steps_s"] / out["single_img_steps_s"], 2)
    return out


def project_search(generator, discriminator, *, alpha, lr, betas):
    mapping = LatentMapping(generator, discriminator, alpha=alpha, iterations=1, lr=lr, betas=betas)

    def search(x, z, iterations):
        mapping.hparams.iterations = iterations
        return mapping.search(x, z)["score"]

    return search


def alpha_zero_gain(generator, discriminator, x, z, *, steps, rounds, alpha, lr, betas) -> float:
    """Batched fp32 search throughput at alpha 0 (D left out of the loop) over that at ``alpha``,
    timed alternately in the same process; the fastest round of each counts."""
    searches = {a: project_search(generator, discriminator, alpha=a, lr=lr, betas=betas) for a in (0.0, alpha)}
    for search in searches.values():
        search(x[:2], z[:2], 1)  # builds the search copies of G and D
    best = {a: float("inf") for a in searches}
    for _ in range(rounds):
        for a, search in searches.items():
            t0 = time.perf_counter()
            search(x, z, steps)
            best[a] = min(best[a], time.perf_counter() - t0)
    return round(best[alpha] / best[0.0], 2)


def search_batch_sweep(generator, discriminator, images, z0, *, sizes, steps, precision, alpha, lr, betas) -> dict:
    """Batched throughput (image-steps/s) at several batch sizes."""
    search = project_search(generator, discriminator, alpha=alpha, lr=lr, betas=betas)
    result = {}
    with autocast(precision):
        for bs in sizes:
            x, z = images[:bs], z0[:bs]
            search(x, z, 1)
            t0 = time.perf_counter()
            search(x, z, steps)
            result[str(bs)] = round(len(x) * steps / (time.perf_counter() - t0), 2)
    return result


# --------------------------------------------------------------------------- GAN training


class _BatchClock(L.Callback):
    def __init__(self):
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.stamps:
            self.stamps.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stamps.append(time.perf_counter())


def _throughput(stamps: list[float], warmup: int, batch_size: int) -> float:
    """Images/s from the median step time, warm-up steps excluded (stamps[0] = start of step 1)."""
    times = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    return round(batch_size / statistics.median(times), 2)


def _loader(images: torch.Tensor, batch_size: int) -> torch.utils.data.DataLoader:
    data = [{"image": img} for img in images]  # the project's datasets yield dicts, too
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=True)


def make_gan(image_size: int, d: dict, seed: int, **options) -> GAN:
    """The project's GAN with the benchmark's sizes; ``options``: further ``model.*`` keys."""
    torch.manual_seed(seed)
    return GAN(
        latent_dim=d["latent_dim"],
        channels=3,
        image_size=image_size,
        g_width=d["width"],
        d_width=d["d_width"],
        lr=d["lr"],
        betas=d["betas"],
        weight_decay=d["weight_decay"],
        g_steps=d["g_steps"],
        **options,
    )


def bench_ssgan(a: argparse.Namespace, d: dict) -> dict:
    """The cost of the self-supervised auxiliary task (``model.self_supervised``): images/s of
    the project's GAN under Lightning without it and with each transformation set, fp32, at the first
    size and ``--train-batch-size``, ``--ssgan-steps`` timed steps after ``--warmup``, side by side on the
    same images (fastest of ``--rounds``, alternating order). ``epoch_time_ratio`` is a GAN epoch's
    time with the set over its time without (the budget: at most 2)."""
    size, tb, steps = a.sizes[0], a.train_batch_size, a.ssgan_steps
    images = random_images(tb * (a.warmup + steps + 1), size, a.seed + 5)
    variants = {"off": None, **{name: name for name in ("rotations", "geotrans")}}
    best: dict[str, float] = {}
    for r in range(a.rounds):
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            log.info("%d px: GAN training, self_supervised=%s, batch %d, %d+%d steps", size, variants[name], tb, a.warmup, steps)
            model = make_gan(size, d, a.seed, self_supervised=variants[name])
            out = bench_train_lightning(model, images, batch_size=tb, warmup=a.warmup, precision="32-true")
            best[name] = max(best.get(name, 0.0), out["img_s"])
    result = {f"{name}_img_s": v for name, v in best.items()}
    for name in ("rotations", "geotrans"):
        result[f"{name}_epoch_time_ratio"] = round(best["off"] / best[name], 3)
    result.update(image_size=size, batch_size=tb, timed_steps=steps, precision="32-true", g_steps=d["g_steps"])
    return result


def bench_train_lightning(model: GAN, images, *, batch_size, warmup, precision) -> dict:
    clock, out = _BatchClock(), {}
    n_batches = len(images) // batch_size
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        max_steps=n_batches * (1 + model.hparams.g_steps),  # manual optimization counts every opt.step()
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        num_sanity_val_steps=0,
    )
    with peak_memory(out, "peak_rss_mib"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _loader(images, batch_size))
    if len(clock.stamps) != n_batches + 1:
        raise RuntimeError(f"Lightning ran {len(clock.stamps) - 1} batches, expected {n_batches}")
    out["img_s"] = _throughput(clock.stamps, warmup, batch_size)
    return out


def bench_train_plain(
    generator,
    discriminator,
    images,
    *,
    batch_size,
    warmup,
    precision,
    lr,
    betas,
    weight_decay,
    g_steps,
    latent_dim,
    matched: bool = False,
) -> dict:
    """The training step as a plain loop. ``matched``: also what the module does beyond the recipe."""
    g, d = copy.deepcopy(generator).train(), copy.deepcopy(discriminator).train()
    if matched:  # as GAN.setup does on CPU
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)

    def bce(logits, target):
        return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, target, dtype=torch.float32))

    def grads(module, on):
        if matched:
            for p in module.parameters():
                p.requires_grad_(on)

    out = {}
    stamps = [time.perf_counter()]
    with peak_memory(out, "peak_rss_mib"):
        for batch in _loader(images, batch_size):
            x = batch["image"]
            if matched:
                x = x.contiguous(memory_format=torch.channels_last)
            z = torch.randn(x.shape[0], latent_dim, 1, 1)
            grads(g, False)
            with autocast(precision):
                loss_d = bce(d(x), 1.0) + bce(d(g(z).detach()), 0.0)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            grads(g, True)
            grads(d, False)
            for _ in range(g_steps):
                with autocast(precision):
                    loss_g = bce(d(g(z)), 1.0)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
            grads(d, True)
            if not (torch.isfinite(loss_d) and torch.isfinite(loss_g)):
                raise FloatingPointError("the plain loop diverged")
            stamps.append(time.perf_counter())
    out["img_s"] = _throughput(stamps, warmup, batch_size)
    return out


# --------------------------------------------------------------------------- one image size


def bench_size(image_size: int, a: argparse.Namespace, d: dict) -> dict:
    precisions = [normalise_precision(p) for p in a.precisions]
    default = d["precision"]
    res: dict = {"image_size": image_size}
    g, disc = build_nets(image_size, d["latent_dim"], d["width"], d["d_width"], a.seed)
    n_search = max(a.search_batch_size, a.single_images, *(a.batch_sweep or [0]))
    images = random_images(n_search, image_size, a.seed + 1)
    z0 = torch.randn(n_search, d["latent_dim"], generator=torch.Generator().manual_seed(a.seed + 2))
    steps = a.search_steps if image_size <= 32 else a.search_steps_large

    hp = dict(alpha=d["mapping_alpha"], lr=d["mapping_lr"], betas=d["mapping_betas"])
    x, z = images[: a.search_batch_size], z0[: a.search_batch_size]
    search = {}
    for p in precisions:
        log.info("%d px: latent search, %s, batch %d vs 1, %d steps", image_size, p, a.search_batch_size, steps)
        with autocast(p):
            search[p] = bench_search(
                project_search(g, disc, **hp), x, z, steps=steps, single_images=a.single_images, rounds=a.rounds
            )
    if a.reference and "32-true" in search:
        log.info("%d px: latent search, 32-true, the search before search_copy", image_size)
        ref = bench_search(
            lambda xx, zz, it: reference_search(g, disc, xx, zz, iterations=it, **hp),
            x,
            z,
            steps=steps,
            single_images=a.single_images,
            rounds=a.rounds,
        )
        new = search["32-true"]
        ref["max_rel_diff_to_current"] = ((new["scores"] - ref["scores"]).abs() / ref["scores"].abs()).max().item()
        search["32-true-before"] = ref
        res["search_gain_vs_before_fp32"] = round(new["batched_img_steps_s"] / ref["batched_img_steps_s"], 2)
        res["search_speedup_vs_before_bs1_fp32"] = round(new["batched_img_steps_s"] / ref["single_img_steps_s"], 2)
    for v in search.values():
        del v["scores"]
    res["search"] = search
    res["search_steps"] = steps
    if "32-true" in search:
        res["search_speedup_fp32"] = search["32-true"]["speedup"]
        res["search_max_rel_diff"] = search["32-true"]["max_rel_diff"]
    if "bf16-mixed" in search:
        res["search_speedup_bf16"] = search["bf16-mixed"]["speedup"]
        res["search_max_rel_diff_bf16"] = search["bf16-mixed"]["max_rel_diff"]
        if "32-true" in search:
            res["search_bf16_vs_fp32"] = round(
                search["bf16-mixed"]["batched_img_steps_s"] / search["32-true"]["batched_img_steps_s"], 2
            )
    if default in search:
        res["search_speedup"] = search[default]["speedup"]
    if "32-true" in search and hp["alpha"] > 0:
        log.info("%d px: latent search, 32-true, alpha 0 vs alpha %g", image_size, hp["alpha"])
        res["search_alpha0_gain_fp32"] = alpha_zero_gain(g, disc, x, z, steps=steps, rounds=a.rounds, **hp)
    if a.batch_sweep:
        res["search_batch_sweep_fp32"] = search_batch_sweep(
            g,
            disc,
            images,
            z0,
            sizes=a.batch_sweep,
            steps=steps,
            precision="32-true",
            alpha=d["mapping_alpha"],
            lr=d["mapping_lr"],
            betas=d["mapping_betas"],
        )

    if a.train_steps > 0:
        tb = a.train_batch_size if image_size <= 32 else a.train_batch_size_large
        train_steps = a.train_steps if image_size <= 32 else a.train_steps_large
        n_batches = a.warmup + train_steps
        timg = random_images(tb * n_batches, image_size, a.seed + 3)
        train = {}
        common = dict(
            batch_size=tb,
            warmup=a.warmup,
            lr=d["lr"],
            betas=d["betas"],
            weight_decay=d["weight_decay"],
            g_steps=d["g_steps"],
            latent_dim=d["latent_dim"],
        )
        for p in precisions:
            log.info(
                "%d px: GAN training, %s, batch %d, %d+%d steps, %d round(s)", image_size, p, tb, a.warmup, train_steps, a.rounds
            )
            runs: dict[str, list[dict]] = {"lightning": [], "plain": [], "plain_matched": []}
            for r in range(a.rounds):
                model = make_gan(image_size, d, a.seed)
                g0, d0 = copy.deepcopy(model.generator), copy.deepcopy(model.discriminator)
                order = ["plain", "lightning"] if r % 2 == 0 else ["lightning", "plain"]
                if p == "32-true" and a.matched:
                    order.append("plain_matched")
                for kind in order:  # alternating order: a slow spell of the machine hits both alike
                    if kind == "lightning":
                        runs[kind].append(bench_train_lightning(model, timg, batch_size=tb, warmup=a.warmup, precision=p))
                    else:
                        runs[kind].append(bench_train_plain(g0, d0, timg, precision=p, matched=kind == "plain_matched", **common))
            train[p] = {}
            for kind, rs in runs.items():
                if rs:
                    train[p][f"{kind}_img_s"] = max(r["img_s"] for r in rs)
                    train[p][f"{kind}_peak_rss_mib"] = rs[0]["peak_rss_mib"]
        res["train"] = train
        res["train_batch_size"] = tb
        res["train_timed_steps"] = train_steps
        if "32-true" in train:
            base = train["32-true"]["plain_img_s"]
            res["train_speedup_fp32"] = round(train["32-true"]["lightning_img_s"] / base, 2)
            if "plain_matched_img_s" in train["32-true"]:
                res["lightning_vs_matched_plain_fp32"] = round(
                    train["32-true"]["lightning_img_s"] / train["32-true"]["plain_matched_img_s"], 2
                )
            if default in train:
                res["train_speedup_default"] = round(train[default]["lightning_img_s"] / base, 2)
            if "bf16-mixed" in train:
                res["train_speedup_bf16"] = round(train["bf16-mixed"]["lightning_img_s"] / base, 2)
                res["train_bf16_lightning_vs_plain_bf16"] = round(
                    train["bf16-mixed"]["lightning_img_s"] / train["bf16-mixed"]["plain_img_s"], 2
                )
    return res


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None, defaults: dict | None = None) -> argparse.Namespace:
    d = defaults or project_defaults()
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="an even shorter run (fewer steps and images)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sizes; the first is top-level")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), help="32-true and/or bf16-mixed")
    p.add_argument("--search-batch-size", type=int, default=d["search_batch_size"], help="default: mapping.batch_size")
    p.add_argument("--search-steps", type=int, default=10, help="search steps per image at 32 px")
    p.add_argument("--search-steps-large", type=int, default=5, help="search steps per image above 32 px")
    p.add_argument("--single-images", type=int, default=16, help="images of the batch-size-1 loop")
    p.add_argument("--batch-sweep", type=int, nargs="*", default=None, help="also time these search batch sizes (fp32)")
    p.add_argument("--train-batch-size", type=int, default=d["train_batch_size"], help="default: data.batch_size")
    p.add_argument("--train-batch-size-large", type=int, default=64, help="training batch above 32 px")
    p.add_argument("--train-steps", type=int, default=10, help="timed training steps at 32 px (0: skip training)")
    p.add_argument("--train-steps-large", type=int, default=4, help="timed training steps above 32 px")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--rounds", type=int, default=2, help="repeat every measurement; the fastest round counts")
    p.add_argument("--no-reference", dest="reference", action="store_false", help="skip the search before search_copy")
    p.add_argument("--no-matched", dest="matched", action="store_false", help="skip the matched plain loop")
    p.add_argument("--latent-dim", type=int, default=d["latent_dim"])
    p.add_argument("--width", type=int, default=d["width"], help="G and D widths")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--scorer-images", type=int, default=128, help="images for the end-to-end scorer comparison (0: skip)")
    p.add_argument("--scorer-steps", type=int, default=200, help="search steps of the latent scorers in that comparison")
    p.add_argument(
        "--phase-experiments",
        nargs="*",
        default=["cifar_car_cpu_anogan", "cifar_car:mapping.iterations=20"],  # 400 steps x 128 images: too long for a bench
        help="experiments of the per-phase section, each NAME or NAME:override[:override...] (none: skip)",
    )
    p.add_argument("--phase-overrides", nargs="*", default=[], help="Hydra overrides of those experiments (e.g. smaller nets)")
    p.add_argument("--phase-batches", type=int, default=3, help="timed training batches per phase")
    p.add_argument("--phase-images", type=int, default=32, help="scored images per measurement (at least the scorer's batch)")
    p.add_argument("--phases-only", action="store_true", help="only the per-phase section (estimates, precision)")
    p.add_argument("--ssgan-steps", type=int, default=0, help="timed steps of the self-supervised cost section (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.quick:
        a.search_steps, a.search_steps_large = min(a.search_steps, 4), min(a.search_steps_large, 2)
        a.single_images = min(a.single_images, 4)
        a.train_steps, a.train_steps_large, a.warmup = min(a.train_steps, 3), min(a.train_steps_large, 2), 1
        a.train_batch_size_large = min(a.train_batch_size_large, 32)
        a.scorer_images, a.scorer_steps = min(a.scorer_images, 32), min(a.scorer_steps, 50)
        a.phase_batches, a.phase_images = min(a.phase_batches, 2), min(a.phase_images, 16)
        a.rounds = 1
    if a.single_images > a.search_batch_size:
        p.error("--single-images must not exceed --search-batch-size")
    return a


def run_benchmark(a: argparse.Namespace, defaults: dict | None = None) -> dict:
    d = dict(defaults or project_defaults())
    d.update(latent_dim=a.latent_dim, width=a.width, d_width=a.width)
    if a.threads:
        torch.set_num_threads(a.threads)
    start = time.perf_counter()
    result: dict = {
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "bf16_supported": _bf16_supported(),
        "precision": d["precision"],
        "precisions": [normalise_precision(p) for p in a.precisions],
        "latent_dim": d["latent_dim"],
        "width": d["width"],
        "search_batch_size": a.search_batch_size,
        "search_single_images": a.single_images,
        "rounds": a.rounds,
        "timing": "wall clock, fastest of the rounds; search: one timed search per round; "
        "training: median step time after warm-up steps",
        "memory": "peak RSS (VmHWM reset via /proc/self/clear_refs) above the RSS before, MiB",
    }
    for i, size in enumerate([] if a.phases_only else a.sizes):
        res = bench_size(size, a, d)
        if i == 0:
            result.update(res)
        else:
            result[f"{size}px"] = res
    if a.scorer_images and not a.phases_only:
        result["scorers"] = bench_scorers(a, d)
    if a.ssgan_steps and not a.phases_only:
        result["ssgan"] = bench_ssgan(a, d)
    if a.phase_experiments:
        result["phases"] = bench_phases(a)
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    return result


def bench_scorers(a: argparse.Namespace, d: dict) -> dict:
    """End-to-end scoring images/s of every scorer through ``anogan.engine.inference.run_scorer`` (the
    Trainer.predict path of train.py and predict.py), on the same images and networks, side by side
    (fastest of ``--rounds``, alternating order): the latent search with and without early stopping
    and anomaly maps, the encoder with and without maps, the encoder-initialised search, and the
    encoder exported to ONNX under ONNX Runtime. Untrained networks: speeds, not step counts, are the
    point here (early stopping stops where a trained GAN's loss flattens; see docs/speed.md's curve)."""
    from anogan.data.splits import AnomalySplit
    from anogan.engine.inference import run_scorer
    from anogan.scorers import EncoderScorer, EncoderSearch, LatentMapping

    size, n, steps = a.sizes[0], a.scorer_images, a.scorer_steps
    g, dnet = build_nets(size, d["latent_dim"], d["width"], d["d_width"], seed=0)
    images = ((random_images(n, size, seed=3) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    data = AnomalySplit(images, torch.zeros(n, dtype=torch.long).numpy(), torch.arange(n).numpy(), 0)
    kw = dict(
        accelerator="cpu", devices=1, precision="32-true", enable_progress_bar=False, enable_model_summary=False, logger=False
    )
    enc = {"width": d["d_width"], "kappa": 1.0, "epochs": 1, "lr": 1e-4, "betas": [0.5, 0.999]}
    bs = a.search_batch_size
    stop = {"patience": 10, "rel_tol": 1e-3}
    scorers = {
        f"latent_{steps}": LatentMapping(g, dnet, alpha=0.0, iterations=steps, batch_size=bs),
        f"latent_{steps}_no_maps": LatentMapping(g, dnet, alpha=0.0, iterations=steps, batch_size=bs, maps=False),
        f"latent_{steps}_early_stop": LatentMapping(g, dnet, alpha=0.0, iterations=steps, batch_size=bs, early_stop=stop),
        "encoder": EncoderScorer(g, dnet, width=d["d_width"], batch_size=bs),
        "encoder_no_maps": EncoderScorer(g, dnet, width=d["d_width"], batch_size=bs, maps=False),
        "encoder_search_10": EncoderSearch(g, dnet, encoder=enc, alpha=0.0, iterations=10, batch_size=bs),
    }
    best = {k: float("inf") for k in scorers}
    used = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(a.rounds):
            for name in list(scorers) if r % 2 == 0 else list(scorers)[::-1]:
                t0 = time.perf_counter()
                out = run_scorer(scorers[name], data, kw)
                best[name] = min(best[name], time.perf_counter() - t0)
                used[name] = float(out["steps"].double().mean())
    result = {k: {"images_s": round(n / t, 2), "mean_steps": round(used[k], 1)} for k, t in best.items()}
    result["maps_overhead_latent"] = round(best[f"latent_{steps}"] / best[f"latent_{steps}_no_maps"] - 1, 3)
    result["maps_overhead_encoder"] = round(best["encoder"] / best["encoder_no_maps"] - 1, 3)
    try:
        import tempfile

        import onnxruntime as ort

        from anogan.deploy.export import ScorerGraph
        from anogan.post_processing.calibration import Calibration

        no_calibration = Calibration("none", "fpr", 0.05, {"fpr": float("inf")}, torch.zeros(1))  # timing only
        graph = ScorerGraph(scorers["encoder"], no_calibration).eval()
        x = images.float().div(127.5).sub(1.0)
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            torch.onnx.export(
                graph, (x[:2],), f"{tmp}/e.onnx", dynamo=False, input_names=["image"], dynamic_axes={"image": {0: "n"}}
            )
            session = ort.InferenceSession(f"{tmp}/e.onnx", providers=["CPUExecutionProvider"])
            t_ort, t_pt = float("inf"), float("inf")
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                for chunk in x.split(bs):
                    session.run(None, {"image": chunk.numpy()})
                t_ort = min(t_ort, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for chunk in x.split(bs):
                    graph(chunk)
                t_pt = min(t_pt, time.perf_counter() - t0)
        result["encoder_onnxruntime"] = {"images_s": round(n / t_ort, 2)}
        result["encoder_pytorch_graph"] = {"images_s": round(n / t_pt, 2)}
    except ImportError:
        result["encoder_onnxruntime"] = None
    result.update(images=n, image_size=size, search_batch_size=bs, precision="32-true")
    return result


def experiment_config(experiment: str, overrides: list[str]):
    """The project's config of ``experiment=<experiment>`` with ``overrides`` (no data is read)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])


def measured_costs(cfg, precision: str, *, batches: int, images: int) -> dict:
    """What the run's phases cost at the configured sizes (not the estimator's small probe batch):
    seconds per GAN training batch and per encoder training batch (the mean of ``batches`` after one
    warm-up, at ``data.batch_size``), and per scored image (``images`` images, at least one batch, at
    the scorer's own batch size and search steps, after a warm-up batch). Random images, freshly initialised networks."""
    import tempfile

    from hydra.utils import instantiate

    from anogan.engine import probe
    from anogan.engine.inference import run_scorer

    batch, size, channels = int(cfg.data.batch_size), int(cfg.data.image_size), int(cfg.data.channels)
    out = {}
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = probe.probe_trainer_kwargs({"accelerator": "cpu", "precision": precision}, root)
        out["gan_batch_s"] = probe.gan_batch_seconds(cfg, kw, batch, batches)
        model = instantiate(cfg.model, _convert_="all")
        scorer = instantiate(cfg.mapping, generator=model.generator, discriminator=model.discriminator, seed=0, _convert_="all")
        if scorer.needs_fit:
            out["encoder_batch_s"] = probe.encoder_batch_seconds(scorer, kw, batch, channels, size, batches)
        images = max(images, int(scorer.hparams.batch_size))  # at least one batch of the scorer's size
        data = probe._random_split(images, channels, size)
        steps = scorer.hparams.get("iterations")
        if steps is not None:
            scorer.hparams.iterations = 1  # the warm-up batch: one search step is enough
        run_scorer(scorer, probe._random_split(int(scorer.hparams.batch_size), channels, size), kw)
        if steps is not None:
            scorer.hparams.iterations = steps
        t0 = time.perf_counter()
        run_scorer(scorer, data, kw)
        out["scoring_image_s"] = (time.perf_counter() - t0) / images
    return {k: round(v, 6) for k, v in out.items()}


def bench_phases(a: argparse.Namespace) -> dict:
    """Per experiment (``--phase-experiments``, own overrides after ``:``): the estimator's per-batch / per-image figures
    (``anogan.engine.probe.unit_costs``: small probe batch, scaled) against the measured ones at the
    configured sizes (``measured_costs``), ``ratio`` = estimate / measured (within ±30%: 0.7-1.3),
    at the experiment's resolved precision; and for every experiment the phases in fp32 and
    bf16-mixed side by side (fastest of ``--rounds``, alternating order), ``bf16_speedup`` = fp32 time
    / bf16 time per phase."""
    from anogan.engine import probe
    from anogan.engine.hardware import resolve_precision

    out = {}
    for spec in a.phase_experiments:
        experiment, *own = spec.split(":")
        cfg = experiment_config(experiment, [*a.phase_overrides, *own])
        precision = str(resolve_precision(cfg.trainer.precision, "cpu"))
        precision = normalise_precision(precision)
        log.info("%s: phase costs, fp32 vs bf16-mixed, and the estimate at %s", experiment, precision)
        runs: dict[str, list[dict]] = {"32-true": [], "bf16-mixed": [], "estimate": []}
        kw = {"accelerator": "cpu", "precision": precision}
        for r in range(a.rounds):  # the estimate is probed in every round too: a load that changes hits all alike
            for p in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                if p == "estimate":
                    cost = probe.unit_costs(cfg, kw, int(cfg.data.batch_size))
                    units = {"gan_batch_s": cost.gan_batch_s, "encoder_batch_s": cost.encoder_batch_s}
                    units = {**{k: v for k, v in units.items() if v is not None}, "scoring_image_s": cost.scoring_image_s}
                    runs[p].append(units)
                else:
                    runs[p].append(measured_costs(cfg, p, batches=a.phase_batches, images=a.phase_images))
        best = {p: {k: min(m[k] for m in ms) for k in ms[0]} for p, ms in runs.items()}
        estimated = best.pop("estimate")
        measured = best.get(precision, best["32-true"])
        versus = {}
        for k, v in measured.items():
            e = round(estimated[k], 6)
            versus[k] = {"estimate": e, "measured": v, "ratio": round(e / v, 2)}
        out[experiment] = {
            "overrides": [*a.phase_overrides, *own],
            "image_size": int(cfg.data.image_size),
            "batch_size": int(cfg.data.batch_size),
            "scorer": cost.scorer_summary,
            "precision": precision,
            "estimate_vs_measured": versus,
            "estimate_within_30pct": all(0.7 <= v["ratio"] <= 1.3 for v in versus.values()),
            "precision_comparison": best,
            "bf16_speedup": {k: round(best["32-true"][k] / best["bf16-mixed"][k], 2) for k in best["32-true"]},
        }
    out["timing"] = (
        f"seconds per training batch (mean of {a.phase_batches} after a warm-up) and per scored image "
        f"({a.phase_images} images); fastest of {a.rounds} round(s)"
    )
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _bf16_supported() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    a = parse_args(argv)
    result = run_benchmark(a)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
