"""Turn per-image scores into the run's report: the scores.csv table and the metrics (metrics.json).

The threshold is fitted on the validation rows only and applied unchanged to the test rows.
``write_report`` also draws the figures (``anogan.reporting.figures``, into the run folder and TensorBoard).
``python -m anogan.reporting.report <run folder> ...`` recomputes metrics.json and the score figures of
finished runs from their scores.csv (e.g. after a metric was added), without the GAN.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd
import torch

from anogan.config.choices import THRESHOLD_RULES
from anogan.data.splits import after_setup
from anogan.metrics.image import (
    evaluate,
    fit_thresholds,
    one_class_metrics,
    ranking_metrics,
    resolve_threshold,
    threshold_metrics,
)
from anogan.metrics.stats import bootstrap_statistics, conformal_p_values, delong, percentile_interval, random_auroc_interval
from anogan.post_processing.calibration import Calibration, primary_score
from anogan.post_processing.scores import complexity, corrected_score, score_components
from anogan.reporting.figures import write_example_figures, write_score_figures
from anogan.reporting.run_checks import WEAK_PREFIX, weak_detector_warnings
from anogan.utils.io import atomic_write_text

if TYPE_CHECKING:
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
    """``table`` as CSV, one row per image, written atomically: floats with 9 significant digits
    (``nan``, ``inf`` as such), rows ended by CRLF as Python's ``csv`` module ends them."""
    text = pd.DataFrame(table).to_csv(index=False, float_format="%.9g", na_rep="nan", lineterminator="\r\n")
    atomic_write_text(path, text)


def add_p_values(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds (or replaces) ``table["p_value"]``: each image's conformal p-value against the scores
    of the validation normals (``stats.conformal_p_values``; Bates et al., Ann. Statist. 2023).
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
    log_stats: tuple[float, float] | None = None,
) -> dict:
    """Everything metrics.json holds about the scores; ``correction`` is the resolved one that
    made ``table["score"]`` (none, complexity or times_complexity); ``log_stats``: the calibration's
    (``Calibration.log_stats``) when the raw score is a combination, so that the corrected
    alternatives are computed as the calibration computes them.

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
        "primary_score": {"none": "raw_score", "complexity": "complexity_corrected"}.get(correction, correction),
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
    metrics.update(baseline_metrics(table, score, label, val, test, log_stats))
    return metrics


def baseline_metrics(
    table: Table,
    score: torch.Tensor,
    label: torch.Tensor,
    val: np.ndarray,
    test: np.ndarray,
    log_stats: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """What a reader needs to judge what the GAN adds, on the test rows: the test AUROC of each
    score component alone and of the complexity-only baseline (``test_components_auroc``), the
    range of a random score's AUROC (``random_baseline_interval``) and DeLong's test of the
    primary score against the baseline per split (``versus_complexity_baseline``), with the
    direction the baseline takes (``complexity_baseline_direction``). ``score``, ``label``: the
    table's, as tensors; ``val``, ``test``: boolean row masks. Empty (not None) entries when the
    test rows lack a class: readers iterate over them."""
    n0, n1 = int((label[test] == 0).sum()), int((label[test] == 1).sum())
    if n0 == 0 or n1 == 0:
        return {
            "complexity_baseline_direction": None,
            "test_components_auroc": {},
            "random_baseline_interval": None,
            "versus_complexity_baseline": {},
        }
    # Complexity points either way (busy normal classes such as cars: low = anomalous; plain ones
    # such as airplanes: high = anomalous): the baseline takes the direction that ranks validation
    # better (low = anomalous when validation has no anomaly to tell).
    c, raw = torch.from_numpy(table["complexity"]), torch.from_numpy(table["raw_score"])
    val_has_both = 0 < int(label[val].sum()) < int(val.sum())
    low_is_anomalous = not val_has_both or ranking_metrics(-c[val], label[val], "the validation split")["auroc"] >= 0.5
    alternatives = {
        "raw_score": raw,
        "complexity_corrected": primary_score(raw, c, "complexity", log_stats),
        "times_complexity": primary_score(raw, c, "times_complexity", log_stats),
        **{k: torch.from_numpy(table[k]) for k in score_components(table)},
        "complexity_baseline": -c if low_is_anomalous else c,
    }
    if "residual" in table:
        alternatives["residual_over_complexity"] = corrected_score(torch.from_numpy(table["residual"]), c)
    components = {k: ranking_metrics(v[test], label[test], "the test split")["auroc"] for k, v in alternatives.items()}
    # a score unrelated to the labels: its expected AUROC, and (beside the components, which hold
    # one number each) the range 95% of such scores would land in for these class counts
    components["random_baseline"] = 0.5
    return {
        "complexity_baseline_direction": "low = anomalous" if low_is_anomalous else "high = anomalous",
        "test_components_auroc": components,
        "random_baseline_interval": list(random_auroc_interval(n0, n1, CI_LEVEL)),
        "versus_complexity_baseline": {
            split: versus_baseline(score[m], alternatives["complexity_baseline"][m], label[m])
            for split, m in (("val", val), ("test", test))
            if 0 < int(label[m].sum()) < int(m.sum())
        },
    }


def versus_baseline(score: torch.Tensor, baseline: torch.Tensor, label: torch.Tensor) -> dict:
    """Does the run's score beat the complexity-only baseline on the same images? DeLong's paired
    test (``anogan.metrics.stats.delong``; DeLong et al. 1988): ``{"auroc", "auroc_complexity_only",
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


def pixel_and_defect_metrics(table: Table, results: dict[str, torch.Tensor], datamodule: AnomalyDataModule) -> dict[str, Any]:
    """With ground-truth masks (MVTec layout, or folder data with a mask folder): pixel AUROC and
    AUPRO (up to a pixel FPR of 0.3, Bergmann et al., IJCV 2021) of the anomaly maps on the test
    rows, and the image AUROC of each defect type against all test normals."""
    from anogan.metrics.pixel import aupro, per_defect_auroc, pixel_auroc

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
    metrics = compute_metrics(
        table,
        calibration.correction,
        calibration.target_fpr,
        rule,
        thresholds=calibration.thresholds,
        log_stats=calibration.log_stats,
    )
    metrics.update(pixel_and_defect_metrics(table, results, datamodule))
    weak = weak_detector_warnings(metrics)  # below chance or complexity alone on validation
    for warning in weak:
        log.warning("%s", warning)
    metrics["warnings"] = [*calibration.warnings, *weak]
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
    """scores.csv back into the table ``write_csv`` wrote: ``TEXT_COLUMNS`` as str, ``INT_COLUMNS``
    as int64, every other column as float64 (parsed by numpy, so each value is the float its text
    rounds to). Raises ``ValueError`` when the file holds no rows."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # text as written; no value turns into NaN
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    if frame.empty:
        raise ValueError(f"{path} holds no rows")
    table = {}
    for key in frame.columns:
        text = frame[key].to_numpy(dtype=str)
        table[key] = text if key in TEXT_COLUMNS else text.astype(np.int64 if key in INT_COLUMNS else np.float64)
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
    # what scores.csv cannot give back (pixel metrics need the maps; wall and CPU times, the scorer file) is kept
    metrics = {**old, **metrics}
    kept = [w for w in old.get("warnings", []) if not w.startswith(WEAK_PREFIX)]  # the calibration's
    metrics["warnings"] = [*kept, *weak_detector_warnings(metrics)]
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
