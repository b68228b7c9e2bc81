"""A sweep folder as tables: one row per job (``collect``), the mean ± std over seeds of each
setting (``aggregate_seeds``), and the CSV text of either (``csv_text``).

A row holds the job's setting (the overrides that vary between the jobs, by their short keys,
and the CIFAR-10 class name) and its results (``result_columns``: validation and test metrics
with their 95% intervals, the baselines, the threshold, the wall time); selection is on
validation only, test columns are there for the record.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

SPLITS = ("val", "test")
METRICS = ("auroc", "ap", "f1")

# Overrides that change how jobs run, not what they compute: never a column of a summary.
RUN_ONLY_KEYS = {"launcher", "threads", "trainer.enable_progress_bar"}
# Baselines on the same test images (metrics.json "test_components_auroc"): what the GAN adds.
BASELINES = {
    "raw_score": "auroc_raw_score",
    "complexity_corrected": "auroc_complexity_corrected",
    "complexity_baseline": "auroc_complexity_only",
    "random_baseline": "auroc_random",
    "residual_over_complexity": "auroc_residual_over_complexity",
}
# The primary score's test AUROC minus the complexity-only baseline's, with DeLong's 95% interval
# (metrics.json "versus_complexity_baseline"): mean ± std over seeds in seeds_summary.
VERSUS = "test_auroc_minus_complexity_only"
# Published one-class CIFAR-10 AUROC (%), Ruff et al., Deep SVDD (ICML 2018), Table 1, as recalled
# (the per-class means reproduce the paper's means 61.8 and 64.8): AnoGAN, one-class Deep SVDD.
PUBLISHED = {
    "airplane": (67.1, 61.7),
    "automobile": (54.7, 65.9),
    "bird": (52.9, 50.8),
    "cat": (54.5, 59.1),
    "deer": (65.1, 60.9),
    "dog": (60.3, 65.7),
    "frog": (58.5, 67.7),
    "horse": (62.5, 67.3),
    "ship": (75.8, 75.9),
    "truck": (66.5, 73.1),
}


def parse_overrides(overrides: Iterable[object]) -> list[Override]:
    """Hydra's parse of command-line overrides (``key=value``, sweeps such as ``key=a,b``)."""
    return OverridesParser.create().parse_overrides([str(o) for o in overrides])


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """ "mapping.alpha" -> "alpha", unless two keys end alike (then both stay in full)."""
    keys = list(keys)
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _overrides(job: Path) -> dict[str, str]:
    items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    return {o.key_or_group: o.get_value_element_as_str() for o in parse_overrides(items)}


def _class_name(job: Path) -> str | None:
    """The normal class of a CIFAR-10 job, from its composed config."""
    data = (yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}).get("data", {})
    if "normal_class" not in data:
        return None
    from anogan.config.choices import CLASSES, class_index

    return CLASSES[class_index(data["normal_class"])]


def _with_interval(row: dict[str, Any], column: str, value: object, interval: object) -> None:
    row[column] = value
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        row[f"{column}_ci_low"], row[f"{column}_ci_high"] = interval


def result_columns() -> set[str]:
    """Every result column collect() may write (the rest of a row describes the job's setting)."""
    cols = {f"{s}_{m}" for s in SPLITS for m in METRICS} | set(BASELINES.values()) | {VERSUS}
    cols |= {f"{c}_ci_{b}" for c in list(cols) for b in ("low", "high")}
    return cols | {"threshold", "wall_time_s", "gan", "job", "status", "seed"}


