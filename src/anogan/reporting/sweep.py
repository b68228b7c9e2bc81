"""Sweeps: the selected metric, readable unique job names, threads per job, and one summary table
per sweep folder.

The table is written when a Hydra multirun ends (``SweepSummary`` callback) and can be rebuilt
at any time, e.g. after an interrupted or extended sweep:

    python -m anogan.reporting.sweep outputs/multirun/2026-11-28_15-00-00

Selection is on validation only: ``optimized_metric`` (default ``val/auroc``) names the value
returned to sweepers, and the summaries mark the best row by validation AUROC; test columns are
shown beside it for the record, never used to choose. The rows of the tables (one per job, and
the mean ± std over seeds) come from ``anogan.reporting.sweep_table``. See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig

from anogan.reporting.sweep_figure import selected_column, write_sweep_figure
from anogan.reporting.sweep_table import SPLITS, aggregate_seeds, collect, csv_text, parse_overrides, short_keys
from anogan.utils.errors import SweepConfigError
from anogan.utils.io import atomic_write_text

log = logging.getLogger(__name__)

# Keys of metrics.json "val" / "test" that optimized_metric may name.
OPTIMIZABLE = ("auroc", "ap", "f1", "precision", "recall", "accuracy")
# The keys a sweep varies, set by SweepSummary when a multirun starts; inherited by launcher
# worker processes (joblib) and SLURM jobs (sbatch exports the environment by default).
SWEPT_ENV = "ANOGAN_SWEPT_KEYS"
MAX_NAME = 80  # characters of a job folder name before the hash suffix


# ---------------------------------------------------------------- the value returned to sweepers


def parse_optimized_metric(name: str, allow_test: bool = False) -> tuple[str, str]:
    """ "val/auroc" -> ("val", "auroc"); anything else than <val|test>/<metric> is a config error, and so
    is a test/... metric unless ``allow_test`` (``allow_test_objective=true``): a sweep that maximises a
    test metric picks its settings on the test split, and that split's figures are then biased upwards."""
    split, sep, metric = str(name).partition("/")
    if not sep or split not in SPLITS or metric not in OPTIMIZABLE:
        raise SweepConfigError(
            f"optimized_metric={name!r} is not allowed: use <split>/<metric> with split in {'|'.join(SPLITS)} and metric in "
            f"{'|'.join(OPTIMIZABLE)}, e.g. optimized_metric=val/auroc (select on validation; test/... selects on the test set)."
        )
    if split == "test" and allow_test is not True:
        raise SweepConfigError(
            f"optimized_metric={name} would let a sweep choose its settings on the test split, whose figures are then "
            f"biased upwards. Fix: optimized_metric=val/{metric}; or, if you mean it (e.g. reproducing a paper's "
            "protocol), add allow_test_objective=true (docs/sweeps.md)."
        )
    return split, metric


# ---------------------------------------------------------------------------- threads per job


def job_threads(cfg: DictConfig) -> int | None:
    """The torch CPU threads for this job from ``threads``: null (torch's default), a whole number,
    or "auto" (the CPU cores this process may use, divided by the launcher's parallel jobs)."""
    value = cfg.get("threads")
    if value is None:
        return None
    if value == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        try:
            n_jobs = int(HydraConfig.get().launcher.get("n_jobs") or 1)
        except ValueError:  # not inside a Hydra job
            n_jobs = 1
        if n_jobs < 0:  # joblib: -1 = every core, -2 = all but one, ...
            n_jobs = max(1, cores + 1 + n_jobs)
        return max(1, cores // n_jobs)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise SweepConfigError(
        f"threads={value!r} is not allowed: use null (torch's default), auto (CPU cores / parallel jobs) or a whole number >= 1."
    )


def set_job_threads(cfg: DictConfig) -> None:
    """Apply ``threads`` with torch.set_num_threads (before any model or data exists)."""
    threads = job_threads(cfg)
    if threads is not None:
        torch.set_num_threads(threads)
        log.info("torch CPU threads: %d (threads=%s)", threads, cfg.get("threads"))


# ------------------------------------------------------------------------------ job folder names


def sweep_keys(task_overrides: Iterable[object], sweeper_params: Iterable[str] | None) -> set[str]:
    """Keys a multirun varies: command-line sweeps (a,b / range / choice / interval / glob) and the
    keys of ``hydra.sweeper.params`` (shown in job names even where the command line fixes them,
    so that names stay alike across runs of one preset)."""
    swept = {o.key_or_group for o in parse_overrides(task_overrides) if o.is_sweep_override()}
    return swept | set(sweeper_params or {})


def current_swept_keys() -> set[str] | None:
    """The swept keys published by SweepSummary for this multirun; None when unknown."""
    text = os.environ.get(SWEPT_ENV)
    return set(json.loads(text)) if text else None


