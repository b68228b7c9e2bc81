"""Export a run's encoder scorer for deployment without this framework (``anogan-export``):

    anogan-export ckpt=<run folder or scorer.pt> [out=<folder>] [input=<image folder for the check>]

Writes ``scorer.onnx`` — input ``image`` (N×C×S×S float32 in [-1, 1], i.e. uint8 / 127.5 − 1 after
the resize in ``scorer.json``), outputs ``score`` (the run's primary score), ``raw_score``,
``anomaly_map`` (N×S×S), ``p_value`` and ``label`` (at the run's threshold rule) — and
``scorer.json`` beside it: preprocessing, the correction, the thresholds of every rule (fitted on
the run's validation split) and the validation normals' scores, from which
p = (1 + #{normal scores >= score}) / (n + 1). The graph is the scorer's own forward path followed by
the run's ``Calibration`` module (``ScorerGraph``): no second copy of either. It is checked at once
with ONNX Runtime against the framework's inference path (``anogan.engine.inference.run_scorer`` + the
calibration) on real images (``input``) or, without them, on images made by the run's generator:
the largest relative difference of scores and maps must be <= 1e-4, and p-values and labels must
be equal except at float ties.

The f-AnoGAN encoder scorer (``mapping=encoder``) and the scorers that read D (``mapping=transformations``,
``dfeatures``, ``dcombined``: their memory banks are constants of the graph) are fixed graphs; a
scorer without an anomaly map (``transformations``) exports no ``anomaly_map``. The latent search
(``mapping=latent`` / ``encoder_search``) runs Adam on z with gradients through G at inference time:
it stays PyTorch-only (``predict.py`` with the scorer file), since neither ONNX nor TorchScript
(deprecated in current PyTorch) carries a per-image optimisation loop with autograd.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anogan.config.arguments import ExportConfig, parse_key_values
from anogan.engine.artifact import load_artifact, resolve_path
from anogan.post_processing.calibration import Calibration, complexity_of_model_input
from anogan.post_processing.scores import complexity
from anogan.scorers import DFeatureScorer, DLogitScorer, EncoderScorer, Scorer, TransformationScorer
from anogan.utils.errors import ExportError, UserError
from anogan.utils.io import atomic_path, atomic_write_text

log = logging.getLogger("anogan.deploy.export")
MAX_RELATIVE_DIFFERENCE = 1e-4


class ScorerGraph(nn.Module):
    """image (N×C×S×S in [-1, 1]) -> score, raw_score, anomaly_map (when the run made maps),
    p_value, label: the scorer's own forward path (``Scorer.forward``, ``map_features`` included)
    followed by the run's ``Calibration`` module, unchanged; the image complexity the correction
    needs is computed from the input (``complexity_of_model_input``)."""

    def __init__(self, scorer: Scorer, calibration: Calibration):
        super().__init__()
        self.scorer, self.calibration = scorer, calibration
        self.output_names = ["score", "raw_score", *(["anomaly_map"] if scorer.hparams.maps else []), "p_value", "label"]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.scorer(image)
        post = self.calibration(out, complexity_of_model_input(image))
        return tuple(out["map"] if name == "anomaly_map" else post[name] for name in self.output_names)


def _check_images(scorer: Scorer, payload: dict, input: Path | None, n: int = 32) -> torch.Tensor:
    """uint8 images (N×C×S×S) to check the export on: ``input``'s, or quantised G(z) samples."""
    prep = payload["preprocess"]
    if input is not None:
        from anogan.data.images import read_image
        from anogan.data.listing import list_images

        paths = list_images(Path(input))[0][:n] if Path(input).is_dir() else [Path(input)]
        if not paths:
            raise ExportError(f"input={input} holds no image to check the export on.")
        return torch.stack(
            [read_image(p, prep["image_size"], prep["channels"], prep["resize"], prep["alpha"], prep["downscale"]) for p in paths]
        )
    with torch.no_grad():
        fake = scorer.generator(torch.randn(n, scorer.latent_dim, 1, 1, generator=torch.Generator().manual_seed(0)))
    return ((fake + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def reference_outputs(
    scorer: Scorer, calibration: Calibration, images: torch.Tensor, precision: str = "32-true"
) -> dict[str, np.ndarray]:
    """What the framework itself gives for uint8 ``images``: ``anogan.engine.inference.run_scorer`` (the
    path of the run and of ``predict.py``) on the CPU in ``precision`` (float32 unless given), then the calibration."""
    from anogan.data.splits import AnomalySplit
    from anogan.engine.inference import run_scorer

    dataset = AnomalySplit(images, np.zeros(len(images), dtype=np.int64), np.arange(len(images)), 0)
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": precision,
        "enable_model_summary": False,
        "enable_progress_bar": False,
    }
    results = run_scorer(scorer, dataset, settings, what="images (export check)")
    post = calibration(results, complexity(images))
    out = {k: post[k].numpy() for k in ("score", "raw_score", "p_value", "label")}
    if "map" in results:
        out["anomaly_map"] = results["map"].numpy()
    return out


def compare_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray], calibration: Calibration) -> dict:
    """The largest relative difference of score, raw score and map, and the p-values and labels that
    differ. Scores are relative to themselves, or to the spread (standard deviation) of the
    validation normals' scores where that is larger: a combined score is a sum of z-scores, near 0
    for a typical image, where a difference relative to itself would grow without bound. The map is
    relative to its largest value. A p-value or label may differ only where the reference score lies
    within ``MAX_RELATIVE_DIFFERENCE`` (on the same scale) of a validation normal's score or of the
    threshold (a tie that float rounding can tip); any other difference raises ``ExportError``."""
    normals, threshold = calibration.normal_scores.numpy(), float(calibration.threshold)
    spread = normal_spread(normals)
    diff = max(float(np.max(np.abs(got[k] - want[k]) / np.maximum(np.abs(want[k]), spread))) for k in ("score", "raw_score"))
    if "anomaly_map" in want:
        diff = max(
            diff,
            float(np.max(np.abs(got["anomaly_map"] - want["anomaly_map"]))) / max(float(np.abs(want["anomaly_map"]).max()), 1e-6),
        )
    s = want["score"]
    near_normal = (np.abs(s[:, None] - normals[None, :]) <= MAX_RELATIVE_DIFFERENCE * np.maximum(np.abs(normals), spread)).any(1)
    near_threshold = np.abs(s - threshold) <= MAX_RELATIVE_DIFFERENCE * max(abs(threshold), spread)
    p_differs, label_differs = got["p_value"] != want["p_value"], got["label"] != want["label"]
    if diff > MAX_RELATIVE_DIFFERENCE or (p_differs & ~near_normal).any() or (label_differs & ~near_threshold).any():
        raise ExportError(
            f"ONNX Runtime differs from the scorer and its calibration (largest relative difference {diff:.2e}, allowed "
            f"{MAX_RELATIVE_DIFFERENCE}; {int(p_differs.sum())} p-value(s), {int(label_differs.sum())} label(s) differ): "
            "the export is not usable; score with predict.py and the scorer file instead."
        )
    return {
        "max_relative_difference": diff,
        "p_values_differing": int(p_differs.sum()),
        "labels_differing": int(label_differs.sum()),
    }