def collect(sweep_dir: Path) -> list[dict]:
    """One row per finished job (a folder with metrics.json); unfinished jobs are listed as such.
    Validation and test metrics side by side, with their 95% intervals where metrics.json has them."""
    jobs = sorted(p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml"))
    overrides = {job: _overrides(job) for job in jobs}
    varying = sorted(
        {
            k
            for o in overrides.values()
            for k, v in o.items()
            if k not in RUN_ONLY_KEYS and any(p.get(k) != v for p in overrides.values())
        }
    )
    names = short_keys(varying)
    rows = []
    for job in jobs:
        row: dict[str, Any] = {names[k]: overrides[job].get(k, "") for k in varying}
        name = _class_name(job)
        if name:  # the name, also where the override gave an index ("1" -> "automobile")
            row["normal_class"] = name
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text())
            for metric in METRICS:
                for split in SPLITS:
                    if metric in m.get(split, {}):
                        _with_interval(row, f"{split}_{metric}", m[split][metric], m[split].get(f"{metric}_ci"))
            components = m.get("test_components_auroc", {})
            for key, column in BASELINES.items():
                if key in components:
                    interval = components.get(f"{key}_interval", m.get(f"{key}_interval"))
                    _with_interval(row, column, components[key], interval)
            versus = (m.get("versus_complexity_baseline") or {}).get("test")
            if versus:
                _with_interval(row, VERSUS, versus["difference"], versus["ci"])
            threshold = m.get("threshold") or {}
            row["threshold"] = threshold.get("value", threshold.get("f1"))  # the one behind the labels
            row["wall_time_s"] = m.get("wall_time_s", {}).get("total")
            row["gan"] = "reused" if str(m.get("gan_source", "")).startswith("cache") else m.get("gan_source", "")
        else:
            row["status"] = "unfinished"
        row["job"] = job.name
        rows.append(row)
    return rows


def aggregate_seeds(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds for each setting (rows of ``collect`` that differ only in their seed
    and results), in the order the settings first come; rows without a test AUROC are left out.
    Means and stds are ``statistics.fmean`` / ``stdev`` (correctly rounded); a column is
    averaged only where every seed of the setting has a value. Intervals: the mean of the
    per-seed lower and upper bounds (the test-set uncertainty of one run, beside the seed-to-seed std)."""
    scored = pd.DataFrame([row for row in rows if "test_auroc" in row])
    if scored.empty:
        return []
    results = result_columns()
    setting = [k for k in scored.columns if k not in results]
    groups = scored.groupby(setting, sort=False, dropna=False) if setting else [((), scored)]
    out = []
    for _, members in groups:
        agg: dict[str, Any] = members[setting].iloc[0].dropna().to_dict()  # a key no row of the setting has stays out
        for column in [f"{split}_{metric}" for metric in METRICS for split in SPLITS] + [VERSUS]:
            if _complete(members, column):
                agg[f"{column}_mean"] = statistics.fmean(members[column])
                agg[f"{column}_std"] = float(statistics.stdev(members[column])) if len(members) > 1 else 0.0
                _mean_interval(agg, f"{column}_mean", members, column)
        for column in BASELINES.values():
            if _complete(members, column):
                agg[f"{column}_mean"] = statistics.fmean(members[column])
                _mean_interval(agg, f"{column}_mean", members, column)
        wall = members["wall_time_s"].fillna(0.0) if "wall_time_s" in members else [0.0] * len(members)
        agg["wall_time_s_mean"] = statistics.fmean(wall)
        agg["seeds"] = len(members)
        name = agg.get("normal_class")
        if name in PUBLISHED:
            agg["published_anogan"], agg["published_deep_svdd"] = (v / 100 for v in PUBLISHED[name])
        out.append(agg)
    return out


def _complete(members: pd.DataFrame, column: str) -> bool:
    """Every row of ``members`` has a number in ``column``."""
    return column in members and bool(pd.to_numeric(members[column], errors="coerce").notna().all())


def _mean_interval(agg: dict, target: str, members: pd.DataFrame, column: str) -> None:
    if _complete(members, f"{column}_ci_low"):
        for bound in ("low", "high"):
            agg[f"{target}_ci_{bound}"] = statistics.fmean(members[f"{column}_ci_{bound}"])


def csv_text(rows: list[dict]) -> str:
    """``rows`` as CSV text: one column per key any row has, in the order keys first come; a
    missing value is empty; floats as ``str`` gives them (every digit); lines end with LF."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
