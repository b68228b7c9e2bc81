"""Turn per-image scores into the run's report: scores.csv, metrics.json, figures, TensorBoard.

The threshold is fitted on the validation rows only and applied unchanged to the test rows.
``python -m anogan.report <run folder> ...`` recomputes metrics.json and the score figures of
finished runs from their scores.csv (e.g. after a metric was added), without the GAN.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from anogan.io import atomic_savefig, atomic_write_text  # noqa: E402
from anogan.metrics import to_unit_interval, evaluate, fit_thresholds, ranking_metrics  # noqa: E402
from anogan.scores import complexity, corrected_score, primary_score, resolve_auto  # noqa: E402

log = logging.getLogger(__name__)


def build_table(
    results: dict[str, torch.Tensor], datamodule, correction: str = "none"
) -> tuple[dict[str, np.ndarray], str]:
    """One row per scored image, in evaluation order, with everything scores.csv holds, and the
    correction used: ``score`` is the primary score (``mapping.correction``, ``auto`` resolved on
    the validation rows only), ``raw_score`` the scorer's own."""
    dataset = datamodule.eval_set
    rows = results["row"].numpy()
    if len(rows) != len(dataset) or not np.array_equal(rows, np.arange(len(dataset))):
        raise RuntimeError(f"scoring returned {len(rows)} rows for {len(dataset)} images: some were lost or repeated")
    columns = datamodule.eval_columns()
    image_complexity = complexity(dataset.images)
    if correction == "auto":
        val = torch.from_numpy(datamodule.eval_split == "val")
        correction = resolve_auto(results["score"][val], image_complexity[val], dataset.labels[val])
    table = {
        "id": dataset.ids.numpy(),
        "source": columns["source"],
        "source_index": columns["source_index"],
        "split": datamodule.eval_split,
        "class": dataset.classes.numpy(),
        "class_name": columns["class_name"],
        "label": dataset.labels.numpy(),
        "score": primary_score(results["score"], image_complexity, correction).numpy(),
        "raw_score": results["score"].double().numpy(),
        "residual": results["residual"].double().numpy(),
        "discrimination": results["discrimination"].double().numpy(),
        "complexity": image_complexity.double().numpy(),
    }
    if "steps" in results:
        table["steps"] = results["steps"].long().numpy()
    return table, correction


