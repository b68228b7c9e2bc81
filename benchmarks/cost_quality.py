"""Validation AUROC against CPU minutes, per recipe, from finished run folders (nothing is recomputed).

    python benchmarks/cost_quality.py RUN [RUN ...] [--label NAME=GLOB ...] [--time-logs DIR] [--figure OUT.png] [--json]
    python benchmarks/cost_quality.py runs/a15_* runs/b_geo15_* --time-logs runs/logs --figure /tmp/cq.png
    python benchmarks/cost_quality.py runs/f1*_s0 --label 'default=f1?_c*_s0' --json

Per run, from ``RUN/metrics.json``: validation and test AUROC (``val.auroc``, ``test.auroc``) and the
CPU minutes, from the first of

1. ``cpu_time_s.total`` (user + system seconds of the run's process and its finished children,
   counted from the start of the pipeline; source ``metrics``);
2. with ``--time-logs DIR``: ``/usr/bin/time -v`` output in ``DIR/<run folder name>.log`` and in any
   ``DIR/<tag>_<run folder name>.log`` (a queue's prefix), "User time (seconds)" + "System time
   (seconds)" summed over every such block in every such log: a killed attempt and the run that
   resumed it are one run's cost. A log whose name is another given run's folder name is that run's.
   Source ``time -v``;
3. ``wall_time_s.total``, source ``wall``: not CPU time (a run on two busy cores can use more or less),
   shown apart (``wall`` in the table, hollow markers in the figure).

A run's recipe is the first ``--label NAME=GLOB`` whose GLOB (fnmatch) matches the folder name, else the
folder name minus a trailing ``_c<class>_s<seed>`` or ``_s<seed>`` (``a15_c2_s0`` -> ``a15``,
``fp32_s1`` -> ``fp32``). Its class and seed come from ``config_resolved.yaml`` (``data.normal_class``
or ``data.category``, ``seed``), else from that suffix.

Prints a Markdown table with a row per recipe (runs, classes, validation and test AUROC mean ± std over
its runs, CPU minutes mean (min-max), where the CPU minutes came from), then a row per run; with
``--json`` one JSON object instead. Recipes over different classes are not comparable: the classes
column says which. ``--figure OUT.png``: validation AUROC against CPU minutes, a marker per run,
coloured by recipe, a dashed line at 60 CPU minutes (30 minutes on 2 cores). Bad input (a folder
without metrics.json, a log without /usr/bin/time -v lines, a malformed ``--label``) prints one line
and exits with code 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import statistics
import sys
from pathlib import Path

import yaml

from anogan.utils.errors import UserError

SUFFIX = re.compile(r"(?:_c(?P<cls>\d+))?_s(?P<seed>\d+)$")
_USER = re.compile(r"User time \(seconds\):\s*([0-9.]+)")
_SYSTEM = re.compile(r"System time \(seconds\):\s*([0-9.]+)")
BUDGET_MINUTES = 60.0  # 30 minutes on 2 cores


def recipe_of(name: str, labels: list[tuple[str, str]]) -> str:
    """The first ``(NAME, GLOB)`` whose GLOB matches ``name``, else ``name`` minus ``_c<k>_s<n>`` / ``_s<n>``."""
    for label, pattern in labels:
        if fnmatch.fnmatchcase(name, pattern):
            return label
    return SUFFIX.sub("", name)


def parse_label(text: str) -> tuple[str, str]:
    """``NAME=GLOB`` as ``(NAME, GLOB)``. Raises UserError when either side is empty."""
    name, sep, pattern = text.partition("=")
    if not sep or not name or not pattern:
        raise UserError(f"--label {text!r}: write NAME=GLOB, e.g. --label 'default=f1?_c*_s0'")
    return name, pattern


def log_cpu_seconds(path: Path) -> float:
    """User + system seconds of every ``/usr/bin/time -v`` block in ``path``. Raises UserError when the
    file is unreadable or holds no complete block."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror}); fix its permissions or leave out --time-logs") from err
    user, system = _USER.findall(text), _SYSTEM.findall(text)
    if not user or len(user) != len(system):
        raise UserError(
            f"{path}: no 'User time (seconds)' and 'System time (seconds)' lines of /usr/bin/time -v; "
            "remove it from --time-logs or rerun the job under /usr/bin/time -v"
        )
    return sum(map(float, user)) + sum(map(float, system))


