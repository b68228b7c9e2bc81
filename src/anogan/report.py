"""Turn per-image scores into the run's report: scores.csv, metrics.json, figures, TensorBoard.

The threshold is fitted on the validation rows only and applied unchanged to the test rows.
``python -m anogan.report <run folder> ...`` recomputes metrics.json and the score figures of
finished runs from their scores.csv (e.g. after a metric was added), without the GAN.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc
from torchvision.utils import make_grid

from anogan.calibration import Calibration
from anogan.compare import delong
from anogan.data.splits import after_setup
from anogan.io import atomic_savefig, atomic_write_text
from anogan.metrics import (
    THRESHOLD_RULES,
    bootstrap_statistics,
    conformal_p_values,
    evaluate,
    fit_thresholds,
    one_class_metrics,
    percentile_interval,
    random_auroc_interval,
    ranking_metrics,
    resolve_threshold,
    threshold_metrics,
    to_unit_interval,
)
from anogan.scores import complexity, corrected_score, score_components

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch.utils.tensorboard import SummaryWriter

    from anogan.data.splits import AnomalyDataModule
    from anogan.scorers.base import Scorer

# The per-image columns of scores.csv (build_table): column name -> one value per evaluation row.
Table: TypeAlias = "dict[str, np.ndarray]"

log = logging.getLogger(__name__)


def build_table(results: dict[str, torch.Tensor], datamodule: AnomalyDataModule, calibration: Calibration) -> Table:
    """One row per scored image, in evaluation order, with everything scores.csv holds: ``score``
    (primary), ``raw_score``, ``p_value`` and ``prediction`` as the run's calibration (fitted on
    the validation rows) gives them, beside the scorer's own components and the image complexity."""
    dataset = after_setup(datamodule.eval_set, "eval_set")
    rows = results["row"].numpy()
    if len(rows) != len(dataset) or not np.array_equal(rows, np.arange(len(dataset))):
        raise RuntimeError(f"scoring returned {len(rows)} rows for {len(dataset)} images: some were lost or repeated")
    columns = datamodule.eval_columns()
    eval_split = after_setup(datamodule.eval_split, "eval_split")
    image_complexity = complexity(dataset.images)
    post = calibration(results, image_complexity)
    table = {
        "id": dataset.ids.numpy(),
        "source": columns["source"],
        "source_index": columns["source_index"],
        "split": eval_split,
        "class": dataset.classes.numpy(),
        "class_name": columns["class_name"],
        "label": dataset.labels.numpy(),
        "score": post["score"].numpy(),
        "raw_score": post["raw_score"].numpy(),
        **{k: results[k].double().numpy() for k in score_components(results)},
        "complexity": image_complexity.double().numpy(),
    }
    if "steps" in results:
        table["steps"] = results["steps"].long().numpy()
    table["p_value"] = post["p_value"].numpy()
    table["prediction"] = post["label"].numpy()
    return table


def write_csv(table: dict[str, np.ndarray], path: Path) -> None:
    """``table`` as CSV, one row per image, written atomically."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(table.keys())
    for values in zip(*table.values()):
        writer.writerow(
            [f"{v:.9g}" if isinstance(v, float) else v for v in (x.item() if hasattr(x, "item") else x for x in values)]
        )
    atomic_write_text(path, text.getvalue())


def add_p_values(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds (or replaces) ``table["p_value"]``: each image's conformal p-value against the scores
    of the validation normals (``metrics.conformal_p_values``; Bates et al., Ann. Statist. 2023).
    A small p-value: few validation normals score as high. Test and new images get the guarantee
    P(p ≤ α) ≤ α; a validation normal counts itself among the calibration scores, so its own
    p-value is at least 2/(n + 1) (in-sample). Returns the same table.
    Raises ``CalibrationError`` when the validation split has no normal image."""
    score = np.asarray(table["score"], dtype=np.float64)
    calibration = (table["split"] == "val") & (table["label"] == 0)
    table["p_value"] = conformal_p_values(score[calibration], score).numpy()
    return table


def _split_metrics(score: torch.Tensor, label: torch.Tensor, threshold: float, what: str, n_resamples: int, seed: int) -> dict:
    """One split at the chosen threshold: ranking metrics with their bootstrap intervals when it
    holds both classes, else the observed false-positive rate (normals) or recall (anomalies)."""
    if not 0 < int(label.sum()) < len(label):
        return {**one_class_metrics(score, label, threshold), "auroc_ci": None, "ap_ci": None}
    out = evaluate(score, label, threshold, what)
    boot = bootstrap_statistics(score.numpy(), label.numpy(), ("auroc", "ap"), n_resamples, seed)
    out["auroc_ci"] = list(percentile_interval(boot["auroc"], CI_LEVEL))
    out["ap_ci"] = list(percentile_interval(boot["ap"], CI_LEVEL))
    return out


