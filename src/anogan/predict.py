"""Score new images with a finished run:

    python predict.py ckpt=<run folder> input=<folder or image> [threshold=<float>] [out=<csv>] [save_images=true]

The run folder gives everything: its GAN (``gan/``, or the cache entry named in ``gan_source.txt``,
or the weights/checkpoint its config pointed at), its encoder (``encoder/``, for
``mapping.method=encoder`` runs), its config (``config_resolved.yaml`` or ``.hydra/config.yaml``:
image size, channels, the scorer and its settings, the seed) and its threshold (``metrics.json``
→ ``threshold.f1``, fitted on the run's validation split). Every PNG/JPEG under ``input`` (recursively)
is converted and resized exactly as the CIFAR-10 data module does (luma for grey models; bilinear
antialiased resize of the uint8 image, rounded back to uint8), and scored by the run's own scorer
with the same per-image starting z (seeded by the run's seed and the image's pixels): an image of
the run's evaluation set gets the score it got in the run.

Unreadable or non-square images are skipped with a warning and listed at the end; they never stop
the batch. Output: a CSV with path, score (the run's primary score, see ``mapping.correction``),
raw_score, residual, discrimination, complexity, label (1 = anomalous, i.e. score >= threshold;
empty without a threshold) and, with ``save_images=true``, one original | G(z) | |x − G(z)| PNG
per image in ``<csv name>_images/``.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from anogan import gan_store
from anogan.data.folder import ImageError, list_images, read_image
from anogan.data.splits import AnomalySplit
from anogan.errors import UserError
from anogan.scores import complexity, primary_score

log = logging.getLogger("anogan.predict")

USAGE = (
    "usage: python predict.py ckpt=<run folder> input=<folder or image> "
    "[threshold=<float>] [out=<csv path>] [save_images=true] [device=auto|cpu|cuda] [batch_size=<int>]"
)
DEFAULTS = {
    "ckpt": None,
    "input": None,
    "threshold": None,
    "out": "predictions.csv",
    "save_images": False,
    "device": "auto",
    "batch_size": None,
}


class PredictError(UserError):
    """The command line or the run folder cannot be used; the message says how to fix it."""


# ---------------------------------------------------------------------- command line
def _bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise PredictError(f"{key}={value!r}: use true or false")


def parse_args(argv: list[str]) -> dict:
    """``key=value`` arguments (Hydra style) into the settings dict."""
    args = dict(DEFAULTS)
    for item in argv:
        if item in ("-h", "--help", "help"):
            print(USAGE)
            raise SystemExit(0)
        key, sep, value = item.partition("=")
        key = key.lstrip("+")
        if not sep or key not in DEFAULTS:
            raise PredictError(f"unknown argument {item!r}. {USAGE}")
        args[key] = value
    for key in ("ckpt", "input"):
        if not args[key]:
            raise PredictError(f"{key}=... is required. {USAGE}")
    if args["threshold"] is not None and not isinstance(args["threshold"], float):
        try:
            args["threshold"] = float(args["threshold"])
        except ValueError:
            raise PredictError(f"threshold={args['threshold']!r} is not a number") from None
    if isinstance(args["save_images"], str):
        args["save_images"] = _bool("save_images", args["save_images"])
    if args["batch_size"] is not None:
        try:
            args["batch_size"] = int(args["batch_size"])
            assert args["batch_size"] >= 1
        except (ValueError, AssertionError):
            raise PredictError(f"batch_size={args['batch_size']!r}: use a whole number >= 1") from None
    return args


# ---------------------------------------------------------------------- the run
def load_run_config(run_dir: Path) -> DictConfig:
    for path in (run_dir / "config_resolved.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            return OmegaConf.load(path)
    raise PredictError(
        f"ckpt={run_dir} has no config_resolved.yaml nor .hydra/config.yaml: give the folder of a finished train.py run."
    )


def load_gan(run_dir: Path, cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The run's G and D: its gan/ folder, the cache entry it reused, or what its config gave."""
    arch = {k: cfg.model[k] for k in gan_store.ARCH_KEYS}
    if (run_dir / "gan" / "gan.json").is_file():
        return gan_store.load_checkpoint(run_dir, arch)
    source = run_dir / "gan_source.txt"
    if source.is_file() and source.read_text().startswith("reused "):
        return gan_store.load_checkpoint(source.read_text()[len("reused ") :].strip(), arch)
    if cfg.gan.get("generator"):
        return gan_store.load_weights(cfg.gan.generator, cfg.gan.discriminator, arch)
    if cfg.gan.get("checkpoint"):
        return gan_store.load_checkpoint(cfg.gan.checkpoint, arch)
    raise PredictError(f"no GAN found for the run {run_dir} (no gan/ folder, gan_source.txt or gan.* setting).")


