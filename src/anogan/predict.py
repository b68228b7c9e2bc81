"""Score new images with a finished run's scorer file (``anogan-predict`` or ``python predict.py``):

    python predict.py ckpt=<run folder or scorer.pt> input=<folder or image> [threshold=fpr|f1|youden|<number>]
                      [out=<csv>] [maps=true] [save_images=true] [device=auto|cpu|cuda] [batch_size=<int>]

Everything comes from the one scorer file (``anogan.artifact``): networks, scorer settings,
preprocessing, the correction resolved on the run's validation split, the thresholds of every rule
and the validation normals' scores for p-values. Images are read by the same reader as training
(``anogan.data.images.read_image``, with the run's resize policy) and scored through the same path as the run's stage 2
(``anogan.inference.run_scorer``: ``Trainer.predict``), so an image of the run's evaluation set
gets the score it got in the run.

Output (default ``<run folder>/predictions/<input name>.csv``; never the current folder): path,
score (the run's primary score), p_value (conformal, against the validation normals), label
(1 = anomalous at the threshold), raw_score, the scorer's components (residual, discrimination; or
transformations, dfeatures, dpatches for the scorers that read D), complexity, steps. With
``maps=true``: per image the anomaly map at the image's own size as ``.npy`` (float32) and an
overlay PNG in ``<csv name>_maps/``; with ``save_images=true``: original | G(z) | |x − G(z)| PNGs.
Files that cannot be read are skipped and listed with their reason; they never stop the batch.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anogan.artifact import load_artifact, resolve_path
from anogan.calibration import Calibration
from anogan.data.images import ImageError, list_images, read_image
from anogan.data.splits import AnomalySplit
from anogan.errors import UserError
from anogan.inference import run_scorer
from anogan.scores import complexity, score_components

log = logging.getLogger("anogan.predict")

USAGE = (
    "usage: anogan-predict ckpt=<run folder or scorer.pt> input=<folder or image> [threshold=fpr|f1|youden|<number>] "
    "[out=<csv path>] [maps=true] [save_images=true] [device=auto|cpu|cuda] [batch_size=<int>]"
)
DEFAULTS = {
    "ckpt": None,
    "input": None,
    "threshold": None,
    "out": None,
    "maps": False,
    "save_images": False,
    "device": "auto",
    "batch_size": None,
}
COLUMNS = (
    "score",
    "p_value",
    "label",
    "raw_score",
    "residual",
    "discrimination",
    "complexity",
    "steps",
)  # reconstruction scorers


class PredictError(UserError):
    """The command line or the scorer file cannot be used; the message says how to fix it."""


def _bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise PredictError(f"{key}={value!r}: use true or false")


def parse_args(argv: list[str]) -> dict:
    """``key=value`` arguments (Hydra style) into the settings dict; ``PredictError`` on a bad one."""
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
    if args["threshold"] is not None:
        from anogan.metrics import THRESHOLD_RULES

        t = str(args["threshold"]).strip().lower()
        try:
            args["threshold"] = float(t)
        except ValueError:
            if t not in THRESHOLD_RULES:
                raise PredictError(f"threshold={args['threshold']!r}: use fpr, f1, youden or a number") from None
            args["threshold"] = t
    for key in ("maps", "save_images"):
        args[key] = _bool(key, args[key])
    if args["device"] not in ("auto", "cpu", "cuda"):
        raise PredictError(f"device={args['device']!r}: use auto, cpu or cuda")
    if args["batch_size"] is not None:
        try:
            args["batch_size"] = int(args["batch_size"])
            if args["batch_size"] < 1:
                raise ValueError
        except ValueError:
            raise PredictError(f"batch_size={args['batch_size']!r}: use a whole number >= 1") from None
    return args


def find_images(path: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The candidate image files under ``path`` (or ``path`` itself) and the files skipped while
    listing (broken or looping links, duplicates, non-images) with their reasons."""
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise PredictError(f"input={path} does not exist: give an image file or a folder of images.")
    found, skipped = list_images(path)
    if not found:
        raise PredictError(f"input={path} holds no image (searched recursively).")
    return found, [(entry["file"], entry["reason"]) for entry in skipped]


def trainer_settings(device: str, precision: str) -> dict:
    """Trainer arguments for ``device`` (``auto`` | ``cpu`` | ``cuda``) in the run's precision."""
    if device == "cuda" and not torch.cuda.is_available():
        raise PredictError("device=cuda but this machine has no usable CUDA GPU: use device=cpu (or auto).")
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[device]
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu and str(precision).startswith("16"):
        log.info("the run scored in precision %s, which needs a GPU: scoring in 32-bit on the CPU", precision)
        precision = "32-true"
    return {"accelerator": accelerator, "devices": 1, "precision": precision, "enable_model_summary": False}