def export(ckpt: str | Path, out: str | Path | None = None, input: str | Path | None = None) -> dict:
    """Write ``scorer.onnx`` and ``scorer.json`` into ``out`` (default ``<run>/export``) and check
    the graph with ONNX Runtime against ``reference_outputs``; return ``{"onnx", "json",
    "max_relative_difference", "images"}``. Raises ``ExportError`` / ``ArtifactError`` (one line)."""
    artifact = resolve_path(ckpt)
    scorer, payload = load_artifact(artifact)
    _check_exportable(artifact, scorer)
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'anogan[export]'.") from None
    out = Path(out).expanduser() if out else artifact.parent / "export"
    out.mkdir(parents=True, exist_ok=True)
    calibration = Calibration.from_state(payload["calibration"])
    scorer = scorer.float().eval()
    graph = ScorerGraph(scorer, calibration).eval()
    images = _check_images(scorer, payload, Path(input).expanduser() if input else None)
    x = images.float().div(127.5).sub(1.0)
    onnx_path = write_onnx(graph, x[:2], out / "scorer.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = dict(zip(graph.output_names, session.run(None, {"image": x.numpy()})))
    checked = compare_outputs(got, reference_outputs(scorer, calibration, images), calibration)
    against = "anogan.engine.inference.run_scorer + Calibration"
    report = {"images": len(images), **checked, "against": against, "onnxruntime": ort.__version__}
    report["run_precision"] = run_precision_difference(scorer, calibration, images, got, str(payload["precision"]))
    meta = export_metadata(onnx_path, payload, graph, report, artifact)
    json_path = out / "scorer.json"
    atomic_write_text(json_path, json.dumps(meta, indent=1))
    for warning in calibration.warnings:
        log.warning("%s", warning)
    return {
        "onnx": onnx_path,
        "json": json_path,
        "max_relative_difference": checked["max_relative_difference"],
        "images": len(images),
    }


def normal_spread(normals: np.ndarray) -> float:
    """The standard deviation of the validation normals' scores (at least 1e-6): the scale a score
    difference is measured on where the score itself is smaller."""
    return max(float(np.std(normals)) if len(normals) > 1 else 0.0, 1e-6)


def run_precision_difference(
    scorer: Scorer, calibration: Calibration, images: torch.Tensor, got: dict[str, np.ndarray], precision: str
) -> dict | None:
    """None for a run that scored in 32 or 64 bits (the check above compared against it). For a
    bf16 run (``trainer.precision=auto`` on a CPU or GPU with native bf16, or bf16-*): the float32
    graph against the run's own precision on the CPU (what scores.csv and predict.py give): the
    largest relative difference of the scores (as ``compare_outputs`` measures it) and how many
    p-values and labels differ, also logged as one warning line with the fix. (A 16-bit run scores
    in 32 bits on the CPU, as predict.py does there.)"""
    if not precision.startswith("bf16"):
        return None
    want = reference_outputs(scorer, calibration, images, precision)
    normals = calibration.normal_scores.numpy()
    spread = normal_spread(normals)
    diff = float(np.max(np.abs(got["score"] - want["score"]) / np.maximum(np.abs(want["score"]), spread)))
    p_values, labels = int((got["p_value"] != want["p_value"]).sum()), int((got["label"] != want["label"]).sum())
    log.warning(
        "the run scored in %s and the ONNX graph computes in float32: on these %d images its scores differ from the run's "
        "(scores.csv, predict.py) by up to %.1e relative, %d p-value(s) and %d label(s) differ; for the run's own scores use "
        "predict.py, or re-score in 32 bits (train.py ... gan.checkpoint=<this run> trainer.precision=32) and export that run",
        precision,
        len(images),
        diff,
        p_values,
        labels,
    )
    return {"precision": precision, "max_relative_difference": diff, "p_values_differing": p_values, "labels_differing": labels}


def _check_exportable(artifact: Path, scorer: Scorer) -> None:
    """``ExportError`` (one line) unless ``scorer`` is a forward-only scorer (a fixed graph)."""
    if not isinstance(scorer, (EncoderScorer, TransformationScorer, DFeatureScorer, DLogitScorer)):
        raise ExportError(
            f"{artifact} holds a {type(scorer).__name__}: only the forward-only scorers (mapping=encoder, transformations, "
            "dfeatures, dcombined, dlogit) export to ONNX; "
            "the latent search optimises z at inference and stays PyTorch-only (use predict.py)."
        )


def write_onnx(graph: ScorerGraph, example: torch.Tensor, path: Path) -> Path:
    """``graph`` traced on ``example`` (N×C×S×S) and written to ``path`` as ONNX (atomically: input
    ``image``, the graph's outputs, the batch axis ``n`` dynamic). Raises ``WriteError``."""
    names = graph.output_names
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["image"],
            output_names=names,
            dynamic_axes={name: {0: "n"} for name in ["image", *names]},
        )
    return path


