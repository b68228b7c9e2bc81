"""Turn per-image scores into the run's report: scores.csv, metrics.json, figures, TensorBoard.

The threshold is fitted on the validation rows only and applied unchanged to the test rows.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from anogan.metrics import to_unit_interval, evaluate, fit_thresholds, ranking_metrics  # noqa: E402
from anogan.scores import complexity, corrected_score, primary_score, resolve_auto  # noqa: E402

log = logging.getLogger(__name__)
COMPONENTS = ("residual", "discrimination")


def build_table(results: dict[str, torch.Tensor], datamodule, correction: str = "none") -> dict[str, np.ndarray]:
    """One row per scored image, in evaluation order, with everything scores.csv holds:
    ``score`` is the primary score (``mapping.correction``), ``raw_score`` the scorer's own.
    ``auto`` is resolved on the validation rows only; ``table["correction"]`` says what was used."""
    dataset = datamodule.eval_set
    rows = results["row"].numpy()
    if len(rows) != len(dataset) or not np.array_equal(rows, np.arange(len(dataset))):
        raise RuntimeError(f"scoring returned {len(rows)} rows for {len(dataset)} images: some were lost or repeated")
    columns = datamodule.eval_columns()
    image_complexity = complexity(dataset.images)
    if correction == "auto":
        val = torch.from_numpy(datamodule.eval_split == "val")
        correction = resolve_auto(results["score"][val], image_complexity[val], dataset.labels[val])
    return {
        "correction": correction,
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


def write_csv(table: dict[str, np.ndarray], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table.keys())
        for values in zip(*table.values()):
            writer.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in (x.item() if hasattr(x, "item") else x for x in values)])


def compute_metrics(table: dict[str, np.ndarray]) -> dict:
    val, test = table["split"] == "val", table["split"] == "test"
    score, label = torch.from_numpy(table["score"]), torch.from_numpy(table["label"])
    thresholds = fit_thresholds(score[val], label[val])
    metrics = {
        "threshold": thresholds,
        "val": evaluate(score[val], label[val], thresholds["f1"], "the validation split"),
        "test": evaluate(score[test], label[test], thresholds["f1"]),
        "test_at_youden": evaluate(score[test], label[test], thresholds["youden"]),
        "counts": {
            s: {"normal": int((label[m] == 0).sum()), "anomalous": int((label[m] == 1).sum())}
            for s, m in (("val", val), ("test", test))
        },
    }
    # Each component alone, and the baselines a reader needs to judge what the GAN adds.
    c, raw = torch.from_numpy(table["complexity"]), torch.from_numpy(table["raw_score"])
    alternatives = {
        "raw_score": raw,
        "complexity_corrected": corrected_score(raw, c),
        "residual": torch.from_numpy(table["residual"]),
        "discrimination": torch.from_numpy(table["discrimination"]),
        "complexity_baseline": -c,  # low complexity = anomalous for busy normal classes like cars
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
    y = table["label"][m]
    panels = (
        ("raw_score", table["raw_score"][m], "raw score (higher = anomalous)"),
        ("complexity_baseline", table["complexity"][m], "input complexity (baseline: low = anomalous)"),
        ("complexity_corrected", table["raw_score"][m] / np.maximum(table["complexity"][m], 1e-6), "raw score / complexity"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, s, xlabel) in zip(axes, panels):
        bins = np.linspace(s.min(), s.max(), 50)
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


@torch.no_grad()
def reconstruction_grid(images: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Rows of original | G(z) | |x − G(z)|, all in [0, 1]."""
    x, g = (images.float() + 1) / 2, (generated.float() + 1) / 2
    triplets = torch.stack([x, g, (x - g).abs()], 1).flatten(0, 1)
    return make_grid(triplets, nrow=3, padding=2, pad_value=1.0)


def write_report(
    results: dict[str, torch.Tensor],
    datamodule,
    generator: torch.nn.Module,
    folder: Path,
    tb_writer=None,
    n_examples: int = 8,
    correction: str = "none",
) -> dict:
    folder = Path(folder)
    dataset = datamodule.eval_set
    table = build_table(results, datamodule, correction)
    correction = table.pop("correction")
    write_csv(table, folder / "scores.csv")
    primary = "raw_score" if correction == "none" else "complexity_corrected"
    metrics = {"primary_score": primary, "correction": correction, **compute_metrics(table)}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))

    figures = folder / "figures"
    figures.mkdir(exist_ok=True)
    pictures = {
        "scores/histogram_test": _figure_histogram(table, metrics["threshold"]["f1"], "test", metrics["primary_score"]),
        "scores/histogram_val": _figure_histogram(table, metrics["threshold"]["f1"], "val", metrics["primary_score"]),
        "scores/roc_pr_test": _figure_curves(table, metrics),
        "scores/components_test": _figure_components(table, metrics),
    }
    for name, fig in pictures.items():
        fig.savefig(figures / f"{name.split('/')[-1]}.png", dpi=100)
        if tb_writer is not None:
            tb_writer.add_figure(name, fig)
        plt.close(fig)

    device = next(generator.parameters()).device
    generator.eval()
    for kind, label in (("normal", 0), ("anomalous", 1)):
        rows = np.flatnonzero((table["split"] == "test") & (table["label"] == label))[:n_examples]
        if len(rows) == 0:
            continue
        images = torch.stack([dataset[int(r)]["image"] for r in rows])
        generated = generator(results["z"][rows].to(device)).cpu()
        grid = reconstruction_grid(images, generated)
        save_image(grid, figures / f"reconstructions_{kind}.png")
        if tb_writer is not None:
            tb_writer.add_image(f"reconstructions/{kind}", grid)
    log.info(
        "test AUROC %.4f  AP %.4f  F1 %.4f at threshold %.6g (fitted on val)",
        metrics["test"]["auroc"], metrics["test"]["ap"], metrics["test"]["f1"], metrics["threshold"]["f1"],
    )
    return metrics
