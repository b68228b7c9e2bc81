"""The page of ``anogan-serve`` (``GET /``): a person drops or picks images and sees, for each, the
score, p-value and label at the run's threshold, the anomaly map over the image the model saw and
G(z) where the scorer makes one, beside the run's facts.

The page is plain HTML, CSS and JavaScript shipped in the package (``anogan/deploy/static``: no CDN, no
internet). Its script posts each image to ``/predict`` with ``maps=png`` (the same process, request
checks and inference path as any other client) and reads the run's facts from ``/info``
(``run_facts``). The pictures of a ``maps=png`` answer are made here (``pictures``).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and torch are imported where used: `anogan-serve` answers a bad argument fast
    import numpy as np
    import torch

    from anogan.deploy.detector import Predictions

STATIC = Path(__file__).parent / "static"
PAGE = "index.html"
COLORMAP = "inferno"  # the anomaly map's colours (matplotlib): dark = low, bright = high
MAP_OPACITY = 0.6  # the map's weight over the model's input


def _png(pixels: np.ndarray) -> str:
    """uint8 H×W, H×W×3 or H×W×4 -> base64 text of a PNG file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 C×S×S (C = 1 or 3) -> uint8 S×S×3."""
    import numpy as np

    array = image.permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def map_over_input(amap: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    """The anomaly map ``amap`` (S×S, any scale) in ``COLORMAP``, scaled to its own min..max,
    blended over the model's input ``image`` (uint8 C×S×S) with weight ``MAP_OPACITY``: uint8 S×S×3."""
    import numpy as np
    from matplotlib import colormaps

    values = amap.float().numpy()
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    colours = colormaps[COLORMAP](scaled)[..., :3] * 255.0
    blended = (1 - MAP_OPACITY) * _hwc(image).astype(np.float64) + MAP_OPACITY * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def pictures(result: Predictions, k: int) -> dict[str, Any]:
    """The pictures of image ``k`` of a ``Detector.predict`` result, base64 PNG text (the model's
    resolution, S×S): ``input`` (what the model saw: the run's resize policy, colour and size),
    ``map_png`` (the anomaly map over it, ``map_over_input``; null without maps), ``map_range``
    ([min, max] of the map; null without maps) and ``generated`` (G(z); null for a scorer without G(z))."""
    import torch

    image = result.inputs[k]
    out: dict[str, Any] = {"input": _png(_hwc(image)), "map_png": None, "map_range": None, "generated": None}
    if result.model_maps is not None:
        amap = result.model_maps[k]
        out["map_png"] = _png(map_over_input(amap, image))
        out["map_range"] = [float(amap.min()), float(amap.max())]
    if result.reconstructions is not None:
        g = ((result.reconstructions[k].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out["generated"] = _png(_hwc(g))
    return out


def run_facts(artifact: Path) -> dict[str, Any]:
    """What a person needs to judge the served run, for the page (``/info`` → ``model.run``): from
    the run folder that holds ``artifact`` when it is there (``metrics.json``, ``config_resolved.yaml``)
    the normal data, the validation AUROC with its 95% interval, the threshold's note and the GAN's
    health; empty values (and ``run_folder: null``) for a scorer file copied without its run."""
    folder = Path(artifact).parent
    metrics_file, config_file = folder / "metrics.json", folder / "config_resolved.yaml"
    facts: dict[str, Any] = {
        "run_folder": str(folder) if metrics_file.is_file() else None,
        "normal_data": None,
        "val_auroc": None,
        "val_auroc_ci": None,
        "threshold_note": None,
        "gan_health": None,
        "gan_source": None,
    }
    if config_file.is_file():
        import yaml

        data = (yaml.safe_load(config_file.read_text()) or {}).get("data", {})
        kind = str(data.get("_target_", "")).rsplit(".", 1)[-1]
        if "normal_class" in data:
            from anogan.data.cifar10 import CLASSES, class_index

            facts["normal_data"] = f"CIFAR-10 class {CLASSES[class_index(data['normal_class'])]} ({kind})"
        elif "normal_dir" in data:
            facts["normal_data"] = f"{Path(str(data.get('root', ''))) / str(data['normal_dir'])} ({kind})"
        elif kind:
            facts["normal_data"] = kind
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        val = metrics.get("val", {})
        facts["val_auroc"], facts["val_auroc_ci"] = val.get("auroc"), val.get("auroc_ci")
        facts["threshold_note"] = (metrics.get("threshold") or {}).get("note")
        health = metrics.get("gan_health") or {}
        facts["gan_health"] = health.get("warning") or health.get("why") or ("ok" if health.get("ok") else None)
        facts["gan_source"] = metrics.get("gan_source")
    return facts


def add_page(app: Any) -> None:
    """Serve the page on ``app`` (LitServe's FastAPI app): ``GET /`` (replacing LitServe's
    "litserve running") and its files under ``/static``."""
    from fastapi.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles

    html = (STATIC / PAGE).read_text(encoding="utf-8")
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/"]

    async def page() -> HTMLResponse:
        return HTMLResponse(html)

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