def _at_threshold(score: torch.Tensor, label: torch.Tensor, threshold: float) -> dict:
    if not 0 < int(label.sum()) < len(label):
        return one_class_metrics(score, label, threshold)
    return {**threshold_metrics(score, label, threshold), "threshold": threshold}


CI_LEVEL = 0.95


def compute_metrics(
    table: dict[str, np.ndarray],
    correction: str,
    target_fpr: float = 0.05,
    threshold_rule: str | float = "fpr",
    n_resamples: int = 2000,
    seed: int = 0,
    thresholds: dict | None = None,
) -> dict:
    """Everything metrics.json holds about the scores; ``correction`` is the resolved one that
    made ``table["score"]`` (none or complexity).

    Thresholds are fitted on the validation rows (``fit_thresholds``: the false-positive-rate one
    at ``target_fpr`` on the validation normals, F1 and Youden when validation has anomalies);
    ``threshold_rule`` (fpr | f1 | youden | a number) picks the one behind ``metrics["test"]`` and
    ``metrics["val"]``; ``{split}_at_{rule}`` give every rule's. A split of normals only reports its
    observed false-positive rate, with AUROC/AP None and a note. AUROC and AP carry stratified
    bootstrap 95% intervals (``n_resamples``, ``seed``). Adds ``table["p_value"]`` (conformal, on
    the validation normals) unless the table has one. ``thresholds``: the run's calibration's
    (``Calibration.thresholds``), fitted on the same validation rows; refitted when None. Raises ``CalibrationError`` without
    validation normals, ``ThresholdRuleError`` for an unusable ``threshold_rule``."""
    val, test = table["split"] == "val", table["split"] == "test"
    score = torch.from_numpy(np.asarray(table["score"], dtype=np.float64))
    label = torch.from_numpy(np.asarray(table["label"], dtype=np.int64))
    if "p_value" not in table:
        add_p_values(table)
    if thresholds is None:
        thresholds = fit_thresholds(score[val], label[val], target_fpr)
    chosen = resolve_threshold(thresholds, threshold_rule)
    n_cal = int((label[val] == 0).sum())
    metrics: dict[str, Any] = {
        "primary_score": "raw_score" if correction == "none" else "complexity_corrected",
        "correction": correction,
        "threshold": {
            **thresholds,
            "rule": str(threshold_rule) if str(threshold_rule) in THRESHOLD_RULES else "number",
            "value": chosen,
        },
        "p_value": {"calibration": "validation normals", "n_calibration": n_cal, "smallest_possible": 1 / (n_cal + 1)},
    }
    if math.isinf(thresholds["fpr"]):
        metrics["threshold"]["note"] = (
            f"{n_cal} validation normals are too few for a false-positive rate of {target_fpr:g}: "
            f"at least {math.ceil(1 / target_fpr) - 1} are needed; the fpr threshold flags nothing"
        )
    for split, mask, what in (("val", val, "the validation split"), ("test", test, "the test split")):
        s, y = score[mask], label[mask]
        metrics[split] = _split_metrics(s, y, chosen, what, n_resamples, seed)
        for name in THRESHOLD_RULES:
            t = thresholds[name]
            metrics[f"{split}_at_{name}"] = None if t is None else _at_threshold(s, y, t)
    metrics["counts"] = {
        s: {"normal": int((label[m] == 0).sum()), "anomalous": int((label[m] == 1).sum())}
        for s, m in (("val", val), ("test", test))
    }
    n0, n1 = metrics["counts"]["test"]["normal"], metrics["counts"]["test"]["anomalous"]
    if n0 == 0 or n1 == 0:  # empty, not None: readers iterate over it
        metrics["complexity_baseline_direction"] = None
        metrics["test_components_auroc"] = {}
        metrics["random_baseline_interval"] = None
        metrics["versus_complexity_baseline"] = {}
        return metrics
    # Each component alone, and the baselines a reader needs to judge what the GAN adds. Complexity
    # points either way (busy normal classes such as cars: low = anomalous; plain ones such as
    # airplanes: high = anomalous): the baseline takes the direction that ranks validation better
    # (low = anomalous when validation has no anomaly to tell).
    c, raw = torch.from_numpy(table["complexity"]), torch.from_numpy(table["raw_score"])
    val_has_both = 0 < int(label[val].sum()) < int(val.sum())
    low_is_anomalous = not val_has_both or ranking_metrics(-c[val], label[val], "the validation split")["auroc"] >= 0.5
    metrics["complexity_baseline_direction"] = "low = anomalous" if low_is_anomalous else "high = anomalous"
    alternatives = {
        "raw_score": raw,
        "complexity_corrected": corrected_score(raw, c),
        **{k: torch.from_numpy(table[k]) for k in score_components(table)},
        "complexity_baseline": -c if low_is_anomalous else c,
    }
    if "residual" in table:
        alternatives["residual_over_complexity"] = corrected_score(torch.from_numpy(table["residual"]), c)
    components = {k: ranking_metrics(v[test], label[test], "the test split")["auroc"] for k, v in alternatives.items()}
    # a score unrelated to the labels: its expected AUROC, and (beside the components, which hold
    # one number each) the range 95% of such scores would land in for these class counts
    components["random_baseline"] = 0.5
    metrics["test_components_auroc"] = components
    metrics["random_baseline_interval"] = list(random_auroc_interval(n0, n1, CI_LEVEL))
    metrics["versus_complexity_baseline"] = {
        split: versus_baseline(score[m], alternatives["complexity_baseline"][m], label[m])
        for split, m in (("val", val), ("test", test))
        if 0 < int(label[m].sum()) < int(m.sum())
    }
    return metrics


