"""Export a run's encoder scorer for deployment without this framework (``anogan-export``):

    anogan-export ckpt=<run folder or scorer.pt> [out=<folder>] [input=<image folder for the check>]

Writes ``scorer.onnx`` — input ``image`` (N×C×S×S float32 in [-1, 1], i.e. uint8 / 127.5 − 1 after
the resize in ``scorer.json``), outputs ``score`` (the run's primary score), ``raw_score`` and
``anomaly_map`` (N×S×S) — and ``scorer.json`` beside it: preprocessing, the correction, the
thresholds of every rule (fitted on the run's validation split) and the validation normals' scores,
from which p = (1 + #{normal scores >= score}) / (n + 1). The export is checked at once with ONNX
Runtime against PyTorch on real images (``input``) or, without them, on images made by the run's
generator; the largest relative difference is printed and must be <= 1e-4.

The f-AnoGAN encoder scorer (``mapping=encoder``) and the scorers that read D (``mapping=transformations``,
``dfeatures``, ``dcombined``: their memory banks are constants of the graph) are fixed graphs; a
scorer without an anomaly map (``transformations``) exports a map of zeros. The latent search
(``mapping=latent`` / ``encoder_search``) runs Adam on z with gradients through G at inference time:
it stays PyTorch-only (``predict.py`` with the scorer file), since neither ONNX nor TorchScript
(deprecated in current PyTorch) carries a per-image optimisation loop with autograd.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anogan.artifact import load_artifact, resolve_path
from anogan.errors import UserError
from anogan.scorers import DFeatureScorer, EncoderScorer, TransformationScorer
from anogan.scorers.base import anomaly_map
from anogan.scorers.encoder import izif_components

log = logging.getLogger("anogan.export")
MAX_RELATIVE_DIFFERENCE = 1e-4


class ExportError(UserError):
    """The scorer cannot be exported, or the exported graph does not reproduce PyTorch."""


def _complexity_corrected(image: torch.Tensor, raw: torch.Tensor, correction: str) -> torch.Tensor:
    """raw / input complexity (mean |neighbour difference| of (x + 1) / 2) for ``complexity``, else raw."""
    if correction != "complexity":
        return raw
    u = (image + 1) / 2
    c = (u[..., :, 1:] - u[..., :, :-1]).abs().flatten(1).mean(1) + (u[..., 1:, :] - u[..., :-1, :]).abs().flatten(1).mean(1)
    return raw / c.clamp_min(1e-6)


class DReaderGraph(nn.Module):
    """image -> (score, raw_score, anomaly_map) for a scorer that reads D (``anogan.scorers.discriminator``):
    its own ``infer`` traced as it is, and the run's correction. A scorer without a map gives zeros."""

    def __init__(self, scorer: nn.Module, correction: str):
        super().__init__()
        self.scorer, self.correction = scorer, correction

    def forward(self, image: torch.Tensor):
        out = self.scorer.infer(image)
        raw = out["score"]
        amap = out["map"] if "map" in out else torch.zeros_like(image[:, 0])
        return _complexity_corrected(image, raw, self.correction), raw, amap


class EncoderGraph(nn.Module):
    """image (N×C×S×S in [-1, 1]) -> (score, raw_score, anomaly_map): the encoder scorer and the
    run's correction as one graph (complexity: mean |neighbour difference| of (x + 1) / 2)."""

    def __init__(self, scorer: EncoderScorer, correction: str):
        super().__init__()
        self.encoder, self.generator, self.features = scorer.encoder, scorer.generator, scorer.discriminator.features
        self.kappa, self.sigma, self.correction = float(scorer.hparams.kappa), float(scorer.hparams.map_sigma), correction

    def forward(self, image: torch.Tensor):
        generated = self.generator(self.encoder(image))
        raw, _, _ = izif_components(image, self.features(image), generated, self.features(generated), self.kappa)
        return _complexity_corrected(image, raw, self.correction), raw, anomaly_map(image, generated, self.sigma)


def _check_images(scorer, payload: dict, input: Path | None, n: int = 32) -> torch.Tensor:
    prep = payload["preprocess"]
    if input is not None:
        from anogan.data.images import list_images, read_image

        paths = list_images(Path(input))[0][:n] if Path(input).is_dir() else [Path(input)]
        if not paths:
            raise ExportError(f"input={input} holds no image to check the export on.")
        return (
            torch.stack(
                [read_image(p, prep["image_size"], prep["channels"], resize=prep.get("resize", "stretch")) for p in paths]
            )
            .float()
            .div(127.5)
            .sub(1.0)
        )
    with torch.no_grad():  # quantised like real images
        fake = scorer.generator(torch.randn(n, scorer.latent_dim, 1, 1, generator=torch.Generator().manual_seed(0)))
    return ((fake + 1) * 127.5).round().clamp(0, 255).div(127.5).sub(1.0)