def _readable(value: object) -> str:
    """A value as folder-name text: lists joined by "+", paths by their last two parts, other
    characters than letters, digits and ._+- as "_"."""
    if isinstance(value, (list, tuple, ListConfig)):
        return "+".join(_readable(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}-{_readable(v)}" for k, v in value.items())
    text = str(value)
    if "/" in text:
        text = "_".join([p for p in text.split("/") if p][-2:])
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def run_name(overrides: Iterable[object], exclude_keys: Sequence[str] = (), swept: set[str] | None = None) -> str:
    """A job folder name from its overrides, e.g. "alpha=0.1,latent_dim=64".

    Shows the swept keys (all non-excluded overrides when the swept keys are unknown), with short
    keys and folder-safe values (floats to 4 significant digits). Where that text could collide (a
    value changed to be folder-safe, e.g. a path or a list; an override left out) or is cut to
    MAX_NAME characters, a 6-character hash of all the job's overrides is appended, so two
    different jobs never share a folder.
    """
    parsed = parse_overrides(overrides)
    swept = current_swept_keys() if swept is None else swept
    if swept:
        shown = [o for o in parsed if o.key_or_group in swept]
    else:
        shown = [o for o in parsed if o.key_or_group not in set(exclude_keys or ())]
    exact = len(shown) == len(parsed) or bool(swept)
    names = short_keys(o.key_or_group for o in shown)
    parts = []
    for o in shown:
        original = o.get_value_element_as_str()
        raw = o.value()
        value = _readable(raw if isinstance(raw, (list, dict)) else f"{raw:.4g}" if isinstance(raw, float) else original)
        exact &= value == original
        parts.append(f"{names[o.key_or_group]}={value}")
    name = ",".join(parts)
    if len(name) > MAX_NAME:
        name, exact = name[:MAX_NAME], False
    if exact:
        return name or "default"
    digest = hashlib.sha1("\n".join(sorted(o.input_line or "" for o in parsed)).encode()).hexdigest()[:6]
    return f"{name or 'default'}-{digest}"


# --------------------------------------------------------------------------------------- summaries


def _fmt(v: object) -> str:
    """A markdown cell: metrics with 4 decimals, a setting given with more than 4 significant digits
    (Optuna's 0.04734989304499478) with 4 (the CSV keeps every digit)."""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, str) and "." in v:
        try:
            short = f"{float(v):.4g}"
        except ValueError:
            return v
        return short if len(short) < len(v) else v
    return "" if v is None else str(v)


def _cell(row: dict, key: str) -> str:
    """A value with its std ("± 0.0123") and its interval ("[0.69, 0.73]") where the row has them."""
    if key not in row:
        return ""
    text = _fmt(row[key])
    std = f"{key[: -len('_mean')]}_std" if key.endswith("_mean") else None
    if std in row:
        text += f" ± {row[std]:.4f}"
    if f"{key}_ci_low" in row:
        text += f" [{row[f'{key}_ci_low']:.2f}, {row[f'{key}_ci_high']:.2f}]"
    return text


def _markdown(rows: list[dict], best_key: str | None) -> str:
    if not rows:
        return "(no finished jobs)\n"
    every = list(dict.fromkeys(k for r in rows for k in r))
    shown_in_cell = {k for k in every if k.endswith("_std") and f"{k[:-4]}_mean" in every}
    shown_in_cell |= {k for k in every if k.endswith(("_ci_low", "_ci_high")) and k.rsplit("_ci_", 1)[0] in every}
    keys = [k for k in every if k not in shown_in_cell]
    scored = [r for r in rows if isinstance(r.get(best_key), (int, float))]
    best = max(scored, key=lambda r: r[best_key], default=None)
    lines = ["| " + " | ".join(keys) + " | best |", "|" + " --- |" * (len(keys) + 1)]
    lines += ["| " + " | ".join(_cell(r, k) for k in keys) + f" | {'**best**' if r is best else ''} |" for r in rows]
    return "\n".join(lines) + "\n"


def _optuna_note(sweep_dir: Path) -> str:
    results = sweep_dir / "optimization_results.yaml"
    if not results.is_file():
        return ""
    found = yaml.safe_load(results.read_text()) or {}
    return f"\nOptuna (optimization_results.yaml): best value {found.get('best_value')} with {found.get('best_params')}\n"


def summarize(sweep_dir: str | Path) -> str:
    """Write summary.csv/.md (and seeds_summary.* when seeds or classes vary) into the sweep
    folder, and summary.png (``anogan.reporting.sweep_figure``) over one or two swept keys; the best row is
    marked by validation AUROC."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    atomic_write_text(sweep_dir / "summary.csv", csv_text(rows))
    figure = write_sweep_figure(sweep_dir, rows, selected_column(sweep_dir))
    text = (
        f"# Sweep {sweep_dir}\n\nValidation and test side by side; **best** = highest validation AUROC "
        f"(selection never looks at test). [low, high]: 95% bootstrap interval.\n\n{_markdown(rows, 'val_auroc')}"
    )
    if figure is not None:
        text += f"\n![the selected metric per swept setting]({figure.name})\n"
    text += _optuna_note(sweep_dir)
    if any("seed" in r for r in rows) or len({r.get("normal_class") for r in rows}) > 1:  # seeds or classes vary
        seeds = aggregate_seeds(rows)
        atomic_write_text(sweep_dir / "seeds_summary.csv", csv_text(seeds))
        text += (
            "\n## Mean ± std over seeds\n\n[low, high]: the mean over seeds of each run's 95% interval "
            f"(test-set uncertainty of one run).\n\n{_markdown(seeds, 'val_auroc_mean')}"
        )
    atomic_write_text(sweep_dir / "summary.md", text)
    return text


class SweepSummary(Callback):
    """Hydra callback: publish the swept keys (for job folder names) when a multirun starts; print
    and write the sweep's summary table when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        keys = sweep_keys(config.hydra.overrides.task, config.hydra.sweeper.get("params"))
        os.environ[SWEPT_ENV] = json.dumps(sorted(keys))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(SWEPT_ENV, None)
        print(summarize(config.hydra.sweep.dir))


def main() -> None:
    parser = argparse.ArgumentParser(description="(Re)build the summary table of a sweep folder.")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"{args.sweep_dir} is not a folder; give a sweep folder such as outputs/multirun/<date>")
    print(summarize(args.sweep_dir))


if __name__ == "__main__":
    main()