def versus_baseline(score: torch.Tensor, baseline: torch.Tensor, label: torch.Tensor) -> dict:
    """Does the run's score beat the complexity-only baseline on the same images? DeLong's paired
    test (``anogan.compare.delong``; DeLong et al. 1988): ``{"auroc", "auroc_complexity_only",
    "difference", "ci" (95%), "p_value"}``. All inputs shape (n,), ``label`` 1 = anomalous with both
    classes present. The baseline's direction was chosen on validation, so on validation it is
    slightly favoured; the test figure is the honest one."""
    d = delong(score.numpy(), baseline.numpy(), label.numpy(), CI_LEVEL)
    return {
        "auroc": d["auroc_a"],
        "auroc_complexity_only": d["auroc_b"],
        "difference": d["difference"],
        "ci": d["ci"],
        "p_value": d["p_value"],
    }


def _figure_histogram(table: Table, threshold: float | dict[str, Any] | None, split: str, primary: str) -> Figure:
    """Histogram of one split's scores by class, the x axis clipped to the bulk (0.5–99.5
    percentiles) with the scores beyond it counted in the legend. ``threshold``: one value, or
    ``metrics["threshold"]`` (every fitted rule drawn as a dashed, labelled line, the one in use
    marked in the legend)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
        ("complexity_corrected", corrected_score(torch.from_numpy(raw), torch.from_numpy(c)).numpy(), "raw score / complexity"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, s, xlabel) in zip(axes, panels):
        lo, hi = np.percentile(s, [0.5, 99.5])  # a few flat images would stretch the axis
        bins = np.linspace(lo, hi, 50).tolist()
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
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
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
            tb_writer.add_figure(f"scores/{name}", fig)
        plt.close(fig)


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
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.3 * n), squeeze=False)
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
            tb_writer.add_figure(f"examples/{kind}", fig)
        plt.close(fig)


def add_dashboard_layout(tb_writer: SummaryWriter) -> None:
    """TensorBoard's CUSTOM SCALARS tab: related curves on one chart (losses; D(x) against D(G(z)))."""
    from tensorboard.summary.v1 import custom_scalar_pb  # noqa: F401  (tensorboard is a dependency)
    from torch.utils.tensorboard.summary import custom_scalars

    layout = {
        "GAN": {
            "losses (per step)": ["Multiline", ["train/loss_d_step", "train/loss_g_step"]],
            "losses (per epoch)": ["Multiline", ["train/loss_d_epoch", "train/loss_g_epoch"]],
            "D(x) vs D(G(z)) (per epoch)": ["Multiline", ["train/d_real_epoch", "train/d_fake_epoch"]],
        }
    }
    tb_writer._get_file_writer().add_summary(custom_scalars(layout))


def pixel_and_defect_metrics(table: Table, results: dict[str, torch.Tensor], datamodule: AnomalyDataModule) -> dict[str, Any]:
    """With ground-truth masks (MVTec layout, or folder data with a mask folder): pixel AUROC and
    AUPRO (up to a pixel FPR of 0.3, Bergmann et al., IJCV 2021) of the anomaly maps on the test
    rows, and the image AUROC of each defect type against all test normals."""
    from anogan.pixel_metrics import aupro, per_defect_auroc, pixel_auroc

    masks = getattr(datamodule.eval_set, "masks", None)
    test = table["split"] == "test"
    labels = table["label"][test]
    out: dict = {}
    if not (0 < labels.sum() < len(labels)):
        return out
    if len(set(table["class_name"][test][labels == 1])) > 1 or masks is not None:
        out["test_per_defect_auroc"] = per_defect_auroc(table["score"][test], labels, table["class_name"][test])
    if masks is not None and "map" in results:
        maps, gt = results["map"][torch.from_numpy(test)].numpy(), masks[torch.from_numpy(test)][:, 0].numpy()
        if gt.any():
            out["pixel"] = {
                "auroc": pixel_auroc(maps, gt),
                "aupro": aupro(maps, gt, fpr_limit=0.3),
                "aupro_fpr_limit": 0.3,
                "images": int(test.sum()),
                "resolution": list(maps.shape[1:]),
            }
    return out