def _name(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if root.is_dir() and path.is_relative_to(root) else Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def _write_maps(folder: Path, name: str, image_path: Path, amap: torch.Tensor, vmax: float) -> None:
    """The map at the image's own size as .npy, and an overlay PNG."""
    from matplotlib import colormaps
    from PIL import Image, ImageOps

    with Image.open(image_path) as img:
        img = ImageOps.exif_transpose(img)
        rgb = img.convert("RGB")
    w, h = rgb.size
    full = F.interpolate(amap[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    tmp = folder / f".{name}.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, full.astype(np.float32))
    os.replace(tmp, folder / f"{name}.npy")
    heat = (colormaps["jet"](np.clip(full / max(vmax, 1e-12), 0, 1))[..., :3] * 255).astype(np.uint8)
    overlay = Image.blend(rgb, Image.fromarray(heat), 0.45)
    tmp = folder / f".{name}_overlay.png.tmp"
    overlay.save(tmp, format="PNG")
    os.replace(tmp, folder / f"{name}_overlay.png")


def predict(
    ckpt: str | Path,
    input: str | Path,
    threshold: str | float | None = None,
    out: str | Path | None = None,
    maps: bool = False,
    save_images: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
) -> dict:
    """Score every image under ``input`` with the scorer file of ``ckpt``; write the CSV (and maps).

    Returns ``{"rows": [...], "skipped": [(path, reason), ...], "threshold": t, "out": csv path,
    "warnings": [...]}`` (warnings: the calibration's, when the threshold used is infinite).
    Raises ``PredictError`` / ``ArtifactError`` (one line each) for unusable arguments or files.
    """
    artifact = resolve_path(ckpt)
    root = Path(input).expanduser()
    out = Path(out).expanduser() if out else artifact.parent / "predictions" / f"{root.stem or 'input'}.csv"
    scorer, payload = load_artifact(artifact)
    if batch_size:
        scorer.hparams.batch_size = batch_size
    prep, calibration = payload["preprocess"], Calibration.from_state(payload["calibration"])
    settings = trainer_settings(device, payload["precision"])
    paths, skipped = find_images(root)

    images, kept = [], []
    for path in paths:
        try:
            images.append(read_image(path, prep["image_size"], prep["channels"], resize=prep.get("resize", "stretch")))
            kept.append(path)
        except ImageError as err:
            skipped.append((str(path), str(err)))
    if skipped:
        log.warning("skipping %d file(s) that cannot be used (listed at the end)", len(skipped))
    rows: list[dict] = []
    t = None
    names = COLUMNS
    if kept:
        uint8 = torch.stack(images)
        dataset = AnomalySplit(uint8, np.zeros(len(kept), dtype=np.int64), np.arange(len(kept)), 0)
        results = run_scorer(scorer, dataset, settings, what="images")
        post = calibration(results, complexity(uint8), threshold)
        t = float(post["threshold"])
        columns = {
            "score": post["score"],
            "p_value": post["p_value"],
            "label": post["label"],
            "raw_score": post["raw_score"],
            **{k: results[k] for k in score_components(results)},
            "complexity": complexity(uint8),
            "steps": results.get("steps", torch.zeros(len(kept), dtype=torch.long)),
        }
        names = tuple(columns)  # a scorer that reads D has its own components instead of residual/discrimination
        for i, path in enumerate(kept):
            rows.append({"path": str(path), **{k: columns[k][i].item() for k in names}})
        if maps and "map" in results:
            folder = out.with_name(out.stem + "_maps")
            folder.mkdir(parents=True, exist_ok=True)
            vmax = float(torch.quantile(results["map"].flatten()[:10_000_000].float(), 0.99))
            for i, path in enumerate(kept):
                _write_maps(folder, _name(path, root), path, results["map"][i], vmax)
        if save_images and "z" not in results:
            log.warning("save_images=true: %s has no reconstruction G(z) to save; writing none", type(scorer).__name__)
        elif save_images:
            from anogan.io import atomic_save_image
            from anogan.report import reconstruction_grid

            folder = out.with_name(out.stem + "_images")
            folder.mkdir(parents=True, exist_ok=True)
            with torch.no_grad():
                p = next(scorer.generator.parameters())
                generated = scorer.generator(results["z"].to(p)).float().cpu()
            x = uint8.float().div(127.5).sub(1.0)
            for i, path in enumerate(kept):
                atomic_save_image(reconstruction_grid(x[i : i + 1], generated[i : i + 1]), folder / f"{_name(path, root)}.png")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *names])
        for row in rows:
            writer.writerow([row["path"], *(f"{row[k]:.9g}" if isinstance(row[k], float) else row[k] for k in names)])
    os.replace(tmp, out)
    n_anom = sum(1 for r in rows if r["label"] == 1)
    warnings = calibration.warnings if t is not None and math.isinf(t) else []
    for warning in warnings:  # never "0 anomalous at threshold inf" without saying why
        log.warning("%s", warning)
    log.info(
        "scored %d image(s), %d anomalous at threshold %s -> %s", len(rows), n_anom, f"{t:.6g}" if t is not None else "-", out
    )
    return {"rows": rows, "skipped": skipped, "threshold": t, "out": out, "warnings": warnings}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        result = predict(**args)
    except UserError as err:
        log.error("%s", err)
        return 2
    print(f"scores: {result['out']} ({len(result['rows'])} image(s))")
    print(f"skipped: {len(result['skipped'])} file(s)" if result["skipped"] else "skipped: none")
    for path, reason in result["skipped"]:
        print(f"  {path}: {reason}")
    return 0 if result["rows"] else 1