def load_scorer(run_dir: Path, cfg: DictConfig, generator, discriminator):
    """The run's scorer: a LatentMapping or an EncoderScorer with the run's settings."""
    method = cfg.mapping.get("method", "latent")
    if method == "encoder":
        from anogan.models.encoder import EncoderScorer, load_encoder

        if not (run_dir / "encoder" / "encoder.json").is_file():
            raise PredictError(f"the run {run_dir} used mapping=encoder but has no encoder/ folder (did it finish?).")
        encoder, meta = load_encoder(run_dir / "encoder")
        scorer = EncoderScorer(
            generator, discriminator, meta["channels"], meta["image_size"], meta["width"], kappa=meta["kappa"]
        )
        scorer.encoder = encoder
    elif method == "latent":
        from anogan.models.latent_mapping import LatentMapping

        mp = cfg.mapping
        scorer = LatentMapping(
            generator, discriminator, alpha=mp.alpha, iterations=mp.iterations, lr=mp.lr, betas=tuple(mp.betas), seed=cfg.seed
        )
    else:
        raise PredictError(f"the run's mapping.method={method!r} is unknown (latent or encoder).")
    return scorer.eval()


def load_threshold(run_dir: Path) -> float | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    return float(json.loads(path.read_text())["threshold"]["f1"])


def load_correction(run_dir: Path, cfg: DictConfig) -> str:
    """The correction the run's scores used: ``auto`` was resolved on its validation split."""
    path = run_dir / "metrics.json"
    if path.is_file() and "correction" in (metrics := json.loads(path.read_text())):
        return metrics["correction"]
    correction = cfg.mapping.get("correction", "none")  # runs made before the option existed: none
    if correction == "auto":
        raise PredictError(f"the run {run_dir} has mapping.correction=auto but no metrics.json: it did not finish.")
    return correction


# ---------------------------------------------------------------------- images
def find_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictError(f"input={path} does not exist: give an image file or a folder of PNG/JPEG images.")
    found = list_images(path)
    if not found:
        raise PredictError(f"input={path} holds no PNG/JPEG image (searched recursively).")
    return found


# ---------------------------------------------------------------------- scoring
def _autocast(precision: str, device: torch.device):
    """The autocast Lightning's precision plugin used in the run (scores then match the run's)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def score_batch(
    scorer, images_uint8: torch.Tensor, device: torch.device, precision: str, correction: str = "none"
) -> dict[str, torch.Tensor]:
    """Per-image score components of uint8 images, through the run's scorer; ``score`` is the
    primary score (corrected as the run was), ``raw_score`` the scorer's own."""
    from anogan.models.latent_mapping import LatentMapping, initial_latents

    split = AnomalySplit(images_uint8, np.zeros(len(images_uint8), dtype=np.int64), np.arange(len(images_uint8)), 0)
    items = [split[i] for i in range(len(split))]
    x = torch.stack([it["image"] for it in items]).to(device)
    with _autocast(precision, device):
        if isinstance(scorer, LatentMapping):
            keys = torch.tensor([it["key"] for it in items])
            z0 = initial_latents(keys, scorer.generator.latent_dim, scorer.hparams.seed).to(x)
            out = scorer.search(x, z0)
        else:
            out = scorer.score_batch(x)
    out = {k: v.detach().float().cpu() for k, v in out.items()}
    image_complexity = complexity(images_uint8)
    out["raw_score"], out["complexity"] = out["score"].double(), image_complexity.double()
    out["score"] = primary_score(out["score"], image_complexity, correction)
    return out


