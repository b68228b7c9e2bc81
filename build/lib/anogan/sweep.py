"""Sweeps: readable job names, and one summary table per sweep folder.

The table is written when a Hydra multirun ends (``SweepSummary`` callback) and can be rebuilt
at any time, e.g. after an interrupted or extended sweep:

    python -m anogan.sweep outputs/multirun/2026-11-28_15-00-00
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

METRICS = ("auroc", "ap", "f1")
# Baselines on the same test images (metrics.json "test_components_auroc"): what the GAN adds.
BASELINES = {"raw_score": "auroc_raw_score", "complexity_corrected": "auroc_complexity_corrected", "complexity_baseline": "auroc_complexity_only", "random_baseline": "auroc_random", "residual_over_complexity": "auroc_residual_over_complexity"}
# Published one-class CIFAR-10 AUROC (%), Ruff et al., Deep SVDD (ICML 2018), Table 1, as recalled
# (the per-class means reproduce the paper's means 61.8 and 64.8): AnoGAN, one-class Deep SVDD.
PUBLISHED = {
    "airplane": (67.1, 61.7), "automobile": (54.7, 65.9), "bird": (52.9, 50.8), "cat": (54.5, 59.1),
    "deer": (65.1, 60.9), "dog": (60.3, 65.7), "frog": (58.5, 67.7), "horse": (62.5, 67.3),
    "ship": (75.8, 75.9), "truck": (66.5, 73.1),
}


SWEEP_SYNTAX = ("range(", "choice(", "interval(", "glob(")


def swept_keys(argv: list[str] | None = None) -> set[str]:
    """Keys given several values: on the command line (a,b / range(...)) or in hydra.sweeper.params."""
    keys = set()
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if sep and ("," in value or value.startswith(SWEEP_SYNTAX)):
            keys.add(key.lstrip("+~"))
    try:
        keys |= set(HydraConfig.get().sweeper.get("params") or {})
    except (ValueError, AttributeError):  # no Hydra job, or a sweeper without params
        pass
    return keys


def run_name(override_dirname: str, swept: set[str] | None = None) -> str:
    """"mapping.alpha=0.1,model.latent_dim=64" -> "alpha=0.1,latent_dim=64": the swept overrides
    only (all of them when nothing is swept), short keys, safe as a folder name."""
    swept = swept_keys() if swept is None else swept
    parts = []
    for item in filter(None, override_dirname.split(",")):
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if not swept or key in swept:
            parts.append(f"{key.split('.')[-1]}={value.replace('/', '_')}")
    return ",".join(parts) or "default"


def _overrides(job: Path) -> dict[str, str]:
    items = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(item.lstrip("+~").split("=", 1) for item in items)


def _class_name(job: Path) -> str | None:
    """The normal class of a CIFAR-10 job, from its composed config."""
    data = (yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}).get("data", {})
    if "normal_class" not in data:
        return None
    from anogan.data.cifar10 import CLASSES, class_index

    return CLASSES[class_index(data["normal_class"])]


def collect(sweep_dir: Path) -> list[dict]:
    """One row per finished job (a folder with metrics.json); unfinished jobs are listed as such."""
    jobs = sorted(p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml"))
    overrides = {job: _overrides(job) for job in jobs}
    varying = sorted({k for o in overrides.values() for k, v in o.items() if any(p.get(k) != v for p in overrides.values())})
    rows = []
    for job in jobs:
        row = {k.split(".")[-1]: overrides[job].get(k, "") for k in varying}
        name = _class_name(job)
        if name:  # the name, also where the override gave an index ("1" -> "automobile")
            row["normal_class"] = name
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text())
            row.update({f"test_{k}": m["test"][k] for k in METRICS})
            row.update({v: m["test_components_auroc"][k] for k, v in BASELINES.items() if k in m.get("test_components_auroc", {})})
            row["threshold"] = m["threshold"]["f1"]
            row["wall_time_s"] = m.get("wall_time_s", {}).get("total")
            row["gan"] = "reused" if str(m.get("gan_source", "")).startswith("cache") else m.get("gan_source", "")
        else:
            row["status"] = "unfinished"
        row["job"] = job.name
        rows.append(row)
    return rows


def aggregate_seeds(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds for each setting (rows that differ only in their seed)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "test_auroc" not in row:
            continue
        per_run = {"seed", "job", "threshold", "wall_time_s", "gan", *BASELINES.values()}
        setting = tuple((k, v) for k, v in row.items() if k not in per_run and not k.startswith("test_"))
        groups.setdefault(setting, []).append(row)
    out = []
    for setting, members in groups.items():
        agg = dict(setting)
        for k in METRICS:
            values = [m[f"test_{k}"] for m in members]
            agg[f"test_{k}_mean"] = statistics.fmean(values)
            agg[f"test_{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        for k in BASELINES.values():
            if all(k in m for m in members):
                agg[f"{k}_mean"] = statistics.fmean(m[k] for m in members)
        agg["wall_time_s_mean"] = statistics.fmean(m.get("wall_time_s") or 0.0 for m in members)
        agg["seeds"] = len(members)
        name = agg.get("normal_class")
        if name in PUBLISHED:
            agg["published_anogan"], agg["published_deep_svdd"] = (v / 100 for v in PUBLISHED[name])
        out.append(agg)
    return out


def _markdown(rows: list[dict], best_key: str | None) -> str:
    if not rows:
        return "(no finished jobs)\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    best = max((r for r in rows if best_key in r), key=lambda r: r[best_key], default=None) if best_key else None
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " | best |", "|" + " --- |" * (len(keys) + 1)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + f" | {'**best**' if r is best else ''} |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def summarize(sweep_dir: str | Path) -> str:
    """Write summary.csv/.md (and seeds_summary.* when seeds vary) into the sweep folder."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    _write_csv(rows, sweep_dir / "summary.csv")
    text = f"# Sweep {sweep_dir}\n\n{_markdown(rows, 'test_auroc')}"
    if any("seed" in r for r in rows) or len({r.get("normal_class") for r in rows}) > 1:  # seeds or classes vary
        seeds = aggregate_seeds(rows)
        _write_csv(seeds, sweep_dir / "seeds_summary.csv")
        text += f"\n## Mean ± std over seeds\n\n{_markdown(seeds, 'test_auroc_mean')}"
    (sweep_dir / "summary.md").write_text(text)
    return text


class SweepSummary(Callback):
    """Hydra callback: print and write the sweep's summary table when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
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