def export(ckpt: str | Path, out: str | Path | None = None, input: str | Path | None = None) -> dict:
    """Write ``scorer.onnx`` and ``scorer.json`` into ``out`` (default ``<run>/export``), check the
    graph with ONNX Runtime; return ``{"onnx", "json", "max_relative_difference", "images"}``."""
    artifact = resolve_path(ckpt)
    scorer, payload = load_artifact(artifact)
    if not isinstance(scorer, (EncoderScorer, TransformationScorer, DFeatureScorer)):
        raise ExportError(
            f"{artifact} holds a {type(scorer).__name__}: only the forward-only scorers (mapping=encoder, transformations, "
            "dfeatures, dcombined) export to ONNX; "
            "the latent search optimises z at inference and stays PyTorch-only (use predict.py)."
        )
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'anogan[export]'.") from None
    out = Path(out).expanduser() if out else artifact.parent / "export"
    out.mkdir(parents=True, exist_ok=True)
    cal = payload["calibration"]
    if isinstance(scorer, EncoderScorer):
        graph = EncoderGraph(scorer.float().eval(), cal["correction"]).eval()
    else:
        graph = DReaderGraph(scorer.float().eval(), cal["correction"]).eval()
    images = _check_images(scorer, payload, Path(input).expanduser() if input else None)
    onnx_path = out / "scorer.onnx"
    tmp = out / ".scorer.onnx.tmp"
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (images[:2],),
            str(tmp),
            dynamo=False,
            input_names=["image"],
            output_names=["score", "raw_score", "anomaly_map"],
            dynamic_axes={"image": {0: "n"}, "score": {0: "n"}, "raw_score": {0: "n"}, "anomaly_map": {0: "n"}},
        )
    os.replace(tmp, onnx_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in graph(images)]
    diff = max(float(np.max(np.abs(g - w) / np.maximum(np.abs(w), 1e-6))) for g, w in zip(got[:2], want[:2]))
    diff = max(diff, float(np.max(np.abs(got[2] - want[2])) / max(float(np.abs(want[2]).max()), 1e-6)))
    if diff > MAX_RELATIVE_DIFFERENCE:
        raise ExportError(
            f"ONNX Runtime differs from PyTorch by {diff:.2e} (> {MAX_RELATIVE_DIFFERENCE}): the export is not usable."
        )
    meta = {
        "onnx": onnx_path.name,
        "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "range": "[-1, 1] = uint8 / 127.5 - 1"},
        "preprocess": payload["preprocess"],
        "outputs": {
            "score": "primary anomaly score (higher = more anomalous)",
            "raw_score": "scorer's own score",
            "anomaly_map": "N x S x S, at the model's resolution",
        },
        "correction": cal["correction"],
        "thresholds": cal["thresholds"],
        "threshold_rule": cal["threshold_rule"],
        "target_fpr": cal.get("target_fpr"),
        "normal_scores": [float(v) for v in cal["normal_scores"]],
        "p_value": "(1 + #{normal_scores >= score}) / (len(normal_scores) + 1)",
        "checked": {"images": len(images), "max_relative_difference": diff, "onnxruntime": ort.__version__},
        "source": str(artifact.resolve()),
    }
    json_path = out / "scorer.json"
    tmp = out / ".scorer.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, json_path)
    return {"onnx": onnx_path, "json": json_path, "max_relative_difference": diff, "images": len(images)}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    args = {"ckpt": None, "out": None, "input": None}
    try:
        for item in sys.argv[1:] if argv is None else argv:
            key, sep, value = item.partition("=")
            if not sep or key not in args:
                raise ExportError(
                    f"unknown argument {item!r}: usage: anogan-export ckpt=<run folder or scorer.pt> [out=<folder>] [input=<images>]"
                )
            args[key] = value
        if not args["ckpt"]:
            raise ExportError(
                "ckpt=... is required: usage: anogan-export ckpt=<run folder or scorer.pt> [out=<folder>] [input=<images>]"
            )
        result = export(**args)
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
