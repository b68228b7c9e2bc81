"""One Markdown table of finished runs (docs/scorers.md): validation and test AUROC of each run's primary
score with the 95% bootstrap intervals and the test difference to complexity alone (DeLong), both read
from metrics.json; then the validation and test AUROC of every score component in scores.csv (the
columns ``transformations``, ``dfeatures``, ``dpatches``, ``residual``, ``discrimination``, each alone,
higher = anomalous), to choose components on validation.

    python benchmarks/runs_table.py <run folder> [<run folder> ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from anogan.metrics.image import ranking_metrics
from anogan.post_processing.scores import score_components
from anogan.reporting.report import read_csv


def _ci(interval) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def row(run: Path) -> tuple[str, str]:
    """(the run's main row, its components row) as Markdown table rows."""
    m = json.loads((run / "metrics.json").read_text())
    table = read_csv(run / "scores.csv")
    versus = (m.get("versus_complexity_baseline") or {}).get("test") or {}
    main = (
        f"| {run.name} | {m['val']['auroc']:.3f} {_ci(m['val'].get('auroc_ci'))} | {m['test']['auroc']:.3f} "
        f"{_ci(m['test'].get('auroc_ci'))} | {versus.get('auroc_complexity_only', float('nan')):.3f} | "
        f"{versus.get('difference', float('nan')):+.3f} {_ci(versus.get('ci'))}, p {versus.get('p_value', float('nan')):.2g} | "
        f"{m['correction']} | {m.get('wall_time_s', {}).get('scoring', '')} |"
    )
    parts = []
    for name in score_components(table):
        aurocs = []
        for split in ("val", "test"):
            mask = table["split"] == split
            s, y = torch.from_numpy(np.asarray(table[name][mask])), torch.from_numpy(table["label"][mask])
            aurocs.append(ranking_metrics(s, y, f"the {split} split")["auroc"])
        parts.append(f"{name} {aurocs[0]:.3f} / {aurocs[1]:.3f}")
    return main, f"| {run.name} | {'; '.join(parts)} |"


def main(argv: list[str]) -> None:
    runs = [Path(a) for a in argv]
    rows = [row(r) for r in runs]
    print(
        "| run | val AUROC [95% CI] | test AUROC [95% CI] | complexity only (test) | test minus complexity only (DeLong 95% CI) | correction | scoring s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(r[0] for r in rows))
    print("\n| run | component AUROC val / test |\n| --- | --- |")
    print("\n".join(r[1] for r in rows))


if __name__ == "__main__":
    main(sys.argv[1:])
