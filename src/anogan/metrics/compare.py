"""Is run A's AUROC really different from run B's? Two tests for two scorers of the same images.

- ``anogan.metrics.stats.paired_bootstrap``: stratified paired bootstrap of the AUROC difference (the same
  resampled images score under both runs; Efron & Tibshirani 1993), percentile interval and
  two-sided p-value.
- ``anogan.metrics.stats.delong``: DeLong, DeLong & Clarke-Pearson (Biometrics 44, 1988), in the
  O(n log n) form of Sun & Xu (IEEE Signal Process. Lett. 21, 2014).

Command line::

    python -m anogan.metrics.compare <run_a> <run_b> [--split test|val] [--n-resamples 2000] [--seed 0] [--level 0.95]

reads both runs' ``scores.csv`` (columns id, split, label, score), joins the rows of one split
(``--split``: test by default; ``val`` to choose between two settings without looking at test) on
``id``, refuses (exit 2, one line) when the two runs did not score the same images, and prints JSON
and one sentence.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from anogan.metrics.stats import delong, paired_bootstrap
from anogan.utils.errors import CompareError, UserError


def read_split_scores(run_dir: Path, split: str = "test") -> pd.DataFrame:
    """The ``split`` rows of a run's scores.csv in file order: columns ``id``, ``label`` (int64)
    and ``score`` (float64, the float each text rounds to). Raises ``CompareError`` when the file,
    a column or the rows are missing, or an image id comes twice."""
    path = Path(run_dir) / "scores.csv"
    if not path.is_file():
        raise CompareError(f"{run_dir} has no scores.csv: give the folder of a finished train.py run")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    missing = {"id", "split", "label", "score"} - set(frame.columns)
    if missing:
        raise CompareError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
    rows = frame.loc[frame["split"] == split, ["id", "label", "score"]]
    rows = rows.astype({"id": np.int64, "label": np.int64, "score": np.float64})
    twice = rows["id"][rows["id"].duplicated()]
    if len(twice):
        raise CompareError(f"{path} lists the {split} image id {twice.iloc[0]} twice")
    if rows.empty:
        raise CompareError(f"{path} has no {split} rows")
    return rows


def join_runs(run_a: Path, run_b: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores of both runs on the same ``split`` images, sorted by id: (ids, labels, scores_a, scores_b).
    Raises ``CompareError`` when the image sets or their labels differ."""
    a, b = read_split_scores(run_a, split), read_split_scores(run_b, split)
    joined = a.merge(b, on="id", how="outer", suffixes=("_a", "_b"), sort=True, indicator=True)
    only_a, only_b = int((joined["_merge"] == "left_only").sum()), int((joined["_merge"] == "right_only").sum())
    if only_a or only_b:
        raise CompareError(
            f"the runs scored different {split} images ({only_a} only in {run_a}, {only_b} only in {run_b}): "
            "compare runs of the same data and split"
        )
    bad = joined["id"][joined["label_a"] != joined["label_b"]]
    if len(bad):
        raise CompareError(f"the runs label {len(bad)} {split} image(s) differently (first id {bad.iloc[0]}): not the same data")
    return (
        joined["id"].to_numpy(np.int64),
        joined["label_a"].to_numpy(np.int64),
        joined["score_a"].to_numpy(np.float64),
        joined["score_b"].to_numpy(np.float64),
    )


def sentence(result: dict, level: float) -> str:
    """The one-line verdict printed under the JSON."""
    lo, hi = result["ci"]
    verdict = "significant" if result["significant"] else "not significant"
    return (
        f"run A's AUROC {result['auroc_a']:.3f} vs run B's {result['auroc_b']:.3f}: difference {result['difference']:+.3f}, "
        f"{level:.0%} CI [{lo:+.3f}, {hi:+.3f}], p = {result['p_value']:.2g}, {verdict} at {1 - level:.2g}"
    )


def compare_runs(
    run_a: Path, run_b: Path, n_resamples: int = 2000, seed: int = 0, level: float = 0.95, split: str = "test"
) -> dict:
    """Paired bootstrap and DeLong on the ``split`` images both runs scored."""
    ids, labels, a, b = join_runs(run_a, run_b, split)
    try:
        boot = paired_bootstrap(a, b, labels, n_resamples, seed, level)
        dl = delong(a, b, labels, level)
    except UserError as e:
        raise CompareError(str(e)) from None
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "split": split,
        "images": len(ids),
        "normal": int((labels == 0).sum()),
        "anomalous": int((labels == 1).sum()),
        "paired_bootstrap": boot,
        "delong": dl,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--split", choices=("test", "val"), default="test", help="the rows compared (val: to choose a setting)")
    parser.add_argument("--n-resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", type=float, default=0.95)
    args = parser.parse_args(argv)
    try:
        result = compare_runs(args.run_a, args.run_b, args.n_resamples, args.seed, args.level, args.split)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    print(sentence(result["paired_bootstrap"], args.level) + f" (DeLong p = {result['delong']['p_value']:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
