"""The run's figures: score histograms, ROC / precision-recall curves, component histograms and
example images with their reconstruction, anomaly map and segmentation.

Figures are built as ``matplotlib.figure.Figure`` objects without pyplot, so importing this module
(or the library) never selects a matplotlib backend: notebooks keep showing their own figures inline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc
from torchvision.utils import make_grid

from anogan.config.choices import THRESHOLD_RULES
from anogan.data.splits import after_setup
from anogan.metrics.image import to_unit_interval
from anogan.post_processing.scores import corrected_score
from anogan.utils.io import atomic_savefig

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from torch.utils.tensorboard import SummaryWriter

    from anogan.data.splits import AnomalyDataModule
    from anogan.scorers.base import Scorer

Table: TypeAlias = "dict[str, np.ndarray]"


def _figure_histogram(table: Table, threshold: float | dict[str, Any] | None, split: str, primary: str) -> Figure:
    """Histogram of one split's scores by class, the x axis clipped to the bulk (0.5–99.5
    percentiles) with the scores beyond it counted in the legend. ``threshold``: one value, or
    ``metrics["threshold"]`` (every fitted rule drawn as a dashed, labelled line, the one in use
    marked in the legend)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    m = table["split"] == split
    s, y = np.asarray(table["score"][m], dtype=np.float64), table["label"][m]
    lo, hi = np.percentile(s, [0.5, 99.5]) if len(s) else (0.0, 1.0)
    if hi <= lo:  # all (or nearly all) scores equal
        lo, hi = lo - 0.5 * max(abs(lo), 1.0), hi + 0.5 * max(abs(hi), 1.0)
    bins = np.linspace(lo, hi, 50)
    for cls, name in ((0, "normal"), (1, "anomalous")):
        if (y == cls).any():
            ax.hist(s[y == cls], bins=bins.tolist(), alpha=0.6, density=True, label=f"{name} ({(y == cls).sum()})")
    below, above = int((s < lo).sum()), int((s > hi).sum())
    if below + above:
        ax.plot([], [], " ", label=f"{below + above} beyond the axis ({below} below, {above} above)")
    if isinstance(threshold, dict):
        target = threshold.get("fpr_target")
        described = {
            "fpr": f"{100 * target:g}% of val normals" if target else "val normals",
            "f1": "best F1 on val",
            "youden": "best Youden J on val",
        }
        lines = [(name, threshold.get(name), described[name], name == threshold.get("rule")) for name in THRESHOLD_RULES]
    else:
        lines = [("threshold", threshold, "fitted on val", False)]
    colours = {"fpr": "tab:red", "f1": "tab:green", "youden": "tab:purple", "threshold": "k"}
    for name, value, what, used in lines:
        if value is None:
            continue
        shown = lo <= value <= hi
        if shown:
            ax.axvline(value, color=colours[name], linestyle="--", linewidth=1.2)
        where = "" if shown else (", off the axis" if math.isfinite(value) else ", flags nothing")
        label = f"{name} threshold {value:.4g} ({what}{where})" + (", used" if used else "")
        ax.plot([], [], color=colours[name], linestyle="--", label=label)
    ax.set_xlim(lo, hi)
    ax.set(xlabel=f"anomaly score ({primary})", ylabel="density", title=f"{split} scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _figure_components(table: Table, metrics: dict[str, Any]) -> Figure:
    """Test histograms of the raw score, the image's complexity and the corrected score: shows
    whether the raw score measures the class or merely how detailed an image is."""
    m = table["split"] == "test"
    y, raw, c = table["label"][m], table["raw_score"][m], table["complexity"][m]
    panels = (
        ("raw_score", raw, "raw score (higher = anomalous)"),
        ("complexity_baseline", c, f"input complexity (baseline: {metrics['complexity_baseline_direction']})"),
        # the run's own corrected score where it has one (a combination is corrected in z-space: anogan.post_processing.calibration)
        ("complexity_corrected", corrected_score(torch.from_numpy(raw), torch.from_numpy(c)).numpy(), "raw score / complexity")
        if metrics["correction"] == "none"
        else (metrics["primary_score"], table["score"][m], f"primary score ({metrics['correction']})"),
    )
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for ax, (key, s, xlabel) in zip(axes, panels):
        low, high = np.percentile(s, [0.5, 99.5])  # a few flat images would stretch the axis
        bins = np.linspace(float(low), float(high), 50).tolist()
        ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="anomalous")
        used = " (primary)" if key == metrics["primary_score"] else ""
        ax.set(xlabel=xlabel, ylabel="density", title=f"test AUROC {metrics['test_components_auroc'][key]:.3f}{used}")
        ax.legend()
    fig.tight_layout()
    return fig


def _figure_curves(table: Table, metrics: dict[str, Any]) -> Figure:
    m = table["split"] == "test"
    preds, target = to_unit_interval(torch.from_numpy(table["score"][m])), torch.from_numpy(table["label"][m]).long()
    fpr, tpr, _ = binary_roc(preds, target)
    precision, recall, _ = binary_precision_recall_curve(preds, target)
    fig = Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    a.plot(fpr, tpr, label=f"AUROC {metrics['test']['auroc']:.3f}")
    a.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="test ROC")
    a.legend()
    b.plot(recall, precision, label=f"AP {metrics['test']['ap']:.3f}")
    b.axhline(float(target.float().mean()), color="k", linestyle=":", linewidth=0.8, label="chance")
    b.set(xlabel="recall", ylabel="precision", title="test precision-recall")
    b.legend()
    fig.tight_layout()
    return fig


