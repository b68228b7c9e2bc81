"""The per-class table of docs/results.md from finished runs: one row per normal class, the mean over
seeds of validation and test AUROC, the complexity-only baseline on the same test images, the
difference with DeLong's p-value (per seed), the GAN's health and the run's CPU time, then the
ten-class mean. Everything is read from each run folder (``metrics.json``, ``config_resolved.yaml``,
``train.log``); nothing is recomputed.

    python benchmarks/class_table.py RUN_DIR [RUN_DIR ...] [--json]

Run folders of a sweep (``make results``: ``multirun/<date>/<job>``) or of single runs both work; a
folder without ``metrics.json`` (unfinished) is listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_run(run: Path) -> dict | None:
    """One finished run's figures, or None when it has no metrics.json."""
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        return None
    m = json.loads(metrics_path.read_text())
    cfg = yaml.safe_load((run / "config_resolved.yaml").read_text())
    versus = (m.get("versus_complexity_baseline") or {}).get("test") or {}
    return {
        "run": str(run),
        "normal_class": int(cfg["data"]["normal_class"]),
        "seed": int(cfg["seed"]),
        "test_subset": cfg["data"].get("test_subset"),
        "val_auroc": m["val"]["auroc"],
        "test_auroc": m["test"]["auroc"],
        "test_auroc_ci": m["test"].get("auroc_ci"),
        "complexity_only": versus.get("auroc_complexity_only"),
        "difference": versus.get("difference"),
        "p_value": versus.get("p_value"),
        "correction": m.get("correction"),
        "gan_ok": (m.get("gan_health") or {}).get("ok"),
        "warnings": m.get("warnings", []),
        "wall_minutes": round(m.get("wall_time_s", {}).get("total", float("nan")) / 60, 1),
    }


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: list[dict]) -> str:
    """Markdown: a row per class (means over its seeds), then the mean over the classes present."""
    out = [
        "| class | seeds | val AUROC | test AUROC | complexity only (test) | test − complexity (DeLong p, per seed) | G healthy | correction |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    means: dict[str, list[float]] = {"val": [], "test": [], "cx": []}
    for c in sorted({r["normal_class"] for r in rows}):
        rs = sorted((r for r in rows if r["normal_class"] == c), key=lambda r: r["seed"])
        val, test = [r["val_auroc"] for r in rs], [r["test_auroc"] for r in rs]
        cx = [r["complexity_only"] for r in rs if r["complexity_only"] is not None]
        diffs = ", ".join(f"{r['difference']:+.3f} ({r['p_value']:.2g})" for r in rs if r["difference"] is not None)
        health = "/".join("yes" if r["gan_ok"] else "no" if r["gan_ok"] is False else "?" for r in rs)
        corrections = "/".join(str(r["correction"]) for r in rs)
        out.append(
            f"| {CLASSES[c]} | {','.join(str(r['seed']) for r in rs)} | {_mean_sd(val)} | {_mean_sd(test)} | "
            f"{_mean_sd(cx) if cx else ''} | {diffs} | {health} | {corrections} |"
        )
        means["val"].append(statistics.mean(val))
        means["test"].append(statistics.mean(test))
        if cx:
            means["cx"].append(statistics.mean(cx))
    n = len(means["test"])
    cx_mean = f"{statistics.mean(means['cx']):.3f}" if means["cx"] else ""
    out.append(
        f"| **mean of {n}** | | {statistics.mean(means['val']):.3f} | **{statistics.mean(means['test']):.3f}** | {cx_mean} | | | |"
    )
    per_seed = {
        seed: statistics.mean(r["test_auroc"] for r in rows if r["seed"] == seed)
        for seed in sorted({r["seed"] for r in rows})
        if {r["normal_class"] for r in rows if r["seed"] == seed} == {r["normal_class"] for r in rows}
    }
    if len(per_seed) > 1:  # the spread of the class mean between seeds that cover every class
        spread = ", ".join(f"seed {s}: {m:.3f}" for s, m in per_seed.items())
        out.append(f"\nmean test AUROC over the {n} classes, per seed: {spread}; {_mean_sd(list(per_seed.values()))}")
    if len({str(r["test_subset"]) for r in rows}) > 1:
        out.append("\nwarning: the runs were scored on different test sets (data.test_subset differs)")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="print the per-run figures as JSON instead")
    args = parser.parse_args()
    rows, skipped = [], []
    for run in args.runs:
        row = read_run(run)
        (rows.append(row) if row else skipped.append(str(run)))
    if args.json:
        print(json.dumps({"runs": rows, "skipped": skipped}, indent=1))
        return
    print(table(rows))
    if skipped:
        print(f"\nskipped (no metrics.json): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
