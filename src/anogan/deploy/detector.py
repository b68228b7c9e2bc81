"""A finished run's scorer in memory (``Detector``, built by ``anogan.load``) and the table of its
scores (``Predictions``).

Scoring uses only the run's scorer file (``anogan.engine.artifact``) and the same steps as the run's
own evaluation, so an image of the run's evaluation set gets the score it has in ``scores.csv``:

1. every input becomes a uint8 H×W×C array by the rules of ``anogan.data.reading`` (files and PIL
   images: ``read_pixels`` / ``read_pil``; numpy arrays and tensors: ``read_array``; transparency by
   the run's ``data.alpha``; ``anogan.deploy.inputs``), then the model's input by the run's
   preprocessing (``anogan.data.images``: ``make_square`` with the run's resize policy,
   ``to_model_input`` with its downscale rule). What the reader had to interpret is said once per
   input (``anogan.data.notes``): ``notes`` of each row and one line each in ``Predictions.warnings``;
2. the scorer runs through the one inference path (``anogan.engine.inference.run_scorer``:
   ``Trainer.predict``);
3. the run's calibration turns its outputs into the primary score, the p-value and the label
   (``Detector.postprocess``, the one place this happens)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from anogan.config.arguments import BATCH_SIZE, DEVICE
from anogan.config.choices import THRESHOLD_RULES
from anogan.config.fields import check, parse_threshold
from anogan.data import notes as read_notes
from anogan.data.images import make_square, model_input_notes, to_model_input
from anogan.data.splits import AnomalySplit
from anogan.deploy.inputs import Images, ReadImage, collect
from anogan.engine.artifact import load_artifact
from anogan.engine.inference import run_scorer
from anogan.post_processing.calibration import Calibration
from anogan.post_processing.scores import complexity
from anogan.utils.errors import InputError, ThresholdRuleError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("anogan.deploy.detector")

COLUMNS = (
    "score",
    "p_value",
    "label",
    "raw_score",
    "residual",
    "discrimination",
    "complexity",
    "steps",
    "notes",
)  # a reconstruction scorer's
NOT_COMPONENTS = ("score", "row", "steps", "notes")  # per-image outputs of a scorer that are not score components


@dataclass
class Predictions:
    """The scores of one ``Detector.predict`` call, one row per image in input order.

    ``rows``: dicts with ``source`` (the file's path, or ``input[i]`` / ``input[i][j]`` for the i-th
    in-memory input and row j of a tensor batch), then ``columns``: ``score`` (the run's primary
    score), ``p_value`` (conformal, against the run's validation normals), ``label`` (1 = anomalous:
    ``score >= threshold``), ``raw_score``, the scorer's components (``residual``,
    ``discrimination`` for the reconstruction scorers: ``COLUMNS``), ``complexity``, ``steps``,
    ``notes`` (what reading the input interpreted, ``anogan.data.notes``; "" for nothing).
    ``threshold``: the number used, from ``rule`` (a rule name or the number given).
    ``maps``: with ``maps=True``, per image the anomaly map (float32 H×W) on the image's own pixels
    (``Detector.map_at_size``: the run's resize policy undone); with ``maps="model"``, at the model's
    resolution (float32 S×S, over ``inputs``).
    ``inputs``: the model's inputs (uint8 N×C×S×S); ``model_maps``: with ``maps`` set, the maps on
    those inputs (float32 N×S×S, what overlays are drawn on); ``reconstructions``: with
    ``reconstructions=True``, G(z) (float32 N×C×S×S in [-1, 1], the model's scale).
    ``skipped``: ``(path, reason)`` of files that could not be used. ``warnings``: one line each:
    first one per input whose pixels were interpreted (``"<source>: <notes>"``, input order), then
    the others, e.g. when the threshold is unreachable (infinite: nothing is flagged).
    """

    rows: list[dict]
    columns: tuple[str, ...]
    threshold: float | None
    rule: str | float
    inputs: torch.Tensor
    maps: list[np.ndarray] | None = None
    reconstructions: torch.Tensor | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    model_maps: torch.Tensor | None = None
    notes: list[list[read_notes.Note]] = field(default_factory=list)  # per row: what its reading interpreted

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array (e.g. ``"score"``, ``"label"``)."""
        return np.array([row[name] for row in self.rows])

    def to_records(self) -> list[dict]:
        """The rows as a list of plain dicts (copies)."""
        return [dict(row) for row in self.rows]

    def to_pandas(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame, one row per image: ``source`` then :attr:`columns`."""
        import pandas as pd  # imported on use: it adds start-up time to every command otherwise

        return pd.DataFrame(self.to_records(), columns=["source", *self.columns])


def trainer_settings(device: str, precision: str) -> dict:
    """Trainer arguments for ``device`` (``auto`` | ``cpu`` | ``cuda``) in the run's precision
    (a 16-bit run scores in 32-bit on the CPU). Raises ``InputError`` for an unusable device."""
    check("device", device, DEVICE, InputError)
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device=cuda but this machine has no usable CUDA GPU: use device=cpu (or auto).")
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[device]
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu and str(precision).startswith("16"):
        log.info("the run scored in precision %s, which needs a GPU: scoring in 32-bit on the CPU", precision)
        precision = "32-true"
    return {"accelerator": accelerator, "devices": 1, "precision": precision, "enable_model_summary": False}


def check_rule(threshold: object) -> str | float | None:
    """``threshold`` as ``Calibration`` takes it: None (the run's rule), a rule's name or a float
    (``anogan.config.fields.parse_threshold``). Raises ``InputError`` (one line) otherwise."""
    if threshold is None:
        return None
    try:
        return parse_threshold(threshold)
    except ThresholdRuleError as err:
        raise InputError(str(err)) from None


class Detector:
    """A finished run's scorer, ready to score images in memory (build with ``anogan.load``).

    Attributes: ``artifact`` (the scorer file), ``image_size``, ``channels``, ``resize``, ``alpha``,
    ``downscale`` (the run's preprocessing: scorer files written before ``alpha`` / ``downscale``
    existed read ``black`` / ``bilinear``, as their runs did), ``rule`` (the run's threshold rule), ``thresholds`` (every rule's threshold,
    fitted on the run's validation split), ``provenance`` (where the run came from).
    """

    def __init__(self, artifact: Path, device: str = "auto", batch_size: int | None = None, data: bytes | None = None):
        self.artifact = Path(artifact)
        self.scorer, self.payload = load_artifact(self.artifact, data)  # data: the file's bytes, already read
        check("batch_size", batch_size, BATCH_SIZE, InputError)
        if batch_size is not None:
            self.scorer.hparams.batch_size = batch_size
        prep = self.payload["preprocess"]
        self.image_size, self.channels = int(prep["image_size"]), int(prep["channels"])
        self.resize, self.alpha, self.downscale = prep["resize"], prep["alpha"], prep["downscale"]
        self.calibration = Calibration.from_state(self.payload["calibration"])
        self.rule = self.calibration.rule
        self.thresholds = {k: self.calibration.thresholds[k] for k in THRESHOLD_RULES}
        self.provenance = dict(self.payload.get("provenance", {}))
        self.trainer_kwargs = trainer_settings(device, self.payload["precision"])

    def __repr__(self) -> str:
        return (
            f"Detector({self.artifact}, {type(self.scorer).__name__}, {self.channels}×{self.image_size}×{self.image_size}, "
            f"resize={self.resize}, rule={self.rule})"
        )

    def model_input(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 H×W×C pixels -> the model's input, uint8 C×S×S (the run's resize policy and size)."""
        return to_model_input(make_square(pixels, self.resize), self.image_size, self.channels, self.downscale)

    def notes(self, item: ReadImage) -> list[read_notes.Note]:
        """What reading ``item`` and making it the model's input interpreted (``anogan.data.notes``)."""
        shape = item.pixels.shape
        return [*item.notes, *model_input_notes(shape, self.image_size, self.channels, self.resize, self.downscale)]

    def score(self, images: torch.Tensor, progress: bool = False) -> dict[str, torch.Tensor]:
        """Raw outputs of the scorer (``score``, ``residual``, ``discrimination``, ``z``, ``steps``,
        ``map``: N×S×S when the run computes maps) for model inputs ``images`` (uint8 N×C×S×S),
        through the one inference path (``anogan.engine.inference.run_scorer``)."""
        dataset = AnomalySplit(images, np.zeros(len(images), dtype=np.int64), np.arange(len(images)), 0)
        kwargs = {**self.trainer_kwargs, "enable_progress_bar": progress}
        return run_scorer(self.scorer, dataset, kwargs, what="images")

    def postprocess(
        self, results: dict[str, torch.Tensor], images: torch.Tensor, threshold: str | float | None = None
    ) -> dict[str, Any]:
        """The run's calibration (``anogan.post_processing.calibration.Calibration``, from the scorer file) applied to
        the scorer's outputs for model inputs ``images`` (uint8 N×C×S×S): ``raw_score``, ``score``
        (primary), ``p_value``, ``label``, ``complexity`` (N,), ``threshold`` (a float) and
        ``warnings`` (one line each; when the threshold is infinite: the calibration's own reason, e.g.
        an unreachable target false-positive rate, else a line saying nothing is flagged). The one
        place this is done."""
        image_complexity = complexity(images)
        post = self.calibration(results, image_complexity, threshold)
        t = float(post["threshold"])
        warnings = []
        if math.isinf(t):
            own = self.calibration.warnings if threshold in (None, "fpr") else []
            warnings = own or [
                f"the threshold ({threshold if threshold is not None else self.rule}) is infinite: no image is flagged; "
                "choose another rule or a number (threshold=...)"
            ]
        return {**post, "complexity": image_complexity, "threshold": t, "warnings": warnings}

    def predict(
        self,
        images: Images,
        threshold: str | float | None = None,
        maps: bool | Literal["model"] = False,
        reconstructions: bool = False,
        errors: Literal["raise", "skip"] = "raise",
        progress: bool = False,
    ) -> Predictions:
        """Score ``images``: a path, a folder (searched recursively), a PIL image, a numpy array
        (H×W or H×W×C; uint8, uint16, or float in [0, 1]), a tensor (C×H×W or N×C×H×W, same
        dtypes, channel first), or a list of any of these. Colour and size are converted to the
        run's (``Detector.model_input``).

        ``threshold``: ``fpr`` | ``f1`` | ``youden`` (a rule fitted on the run's validation split;
        any case, spaces around) or a finite number; default the run's rule. ``maps``: add each image's anomaly map at its own size
        (``True``) or at the model's resolution, S×S, before the resize policy is undone (``"model"``).
        ``reconstructions``: add G(z). ``errors``: ``"raise"`` (default) or ``"skip"`` for files
        that cannot be read (listed in ``Predictions.skipped``). ``progress``: show a progress bar.

        Raises ``InputError`` (one line) for an input of the wrong type, shape, dtype or range, a
        missing file, an unreadable file (``errors="raise"``) or a bad ``threshold``.
        """
        rule = check_rule(threshold)
        if errors not in ("raise", "skip"):
            raise InputError(f"errors={errors!r}: use raise or skip")
        if maps not in (True, False, "model"):
            raise InputError(f"maps={maps!r}: use True, False or 'model'")
        items, skipped = collect(images, errors, self.alpha)
        for path, reason in skipped:
            log.info("skipped %s: %s", path, reason)
        rule_used = self.rule if rule is None else rule
        if not items:
            empty = torch.zeros(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
            return Predictions([], COLUMNS, None, rule_used, empty, [] if maps else None, None, skipped)
        inputs = torch.stack([self.model_input(item.pixels) for item in items])
        results = self.score(inputs, progress)
        post = self.postprocess(results, inputs, rule)
        columns = self._columns(results, post, len(items))
        notes = [self.notes(item) for item in items]
        rows = [
            {"source": item.source, **{k: v[i].item() for k, v in columns.items()}, "notes": read_notes.text(notes[i])}
            for i, item in enumerate(items)
        ]
        warnings = [read_notes.line(item.source, n) for item, n in zip(items, notes) if n] + list(post["warnings"])
        out_maps, model_maps = self._maps(results, items, maps, warnings) if maps else (None, None)
        generated = self._reconstructions(results, warnings) if reconstructions else None
        return Predictions(
            rows,
            (*columns, "notes"),
            post["threshold"],
            rule_used,
            inputs,
            out_maps,
            generated,
            skipped,
            warnings,
            model_maps,
            notes,
        )

    @staticmethod
    def _columns(results: dict[str, torch.Tensor], post: dict[str, Any], n: int) -> dict[str, torch.Tensor]:
        """The table's numeric columns, each (n,), in order: the calibrated scores, the scorer's own
        float components (``residual``, ``discrimination``, ...), ``complexity`` and ``steps``."""
        components = [k for k, v in results.items() if k not in NOT_COMPONENTS and v.dim() == 1 and v.is_floating_point()]
        return {
            "score": post["score"],
            "p_value": post["p_value"],
            "label": post["label"],
            "raw_score": post["raw_score"],
            **{k: results[k] for k in components},
            "complexity": post["complexity"],
            "steps": results.get("steps", torch.zeros(n, dtype=torch.long)),
        }

    def _maps(
        self, results: dict[str, torch.Tensor], items: list[ReadImage], maps: bool | str, warnings: list[str]
    ) -> tuple[list[np.ndarray] | None, torch.Tensor | None]:
        """(``Predictions.maps``, ``Predictions.model_maps``): per image the map at its own size
        (``maps=True``) or at the model's resolution (``"model"``), and the N×S×S maps on the model's
        inputs; (None, None) and a line in ``warnings`` when the scorer computes no maps."""
        if "map" not in results:
            warnings.append("this run's scorer computes no anomaly maps (mapping.maps=false): maps is None")
            return None, None
        model_maps = results["map"].float().cpu()
        if maps == "model":
            return [results["map"][i].float().cpu().numpy() for i in range(len(items))], model_maps
        return [self.map_at_size(results["map"][i], item.pixels.shape[:2]) for i, item in enumerate(items)], model_maps

    def _reconstructions(self, results: dict[str, torch.Tensor], warnings: list[str]) -> torch.Tensor | None:
        """G(z) of the scorer's latents (``generate``), or None and a line in ``warnings`` when the
        scorer has no z."""
        if "z" in results:
            return self.generate(results["z"])
        warnings.append(f"{type(self.scorer).__name__} makes no reconstruction G(z): reconstructions is None")
        return None

    def map_at_size(self, amap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """A model-resolution map (S×S) on the image's own pixels (``size`` = H, W): float32 H×W.
        Undoes the run's resize policy (``make_square``): ``stretch`` resizes the map to H×W;
        ``crop`` resizes it to the centred min(H, W) square and leaves 0 where the model saw nothing;
        ``pad`` resizes it to the max(H, W) square and cuts the image's part out (bilinear throughout)."""
        h, w = int(size[0]), int(size[1])

        def resized(height: int, width: int) -> torch.Tensor:
            return F.interpolate(amap[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]

        if self.resize == "stretch" or h == w:
            full = resized(h, w)
        elif self.resize == "crop":
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            full = torch.zeros(h, w)
            full[top : top + side, left : left + side] = resized(side, side)
        else:  # pad
            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            full = resized(side, side)[top : top + h, left : left + w]
        return full.numpy().astype(np.float32)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G(z) for latents ``z`` (N×latent): float32 N×C×S×S in [-1, 1], on the CPU."""
        with torch.no_grad():
            p = next(self.scorer.generator.parameters())
            return self.scorer.generator(z.to(p)).float().cpu()
