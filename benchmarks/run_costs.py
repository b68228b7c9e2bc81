"""Estimated against actual phase times, and validation/test AUROC, of finished runs, from their folders.

    python benchmarks/run_costs.py RUN_DIR [RUN_DIR ...] [--group-by-prefix]

Reads each run's ``metrics.json`` (AUROC, ``wall_time_s``) and its log (``*.log`` beside or inside the
folder, written with stdout not a terminal): the ``estimate:`` lines printed before training and the
last progress line of each phase (its elapsed time). Prints one JSON object: per run, per phase the
estimate and the actual seconds and their ratio; with ``--group-by-prefix``, runs whose folder names
differ only in a trailing ``_s<seed>`` are summarised as mean ± std of validation and test AUROC.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

_UNITS = {"s": 1, "m": 60, "h": 3600}
_ESTIMATE = re.compile(r"estimate: (GAN|encoder|scoring): .* ≈ (\S+) on ")
_PROGRESS = re.compile(r"(GAN training|encoder training|Scoring [^:]*): (\d+)/(\d+) batches.*?, (\S+) elapsed")
_PHASE = {"GAN training": "GAN", "encoder training": "encoder"}


def seconds(text: str) -> float:
    """``4s``, ``3m20s``, ``2h05m`` (anogan.utils.progress.duration) in seconds."""
    return float(sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smh])", text)))


def read_log(path: Path) -> dict:
    """{phase: {"estimate_s", "actual_s"}} from one run's log."""
    out: dict = {}
    for line in path.read_text(errors="replace").splitlines():
        if m := _ESTIMATE.search(line):
            out.setdefault(m.group(1), {})["estimate_s"] = seconds(m.group(2))
        elif (m := _PROGRESS.search(line)) and m.group(2) == m.group(3):
            phase = _PHASE.get(m.group(1), "scoring")
            out.setdefault(phase, {})["actual_s"] = seconds(m.group(4))
    for v in out.values():
        if v.get("estimate_s") and v.get("actual_s"):
            v["ratio"] = round(v["estimate_s"] / v["actual_s"], 2)
    return out


def read_run(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    logs = sorted(folder.parent.glob(f"{folder.name}.log")) + sorted(folder.glob("*.log"))
    return {
        "val_auroc": metrics["val"].get("auroc"),
        "test_auroc": metrics["test"].get("auroc"),
        "wall_time_s": metrics.get("wall_time_s"),
        "phases": read_log(logs[0]) if logs else {},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--group-by-prefix", action="store_true", help="mean ± std over runs named <prefix>_s<seed>")
    a = p.parse_args(argv)
    runs = {str(r.name): read_run(r) for r in a.runs if (r / "metrics.json").is_file()}
    result: dict = {"runs": runs}
    if a.group_by_prefix:
        groups: dict[str, list[dict]] = {}
        for name, run in runs.items():
            groups.setdefault(re.sub(r"_s\d+$", "", name), []).append(run)
        result["groups"] = {
            g: {
                f"{k}_{stat}": round(fn([r[k] for r in rs]), 4) if len(rs) > 1 or stat == "mean" else None
                for k in ("val_auroc", "test_auroc")
                for stat, fn in (("mean", statistics.mean), ("std", statistics.stdev))
            }
            | {"runs": len(rs)}
            for g, rs in groups.items()
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