def _image_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if root.is_dir() and path.is_relative_to(root) else Path(path.name)
    return "__".join(rel.with_suffix("").parts) + ".png"


def predict(
    ckpt: str | Path,
    input: str | Path,
    threshold: float | None = None,
    out: str | Path = "predictions.csv",
    save_images: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
) -> dict:
    """Score every image under ``input`` with the run in ``ckpt``; write the CSV (and images).

    Returns ``{"rows": [...], "skipped": [(path, reason), ...], "threshold": t, "out": csv path}``.
    """
    run_dir, root, out = Path(ckpt).expanduser(), Path(input).expanduser(), Path(out).expanduser()
    if not run_dir.is_dir():
        raise PredictError(f"ckpt={run_dir} is not a folder: give the folder of a finished train.py run.")
    cfg = load_run_config(run_dir)
    generator, discriminator = load_gan(run_dir, cfg)
    scorer = load_scorer(run_dir, cfg, generator, discriminator)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    scorer.to(dev)
    precision = cfg.trainer.get("precision", 32)
    if threshold is None:
        threshold = load_threshold(run_dir)
        if threshold is None:
            log.warning("%s has no metrics.json: no threshold, the label column stays empty (give threshold=...)", run_dir)
    size, channels = int(cfg.data.image_size), int(cfg.data.channels)
    correction = load_correction(run_dir, cfg)
    batch_size = batch_size or int(cfg.mapping.batch_size)
    paths = find_images(root)
    log.info("scoring %d image(s) with the %s scorer of %s", len(paths), cfg.mapping.get("method", "latent"), run_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    image_dir = out.with_name(out.stem + "_images")
    if save_images:
        image_dir.mkdir(exist_ok=True)
    rows, skipped = [], []
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        columns = ("score", "raw_score", "residual", "discrimination", "complexity")
        writer.writerow(["path", *columns, "label"])
        for start in range(0, len(paths), batch_size):
            batch_paths, images = [], []
            for path in paths[start : start + batch_size]:
                try:
                    images.append(read_image(path, size, channels))
                    batch_paths.append(path)
                except ImageError as err:
                    log.warning("skipping %s: %s", path, err)
                    skipped.append((str(path), str(err)))
            if not images:
                continue
            result = score_batch(scorer, torch.stack(images), dev, precision, correction)
            for i, path in enumerate(batch_paths):
                row = {"path": str(path), **{k: result[k][i].item() for k in columns}}
                row["label"] = "" if threshold is None else int(row["score"] >= threshold)
                rows.append(row)
                writer.writerow([row["path"], *(f"{row[k]:.9g}" for k in columns), row["label"]])
            if save_images:
                from torchvision.utils import save_image

                from anogan.report import reconstruction_grid

                with torch.no_grad():
                    generated = generator(result["z"].to(dev)).float().cpu()
                x = torch.stack([im.float().div(127.5).sub(1.0) for im in images])
                for i, path in enumerate(batch_paths):
                    save_image(reconstruction_grid(x[i : i + 1], generated[i : i + 1]), image_dir / _image_name(path, root))
            f.flush()
    n_anom = sum(1 for r in rows if r["label"] == 1)
    log.info(
        "scored %d image(s)%s -> %s",
        len(rows),
        "" if threshold is None else f", {n_anom} anomalous at threshold {threshold:.6g}",
        out,
    )
    return {"rows": rows, "skipped": skipped, "threshold": threshold, "out": out}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        result = predict(**args)
    except UserError as err:
        log.error("%s", err)
        return 2
    print(f"scores: {result['out']} ({len(result['rows'])} image(s))")
    if result["skipped"]:
        print(f"skipped: {len(result['skipped'])} file(s)")
        for path, reason in result["skipped"]:
            print(f"  {path}: {reason}")
    else:
        print("skipped: none")
    return 0 if result["rows"] else 1