def write_score_figures(table: Table, metrics: dict[str, Any], figures: Path, tb_writer: SummaryWriter | None = None) -> None:
    """The score figures as PNGs in ``figures/`` (and in TensorBoard under ``scores/``)."""
    figures.mkdir(exist_ok=True)
    thresholds, primary = metrics["threshold"], metrics["primary_score"]
    pictures = {
        f"histogram_{split}": _figure_histogram(table, thresholds, split, primary)
        for split in ("test", "val")
        if (table["split"] == split).any()
    }
    test_labels = table["label"][table["split"] == "test"]
    if 0 < test_labels.sum() < len(test_labels):  # ranking pictures need both classes
        pictures["roc_pr_test"] = _figure_curves(table, metrics)
        pictures["components_test"] = _figure_components(table, metrics)
    for name, fig in pictures.items():
        atomic_savefig(fig, figures / f"{name}.png", dpi=100)
        if tb_writer is not None:
            tb_writer.add_figure(f"scores/{name}", fig, close=False)  # not pyplot's: nothing to close


@torch.no_grad()
def reconstruction_grid(images: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Rows of original | G(z) | |x − G(z)|, all in [0, 1] (images and G(z) in [-1, 1])."""
    x, g = (images.float() + 1) / 2, (generated.float() + 1) / 2
    triplets = torch.stack([x, g, (x - g).abs()], 1).flatten(0, 1)
    return make_grid(triplets, nrow=3, padding=2, pad_value=1.0)


def _show(ax: Axes, image_chw: np.ndarray) -> None:
    img = np.clip((image_chw.transpose(1, 2, 0) + 1) / 2, 0, 1)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, interpolation="nearest")


def figure_examples(
    images: np.ndarray,
    generated: np.ndarray,
    maps: np.ndarray,
    titles: list[str],
    pixel_threshold: float | None,
    masks: np.ndarray | None = None,
) -> Figure:
    """One row per image: original | G(z) | anomaly-map overlay | segmentation at ``pixel_threshold``
    (| ground-truth mask, when given). Images and G(z): N×C×S×S in [-1, 1]; maps: N×S×S."""
    n = len(images)
    cols = 4 + (masks is not None)
    fig = Figure(figsize=(2.2 * cols, 2.3 * n))
    axes = fig.subplots(n, cols, squeeze=False)
    vmax = float(np.percentile(maps, 99)) if maps.size else 1.0
    for i in range(n):
        _show(axes[i, 0], images[i])
        axes[i, 0].set_title(titles[i], fontsize=7, loc="left")
        _show(axes[i, 1], generated[i])
        _show(axes[i, 2], images[i])
        axes[i, 2].imshow(maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=vmax, interpolation="bilinear")
        _show(axes[i, 3], images[i])
        if pixel_threshold is not None:
            seg = np.ma.masked_where(maps[i] < pixel_threshold, np.ones_like(maps[i]))
            axes[i, 3].imshow(seg, cmap="autumn", alpha=0.6, vmin=0, vmax=1, interpolation="nearest")
        if masks is not None:
            axes[i, 4].imshow(masks[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for j, name in enumerate(["image", "G(z)", "anomaly map", "segmentation", "ground truth"][:cols]):
        axes[0, j].set_xlabel(name)
        axes[-1, j].set_xlabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def pixel_threshold_from_validation(maps: np.ndarray, normal_rows: np.ndarray, quantile: float = 0.99) -> float | None:
    """A pixel threshold for the segmentation pictures: the ``quantile`` of the validation normals'
    map values (so about 1% of a normal image's pixels are marked)."""
    if not len(normal_rows):
        return None
    return float(np.quantile(maps[normal_rows].ravel(), quantile))


@torch.no_grad()
def write_example_figures(
    table: Table,
    results: dict[str, torch.Tensor],
    datamodule: AnomalyDataModule,
    scorer: Scorer,
    figures: Path,
    tb_writer: SummaryWriter | None = None,
    n: int = 6,
) -> None:
    """The most and least anomalous test images (by the primary score) with their reconstruction,
    anomaly map and segmentation, labelled with class, score and p-value."""
    if "map" not in results:
        return
    dataset = after_setup(datamodule.eval_set, "eval_set")
    maps = results["map"].numpy()
    val_normal = np.flatnonzero((table["split"] == "val") & (table["label"] == 0))
    pix_t = pixel_threshold_from_validation(maps, val_normal)
    test = np.flatnonzero(table["split"] == "test")
    if not len(test):
        return
    order = test[np.argsort(-table["score"][test], kind="stable")]
    masks = getattr(dataset, "masks", None)
    device = next(scorer.generator.parameters()).device
    for kind, rows in (("most_anomalous", order[:n]), ("least_anomalous", order[::-1][:n].copy())):
        images = dataset.images[rows].float().div(127.5).sub(1.0)
        if "z" in results:
            z = results["z"][rows].to(device)
            generated = scorer.generator(z.to(next(scorer.generator.parameters()).dtype)).float().cpu()
        else:  # a scorer without reconstruction (it reads D): the image again in the G(z) column
            generated = images
        titles = [
            f"{table['class_name'][r]} ({'anomalous' if table['label'][r] else 'normal'})\nscore {table['score'][r]:.4g}"
            + (f", p {table['p_value'][r]:.3g}" if "p_value" in table else "")
            for r in rows
        ]
        m = masks[rows][:, 0].numpy() if masks is not None else None
        fig = figure_examples(images.numpy(), generated.numpy(), maps[rows], titles, pix_t, m)
        atomic_savefig(fig, figures / f"examples_{kind}.png", dpi=100)
        if tb_writer is not None:
            tb_writer.add_figure(f"examples/{kind}", fig, close=False)