def write_csv(table: dict[str, np.ndarray], path: Path) -> None:
    """``table`` as CSV, one row per image, written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table.keys())
        for values in zip(*table.values()):
            writer.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in (x.item() if hasattr(x, "item") else x for x in values)])
    os.replace(tmp, path)


def compute_metrics(table: dict[str, np.ndarray], correction: str, target_fpr: float = 0.05, threshold_rule: str = "fpr") -> dict:
    """Everything metrics.json holds about the scores; ``correction`` is the resolved one that
    made ``table["score"]`` (none or complexity)."""
    val, test = table["split"] == "val", table["split"] == "test"
    score, label = torch.from_numpy(table["score"]), torch.from_numpy(table["label"])
    thresholds = fit_thresholds(score[val], label[val], target_fpr)
    thresholds["rule"] = threshold_rule
    metrics = {
        "primary_score": "raw_score" if correction == "none" else "complexity_corrected",
        "correction": correction,
        "threshold": thresholds,
        "val": evaluate(score[val], label[val], thresholds[threshold_rule], "the validation split"),
        "test": evaluate(score[test], label[test], thresholds[threshold_rule]),
        "test_at_f1": evaluate(score[test], label[test], thresholds["f1"]),
        "test_at_youden": evaluate(score[test], label[test], thresholds["youden"]),
        "counts": {
            s: {"normal": int((label[m] == 0).sum()), "anomalous": int((label[m] == 1).sum())}
            for s, m in (("val", val), ("test", test))
        },
    }
    # Each component alone, and the baselines a reader needs to judge what the GAN adds. Complexity
    # points either way (busy normal classes such as cars: low = anomalous; plain ones such as
    # airplanes: high = anomalous): the baseline takes the direction that ranks validation better.
    c, raw = torch.from_numpy(table["complexity"]), torch.from_numpy(table["raw_score"])
    low_is_anomalous = ranking_metrics(-c[val], label[val], "the validation split")["auroc"] >= 0.5
    metrics["complexity_baseline_direction"] = "low = anomalous" if low_is_anomalous else "high = anomalous"
    alternatives = {
        "raw_score": raw,
        "complexity_corrected": corrected_score(raw, c),
        "residual": torch.from_numpy(table["residual"]),
        "discrimination": torch.from_numpy(table["discrimination"]),
        "complexity_baseline": -c if low_is_anomalous else c,
        "residual_over_complexity": corrected_score(torch.from_numpy(table["residual"]), c),
        "random_baseline": torch.rand(len(c), generator=torch.Generator().manual_seed(0), dtype=torch.float64),
    }
    metrics["test_components_auroc"] = {
        k: ranking_metrics(v[test], label[test], "the test split")["auroc"] for k, v in alternatives.items()
    }
    return metrics


def _figure_histogram(table, threshold: float, split: str, primary: str):
    fig, ax = plt.subplots(figsize=(6, 4))
    m = table["split"] == split
    s, y = table["score"][m], table["label"][m]
    bins = np.linspace(s.min(), s.max(), 50)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label=f"normal ({(y == 0).sum()})")
    ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label=f"anomalous ({(y == 1).sum()})")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g} (fitted on val)")
    ax.set(xlabel=f"anomaly score ({primary})", ylabel="density", title=f"{split} scores")
    ax.legend()
    fig.tight_layout()
    return fig


def _figure_components(table, metrics: dict):
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
        bins = np.linspace(*np.percentile(s, [0.5, 99.5]), 50)  # a few flat images would stretch the axis
        ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="anomalous")
        used = " (primary)" if key == metrics["primary_score"] else ""
        ax.set(xlabel=xlabel, ylabel="density", title=f"test AUROC {metrics['test_components_auroc'][key]:.3f}{used}")
        ax.legend()
    fig.tight_layout()
    return fig


def _figure_curves(table, metrics: dict):
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


def write_score_figures(table, metrics: dict, figures: Path, tb_writer=None) -> None:
    """The score figures as PNGs in ``figures/`` (and in TensorBoard under ``scores/``)."""
    figures.mkdir(exist_ok=True)
    threshold, primary = metrics["threshold"][metrics["threshold"]["rule"]], metrics["primary_score"]
    pictures = {
        "histogram_test": _figure_histogram(table, threshold, "test", primary),
        "histogram_val": _figure_histogram(table, threshold, "val", primary),
        "roc_pr_test": _figure_curves(table, metrics),
        "components_test": _figure_components(table, metrics),
    }
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


def _show(ax, image_chw: np.ndarray) -> None:
    img = np.clip((image_chw.transpose(1, 2, 0) + 1) / 2, 0, 1)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, interpolation="nearest")


def figure_examples(images, generated, maps, titles: list[str], pixel_threshold: float | None, masks=None):
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
def write_example_figures(table, results, datamodule, scorer, figures: Path, tb_writer=None, n: int = 6) -> None:
    """The most and least anomalous test images (by the primary score) with their reconstruction,
    anomaly map and segmentation, labelled with class, score and p-value."""
    if "map" not in results:
        return
    dataset = datamodule.eval_set
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
        z = results["z"][rows].to(device)
        generated = scorer.generator(z.to(next(scorer.generator.parameters()).dtype)).float().cpu()
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


def add_dashboard_layout(tb_writer) -> None:
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


def write_report(results: dict[str, torch.Tensor], datamodule, scorer, folder: Path, tb_writer=None, threshold_cfg=None) -> tuple[dict, dict]:
    """scores.csv, metrics.json, figures and TensorBoard images of a scored evaluation set.

    Returns ``(metrics, calibration)``: the calibration (resolved correction, every rule's threshold,
    the validation normals' scores) is fitted on validation rows only and travels in the scorer file,
    so ``predict.py`` post-processes new images exactly as scores.csv's rows were."""
    from anogan.metrics import THRESHOLD_RULES
    from anogan.scores import apply_calibration

    folder = Path(folder)
    rule = threshold_cfg.rule if threshold_cfg is not None else "fpr"
    target_fpr = float(threshold_cfg.target_fpr) if threshold_cfg is not None else 0.05
    table, correction = build_table(results, datamodule, scorer.hparams.correction)
    metrics = compute_metrics(table, correction, target_fpr=target_fpr, threshold_rule=rule)
    val_normal = (table["split"] == "val") & (table["label"] == 0)
    calibration = {
        "correction": correction,
        "thresholds": {k: metrics["threshold"].get(k) for k in THRESHOLD_RULES},
        "threshold_rule": rule,
        "target_fpr": target_fpr,
        "normal_scores": torch.from_numpy(np.sort(table["score"][val_normal])),
    }
    post = apply_calibration(torch.from_numpy(table["raw_score"]), torch.from_numpy(table["complexity"]), calibration)
    if not np.allclose(post["score"].numpy(), table["score"]):
        raise RuntimeError("the calibration does not reproduce the table's primary score")
    table["p_value"] = post["p_value"].numpy()
    table["prediction"] = post["label"].numpy()
    write_csv(table, folder / "scores.csv")
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=1))
    figures = folder / "figures"
    write_score_figures(table, metrics, figures, tb_writer)
    write_example_figures(table, results, datamodule, scorer, figures, tb_writer)
    test = metrics["test"]
    if test.get("auroc") is not None:
        log.info("test AUROC %.4f  AP %.4f  F1 %.4f at the %s threshold %.6g (fitted on val)",
                 test["auroc"], test["ap"], test["f1"], rule, metrics["threshold"][rule])
    return metrics, calibration


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
    metrics = compute_metrics(table, correction)
    metrics.update({k: old[k] for k in ("gan_source", "wall_time_s", "images_scored") if k in old})
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
