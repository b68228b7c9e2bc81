"""A sweep as a picture: ``summary.png`` beside ``summary.csv`` / ``summary.md``.

The selected metric (the sweep's ``optimized_metric``, default ``val/auroc``: column ``val_auroc``)
of every job, with its 95% interval where ``metrics.json`` has one:

* two swept keys (e.g. ``mapping.alpha`` × ``model.latent_dim``): a heatmap, one cell per pair of
  values, ``value`` and ``[low, high]`` written in the cell, the best cell (highest value) outlined;
* one swept key: the value against the key's values, the interval as error bars;
* any other number of swept keys: no figure (``summary.md`` holds the table).

Where seeds vary too, each cell is the mean over seeds and its interval the mean of the seeds'
intervals (``anogan.reporting.sweep_table.aggregate_seeds``). Written atomically (``anogan.utils.io.atomic_savefig``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from anogan.reporting.sweep_table import aggregate_seeds, result_columns
from anogan.utils.io import atomic_savefig

log = logging.getLogger(__name__)

FILENAME = "summary.png"


def selected_column(sweep_dir: Path) -> str:
    """The summary column of the sweep's ``optimized_metric`` (``val/auroc`` -> ``val_auroc``),
    read from the first job's composed config; ``val_auroc`` when no job says."""
    for config in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        name = (yaml.safe_load(config.read_text()) or {}).get("optimized_metric")
        if name:
            return str(name).replace("/", "_")
    return "val_auroc"


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def swept_columns(rows: list[dict], results: set[str]) -> list[str]:
    """The setting columns whose value differs between rows, the seed aside (seeds are averaged)."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in results and k not in ("status", "seed")))
    return [k for k in keys if len({str(r.get(k, "")) for r in rows}) > 1]


def write_sweep_figure(sweep_dir: str | Path, rows: list[dict], column: str) -> Path | None:
    """``sweep_figure`` written to ``<sweep_dir>/summary.png``: its path, or None when not drawn."""
    fig = sweep_figure(rows, column)
    return None if fig is None else atomic_savefig(fig, Path(sweep_dir) / FILENAME)


def sweep_figure(rows: list[dict], column: str) -> Figure | None:
    """The figure of ``column`` over the swept keys of ``rows`` (``anogan.reporting.sweep_table.collect``), or None
    (with a log line) when the sweep has not one or two swept keys or no job has the value."""
    results = result_columns()
    axes = swept_columns(rows, results)
    if any("seed" in r for r in rows) and len({str(r.get("seed")) for r in rows}) > 1:
        rows, column = aggregate_seeds(rows), f"{column}_mean"
    finished = [r for r in rows if not math.isnan(_number(r.get(column)))]
    if not finished or len(axes) not in (1, 2):
        log.info("%s: not drawn (%d swept keys, %d jobs with %s)", FILENAME, len(axes), len(finished), column)
        return None
    values = {key: sorted({str(r[key]) for r in rows if key in r}, key=_sort_key) for key in axes}
    cells: dict[tuple[str, ...], dict[str, Any]] = {tuple(str(r.get(k)) for k in axes): r for r in finished}
    best = max(finished, key=lambda r: r[column])
    best_cell = tuple(str(best.get(k)) for k in axes)
    label = column.removesuffix("_mean") + (" (mean over seeds)" if column.endswith("_mean") else "")

    def interval(row: dict[str, Any]) -> tuple[float, float] | None:
        low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
        return (float(low), float(high)) if isinstance(low, (int, float)) and isinstance(high, (int, float)) else None

    if len(axes) == 2:
        ys, xs = values[axes[0]], values[axes[1]]
        fig = Figure(figsize=(1.9 + 1.5 * len(xs), 1.4 + 0.9 * len(ys)), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        grid = [[_number(cells.get((y, x), {}).get(column)) for x in xs] for y in ys]
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label=label)
        finite = [v for line in grid for v in line if not math.isnan(v)]
        middle = (min(finite) + max(finite)) / 2
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                row = cells.get((y, x))
                if row is None:
                    ax.text(j, i, "no result", ha="center", va="center", fontsize=8, color="grey")
                    continue
                bounds = interval(row)
                text = f"{row[column]:.3f}" + (f"\n[{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "")
                colour = "black" if row[column] > middle else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color=colour)
                if (y, x) == best_cell:
                    ax.add_patch(_outline(j, i))
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(axes[1])
        ax.set_ylabel(axes[0])
        ax.set_title(f"{label} per {axes[0]} × {axes[1]}\n[low, high]: 95% interval; outlined: highest", fontsize=10)
    else:
        xs = values[axes[0]]
        fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(xs)), 3.4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        for j, x in enumerate(xs):
            row = cells.get((x,))
            if row is None:
                continue
            bounds = interval(row)
            errors = [[row[column] - bounds[0]], [bounds[1] - row[column]]] if bounds else None
            colour = "tab:red" if (x,) == best_cell else "tab:blue"
            ax.errorbar([j], [row[column]], yerr=errors, fmt="o", capsize=4, color=colour)
            ax.annotate(f"{row[column]:.3f}", (j, row[column]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel(axes[0])
        ax.set_ylabel(label)
        ax.set_title(f"{label} per {axes[0]} (bars: 95% interval; red: highest)", fontsize=10)
    return fig


def _outline(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5)