def export_metadata(onnx_path: Path, payload: dict, graph: ScorerGraph, checked: dict, artifact: Path) -> dict:
    """``scorer.json``: the graph's input and outputs, the run's preprocessing and calibration (the
    correction, every rule's threshold, the validation normals' scores for p-values), the check's
    result ``checked`` and the source scorer file."""
    calibration: Calibration = graph.calibration
    cal = calibration.state()
    return {
        "onnx": onnx_path.name,
        "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "range": "[-1, 1] = uint8 / 127.5 - 1"},
        "preprocess": payload["preprocess"],
        "outputs": {
            "score": "primary anomaly score (higher = more anomalous), float64",
            "raw_score": "scorer's own score (or the combined components), float64",
            **({"anomaly_map": "N x S x S, at the model's resolution"} if "anomaly_map" in graph.output_names else {}),
            "p_value": "conformal p-value against the validation normals, float64",
            "label": f"1 = anomalous: score >= the {calibration.rule} threshold, int64",
        },
        "correction": cal["correction"],
        "thresholds": cal["thresholds"],
        "threshold_rule": cal["threshold_rule"],
        "target_fpr": cal["target_fpr"],
        "combine": None
        if cal["combine"] is None
        else {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in cal["combine"].items()},
        "normal_scores": [float(v) for v in cal["normal_scores"]],
        "p_value": "(1 + #{normal_scores >= score}) / (len(normal_scores) + 1)",
        "warnings": calibration.warnings,
        "checked": checked,
        "source": str(artifact.resolve()),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    usage = "usage: anogan-export ckpt=<run folder or scorer.pt> [out=<folder>] [input=<images>]"
    try:
        args = parse_key_values(sys.argv[1:] if argv is None else argv, ExportConfig, usage, ExportError)
        result = export(args.ckpt, args.out, args.input)
    except UserError as err:
        log.error("%s", err)
        return 2
    print(
        f"exported {result['onnx']} and {result['json']}: ONNX Runtime matches PyTorch on {result['images']} images "
        f"(max relative difference {result['max_relative_difference']:.1e})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