def write_report(
    results: dict[str, torch.Tensor],
    datamodule: AnomalyDataModule,
    scorer: Scorer,
    calibration: Calibration,
    folder: Path,
    tb_writer: SummaryWriter | None = None,
) -> dict[str, Any]:
    """scores.csv, figures and TensorBoard images of a scored evaluation set; returns the metrics
    (the caller writes metrics.json, last: it marks the run finished).

    ``calibration`` is the run's, fitted on the validation rows only (``Calibration.fit``) and
    already saved in the scorer file, so ``predict.py`` post-processes new images exactly as
    scores.csv's rows are here."""
    folder = Path(folder)
    rule = calibration.rule
    table = build_table(results, datamodule, calibration)
    metrics = compute_metrics(table, calibration.correction, calibration.target_fpr, rule, thresholds=calibration.thresholds)
    metrics.update(pixel_and_defect_metrics(table, results, datamodule))
    metrics["warnings"] = calibration.warnings
    write_csv(table, folder / "scores.csv")
    figures = folder / "figures"
    write_score_figures(table, metrics, figures, tb_writer)
    write_example_figures(table, results, datamodule, scorer, figures, tb_writer)
    test = metrics["test"]
    if test.get("auroc") is not None:
        log.info(
            "test AUROC %.4f [%.4f, %.4f]  AP %.4f  F1 %.4f at the %s threshold %.6g (fitted on val)",
            test["auroc"],
            *test["auroc_ci"],
            test["ap"],
            test["f1"],
            rule,
            float(calibration.threshold),
        )
        versus = metrics.get("versus_complexity_baseline", {}).get("test")
        if versus:
            log.info(
                "test AUROC against complexity only (%.4f, same images): %+.4f [%+.4f, %+.4f], DeLong p %.3g",
                versus["auroc_complexity_only"],
                versus["difference"],
                *versus["ci"],
                versus["p_value"],
            )
    else:
        log.info(
            "%s: false-positive rate on the validation normals %.3f, on the test normals %s, at the %s threshold",
            test.get("note", "no anomalous image"),
            metrics["val"].get("false_positive_rate", float("nan")),
            test.get("false_positive_rate"),
            rule,
        )
    return metrics


TEXT_COLUMNS = ("source", "split", "class_name")
INT_COLUMNS = ("id", "source_index", "class", "label")


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """scores.csv back into the table ``write_csv`` wrote."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    table = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        kind = str if key in TEXT_COLUMNS else (np.int64 if key in INT_COLUMNS else np.float64)
        table[key] = np.array(values) if kind is str else np.array(values).astype(kind)
    return table


def rereport(run_dir: Path) -> dict:
    """Recompute a finished run's metrics.json and score figures from its scores.csv, with this
    version's metrics (no GAN, no search): for runs scored before a metric was added or changed."""
    run_dir = Path(run_dir)
    table = read_csv(run_dir / "scores.csv")
    old = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    if "raw_score" not in table:  # scored before mapping.correction existed: the score was the raw one
        table["raw_score"] = table["score"]
    correction = old.get("correction", "none")
    threshold = old.get("threshold", {})
    rule = threshold.get("rule", "fpr")
    metrics = compute_metrics(
        table,
        correction,
        target_fpr=threshold.get("fpr_target", 0.05),
        threshold_rule=threshold["value"] if rule == "number" else rule,
    )
    # what scores.csv cannot give back (pixel metrics need the maps; wall times, the scorer file) is kept
    metrics = {**old, **metrics}
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=1))
    write_score_figures(table, metrics, run_dir / "figures")
    return metrics


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Recompute metrics.json and score figures of finished runs from scores.csv.")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders (each holds scores.csv)")
    for run_dir in parser.parse_args().run_dirs:
        if not (run_dir / "scores.csv").is_file():
            raise SystemExit(f"{run_dir} has no scores.csv: give the folder of a finished train.py run")
        metrics = rereport(run_dir)
        print(f"{run_dir}: test AUROC {metrics['test']['auroc']:.4f} ({metrics['primary_score']})")


if __name__ == "__main__":
    main()