def run_logs(name: str, logs_dir: Path, others: set[str]) -> list[Path]:
    """``DIR/<name>.log`` and ``DIR/<tag>_<name>.log``, except a log named after another run in ``others``."""
    found = sorted(logs_dir.glob(f"{name}.log")) + sorted(logs_dir.glob(f"*_{name}.log"))
    return [p for p in found if p.stem == name or p.stem not in others]


def cpu_minutes(metrics: dict, logs: list[Path], run: Path) -> tuple[float, str]:
    """The run's CPU minutes and their source (``metrics``, ``time -v`` or ``wall``). Raises UserError
    when metrics.json has neither ``cpu_time_s`` nor ``wall_time_s`` and no log was found."""
    if (metrics.get("cpu_time_s") or {}).get("total") is not None:
        return metrics["cpu_time_s"]["total"] / 60, "metrics"
    if logs:
        return sum(log_cpu_seconds(p) for p in logs) / 60, "time -v"
    if (metrics.get("wall_time_s") or {}).get("total") is not None:
        return metrics["wall_time_s"]["total"] / 60, "wall"
    raise UserError(f"{run / 'metrics.json'}: no cpu_time_s or wall_time_s; pass --time-logs DIR with its /usr/bin/time -v log")


def read_run(run: Path, labels: list[tuple[str, str]], logs_dir: Path | None, others: set[str]) -> dict:
    """One run's recipe, class, seed, validation and test AUROC and CPU minutes. Raises UserError for a
    folder without a readable metrics.json holding ``val.auroc`` and ``test.auroc``."""
    path = run / "metrics.json"
    if not path.is_file():
        raise UserError(f"{run}: no metrics.json (not a run folder, or an unfinished run); pass finished run folders only")
    try:
        metrics = json.loads(path.read_text())
        val, test = float(metrics["val"]["auroc"]), float(metrics["test"]["auroc"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{path}: unreadable or without val.auroc and test.auroc ({err!r}); rerun or leave the folder out"
        ) from err
    config_path = run / "config_resolved.yaml"
    cfg = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    data = cfg.get("data") or {}
    suffix = SUFFIX.search(run.name)
    cls = next((c for c in (data.get("normal_class"), data.get("category"), suffix and suffix["cls"]) if c is not None), None)
    seed = next((s for s in (cfg.get("seed"), suffix and suffix["seed"]) if s is not None), None)
    logs = run_logs(run.name, logs_dir, others) if logs_dir else []
    minutes, source = cpu_minutes(metrics, logs, run)
    return {
        "run": run.name,
        "path": str(run),
        "recipe": recipe_of(run.name, labels),
        "class": None if cls is None else str(cls),
        "seed": None if seed is None else int(seed),
        "val_auroc": val,
        "test_auroc": test,
        "cpu_minutes": minutes,
        "cpu_source": source,
        "logs": [str(p) for p in logs] if source == "time -v" else [],
    }


def _stats(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else None  # sample standard deviation
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per recipe, in order of first appearance: runs, classes, and mean/std/min/max of validation AUROC,
    test AUROC and CPU minutes over its runs; ``cpu_sources`` counts the runs per source."""
    out: dict[str, dict] = {}
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        rs = [r for r in runs if r["recipe"] == recipe]
        sources: dict[str, int] = {}
        for r in rs:
            sources[r["cpu_source"]] = sources.get(r["cpu_source"], 0) + 1
        out[recipe] = {
            "runs": len(rs),
            "classes": sorted({r["class"] for r in rs if r["class"] is not None}, key=lambda c: (len(c), c)),
            "val_auroc": _stats([r["val_auroc"] for r in rs]),
            "test_auroc": _stats([r["test_auroc"] for r in rs]),
            "cpu_minutes": _stats([r["cpu_minutes"] for r in rs]),
            "cpu_sources": sources,
        }
    return out


def _mean_sd(s: dict) -> str:
    return f"{s['mean']:.3f}" if s["std"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def tables(runs: list[dict], recipes: dict[str, dict]) -> str:
    """Markdown: a row per recipe, then a row per run."""
    out = [
        "| recipe | runs | classes | val AUROC | test AUROC | CPU minutes, mean (min-max) | from |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in recipes.items():
        cpu = r["cpu_minutes"]
        sources = ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in r["cpu_sources"].items())
        out.append(
            f"| {name} | {r['runs']} | {','.join(r['classes'])} | {_mean_sd(r['val_auroc'])} | {_mean_sd(r['test_auroc'])} | "
            f"{cpu['mean']:.1f} ({cpu['min']:.1f}-{cpu['max']:.1f}) | {sources} |"
        )
    out += [
        "",
        "| run | recipe | class | seed | val AUROC | test AUROC | CPU minutes | from |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        logs = f" ({len(r['logs'])} logs)" if len(r["logs"]) > 1 else ""
        out.append(
            f"| {r['run']} | {r['recipe']} | {r['class'] or ''} | {'' if r['seed'] is None else r['seed']} | "
            f"{r['val_auroc']:.3f} | {r['test_auroc']:.3f} | {r['cpu_minutes']:.1f} | {r['cpu_source']}{logs} |"
        )
    return "\n".join(out)


def write_figure(runs: list[dict], path: Path) -> Path:
    """Validation AUROC (y) against CPU minutes (x), one marker per run, a colour per recipe (hollow
    where the minutes are wall time), a dashed line at ``BUDGET_MINUTES``; written atomically as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no display needed

    from anogan.utils.io import atomic_savefig

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    for i, recipe in enumerate(dict.fromkeys(r["recipe"] for r in runs)):
        rs = [r for r in runs if r["recipe"] == recipe]
        colour, marker = colours[i % 10], "osD^v<>"[i // 10 % 7]
        for hollow in (False, True):
            pts = [r for r in rs if (r["cpu_source"] == "wall") == hollow]
            if pts:
                ax.scatter(
                    [r["cpu_minutes"] for r in pts],
                    [r["val_auroc"] for r in pts],
                    marker=marker,
                    edgecolors=colour,
                    facecolors="none" if hollow else colour,
                    label=f"{recipe} (wall minutes)" if hollow else recipe,
                )
    ax.axvline(BUDGET_MINUTES, color="grey", linestyle="--", linewidth=1)
    ax.text(BUDGET_MINUTES, 0.99, "30 min on 2 cores ", transform=ax.get_xaxis_transform(), va="top", ha="right", color="grey")
    ax.set_xlabel("CPU minutes (user + system)")
    ax.set_ylabel("validation AUROC")
    ax.set_xlim(left=0, right=max(BUDGET_MINUTES * 1.1, max(r["cpu_minutes"] for r in runs) * 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return atomic_savefig(fig, path, format="png", dpi=120)


def collect(args: argparse.Namespace) -> list[dict]:
    """Every given run read (``read_run``). Raises UserError for bad input."""
    labels = [parse_label(t) for t in args.label]
    if args.time_logs is not None and not args.time_logs.is_dir():
        raise UserError(f"--time-logs {args.time_logs}: no such folder; give the folder of the /usr/bin/time -v logs")
    names = {r.name for r in args.runs}
    return [read_run(r, labels, args.time_logs, names - {r.name}) for r in args.runs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders (each with metrics.json)")
    p.add_argument("--label", action="append", default=[], metavar="NAME=GLOB", help="recipe NAME for folder names matching GLOB")
    p.add_argument("--time-logs", type=Path, metavar="DIR", help="folder of /usr/bin/time -v logs named <run folder name>.log")
    p.add_argument("--figure", type=Path, metavar="OUT.png", help="write the scatter plot here (PNG)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    args = p.parse_args(argv)
    try:
        runs = collect(args)
        recipes = summarise(runs)
        if args.figure:
            write_figure(runs, args.figure)
    except UserError as err:
        print(f"cost_quality.py: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"recipes": recipes, "runs": runs}, indent=1) if args.json else tables(runs, recipes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
