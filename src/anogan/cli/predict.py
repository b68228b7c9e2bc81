"""Score new images with a finished run's scorer file (``anogan-predict`` or ``python predict.py``):

    python predict.py ckpt=<run folder or scorer.pt> input=<folder or image> [threshold=fpr|f1|youden|<number>]
                      [out=<csv>] [maps=true] [save_images=true] [device=auto|cpu|cuda] [batch_size=<int>]

A thin command line over the Python API (``anogan.deploy.api``: ``anogan.load(ckpt).predict(input)``).
Everything comes from the one scorer file (``anogan.engine.artifact``): networks, scorer settings,
preprocessing, the correction resolved on the run's validation split, the thresholds of every rule
and the validation normals' scores for p-values. Images are read by the same reader as training
(``anogan.data.reading``, resized by ``anogan.data.images`` with the run's resize policy) and scored
through the same path as the run's stage 2
(``anogan.engine.inference.run_scorer``: ``Trainer.predict``), so an image of the run's evaluation set
gets the score it got in the run. Arguments are read with Hydra's override grammar into a structured
config (``PredictConfig``, ``anogan.config.arguments``).

Output (default ``<run folder>/predictions/<input name>.csv``; never the current folder): path,
score (the run's primary score), p_value (conformal, against the validation normals), label
(1 = anomalous at the threshold), raw_score, the scorer's components (residual, discrimination; or
transformations, dfeatures, dpatches for the scorers that read D), complexity, steps, notes (what
reading the image interpreted: transparency flattened, a float range assumed, a low 16-bit range,
frames dropped, channels converted, a resize; ``anogan.data.notes``). The log says it too: one line
for a single image, one summary line (counts per kind) for a folder. With ``maps=true``: per image the
anomaly map at the image's own size as ``.npy`` (float32) and an overlay PNG in ``<csv name>_maps/``,
drawn over the model's own input (the pixels scored, at the model's size); with
``save_images=true``: original | G(z) | |x − G(z)| PNGs. Files that cannot be read are skipped and
listed with their reason; they never stop the batch.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from anogan.config.arguments import PredictConfig, parse_key_values
from anogan.config.fields import parse_threshold
from anogan.data import notes as read_notes
from anogan.deploy.api import Detector, load
from anogan.engine.artifact import resolve_path
from anogan.utils.errors import InputError, PredictError, UserError
from anogan.utils.io import atomic_save_image, atomic_write, atomic_write_text

log = logging.getLogger("anogan.cli.predict")

USAGE = (
    "usage: anogan-predict ckpt=<run folder or scorer.pt> input=<folder or image> [threshold=fpr|f1|youden|<number>] "
    "[out=<csv path>] [maps=true] [save_images=true] [device=auto|cpu|cuda] [batch_size=<int>]"
)


def parse_args(argv: list[str]) -> dict:
    """``key=value`` arguments (Hydra's override grammar, ``PredictConfig``) into ``predict``'s
    keyword arguments; ``PredictError`` (one line) on a bad one."""
    args = dict(parse_key_values(argv, PredictConfig, USAGE, PredictError))
    if args["threshold"] is not None:  # checked by PredictConfig's rule: a rule's name or a finite number
        args["threshold"] = parse_threshold(args["threshold"])
    return args


def _name(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if root.is_dir() and path.is_relative_to(root) else Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def _write_maps(
    folder: Path, name: str, model_input: torch.Tensor, input_map: torch.Tensor, full: np.ndarray, vmax: float
) -> None:
    """The map at the image's own size (``full``) as .npy, and an overlay PNG: ``input_map`` (S×S)
    over the model's own input (uint8 C×S×S, the pixels scored)."""
    from matplotlib import colormaps
    from PIL import Image

    pixels = model_input.permute(1, 2, 0).numpy()
    rgb = Image.fromarray(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels)
    atomic_write(folder / f"{name}.npy", lambda f: np.save(f, full.astype(np.float32)))
    heat = (colormaps["jet"](np.clip(input_map.numpy() / max(vmax, 1e-12), 0, 1))[..., :3] * 255).astype(np.uint8)
    overlay = Image.blend(rgb, Image.fromarray(heat), 0.45)
    atomic_write(folder / f"{name}_overlay.png", lambda f: overlay.save(f, format="PNG"))


def write_csv(rows: list[dict], columns: tuple[str, ...], out: Path) -> None:
    """``path`` and ``columns`` per row (floats to 9 significant digits), written atomically (UTF-8).
    Raises ``WriteError`` (one line) when it cannot be written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", *columns])
    for row in rows:
        writer.writerow([row["path"], *(f"{row[k]:.9g}" if isinstance(row[k], float) else row[k] for k in columns)])
    atomic_write_text(out, text.getvalue())


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
    "warnings": [...]}`` (warnings: e.g. the threshold used is infinite and flags nothing).
    Raises ``PredictError`` / ``InputError`` / ``ArtifactError`` (one line each) for unusable arguments or files.
    """
    artifact = resolve_path(ckpt)
    root = Path(input).expanduser()
    out = Path(out).expanduser() if out else artifact.parent / "predictions" / f"{root.stem or 'input'}.csv"
    detector: Detector = load(artifact, device=device, batch_size=batch_size)
    if not root.exists():
        raise PredictError(f"input={root} does not exist: give an image file or a folder of images.")
    try:
        result = detector.predict(root, threshold=threshold, maps=maps, reconstructions=save_images, errors="skip", progress=True)
    except InputError as err:
        raise PredictError(f"input={err}") from None
    if result.skipped:
        log.warning("skipping %d file(s) that cannot be used (listed at the end)", len(result.skipped))
    rows = [{"path": row["source"], **{k: row[k] for k in result.columns}} for row in result.rows]
    paths = [Path(row["path"]) for row in rows]
    if result.maps and result.model_maps is not None:
        folder = out.with_name(out.stem + "_maps")
        folder.mkdir(parents=True, exist_ok=True)
        vmax = float(np.quantile(np.concatenate([m.ravel() for m in result.maps])[:10_000_000], 0.99))
        for i, (path, full) in enumerate(zip(paths, result.maps)):
            _write_maps(folder, _name(path, root), result.inputs[i], result.model_maps[i], full, vmax)
    if save_images and result.reconstructions is not None:
        from anogan.reporting.figures import reconstruction_grid

        folder = out.with_name(out.stem + "_images")
        folder.mkdir(parents=True, exist_ok=True)
        x = result.inputs.float().div(127.5).sub(1.0)
        for i, path in enumerate(paths):
            grid = reconstruction_grid(x[i : i + 1], result.reconstructions[i : i + 1])
            atomic_save_image(grid, folder / f"{_name(path, root)}.png")
    write_csv(rows, result.columns, out)
    noted = [(row["path"], notes) for row, notes in zip(rows, result.notes) if notes]
    input_lines = {read_notes.line(path, notes) for path, notes in noted}
    if root.is_dir() and len(noted) > 1:  # a folder: one line, counts per kind
        log.warning("%s", read_notes.summary(result.notes, f"see the notes column of {out}"))
    else:
        for path, notes in noted:
            log.warning("%s", read_notes.line(path, notes))
    for warning in result.warnings:
        if warning not in input_lines:
            log.warning("%s", warning)
    t = result.threshold
    n_anom = sum(1 for r in rows if r["label"] == 1)
    log.info(
        "scored %d image(s), %d anomalous at threshold %s -> %s", len(rows), n_anom, f"{t:.6g}" if t is not None else "-", out
    )
    return {"rows": rows, "skipped": result.skipped, "threshold": t, "out": out, "warnings": result.warnings}


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
