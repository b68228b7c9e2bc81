"""The memory bank's greedy k-center coreset (``anogan.scorers.discriminator.greedy_coreset``), timed and
checked, at a realistic size (default: 30,720 cells × 128 dims → 16,384, the cell bank of 240
training images at 64 px), printed as one JSON object:

    python benchmarks/coreset_bench.py [--rows 30720 --dim 128 --kept 16384 --projections 32,64 --seed 0]

For each way of choosing: seconds, and the coverage radius (the largest distance, in the full
features, of a bank row to its nearest kept row: what the coreset minimises); for the float32
coresets also the estimate ``anogan.engine.probe.coreset_seconds`` made beforehand. ``float64`` is the
previous implementation (the same greedy rule in float64, no projection), kept here as the
reference. The rows are a mixture of 64 Gaussian clusters with unequal spreads (features of images
cluster; plain Gaussian noise has no structure to cover), seeded.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from anogan.engine.probe import coreset_seconds
from anogan.scorers.discriminator import coverage_radius, greedy_coreset


def float64_coreset(bank: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The previous implementation: the same rule, distances in float64 on the full features."""
    bank64 = bank.double()
    norms = bank64.pow(2).sum(1, keepdim=True)

    def distances_to(i: int) -> torch.Tensor:
        row = bank64[i][None]
        return (norms + row.pow(2).sum(1)[None] - 2 * bank64 @ row.T).clamp_min(0).sqrt().float()[:, 0]

    gen = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(bank), (1,), generator=gen))]
    nearest = distances_to(chosen[0])
    for _ in range(size - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, distances_to(i))
    return torch.tensor(chosen)


def clustered_rows(rows: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(64, dim, generator=gen) * 3
    spread = torch.rand(64, generator=gen) * 1.5 + 0.25
    which = torch.randint(64, (rows,), generator=gen)
    return centres[which] + torch.randn(rows, dim, generator=gen) * spread[which, None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=30720)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--kept", type=int, default=16384)
    p.add_argument("--projections", default="32,64", help="comma-separated projection dims to try")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-float64", action="store_true", help="leave out the (slow) previous implementation")
    a = p.parse_args()
    bank = clustered_rows(a.rows, a.dim, a.seed)
    result: dict = {"rows": a.rows, "dim": a.dim, "kept": a.kept, "threads": torch.get_num_threads(), "coresets": {}}
    ways: list[tuple[str, int | None]] = [] if a.skip_float64 else [("float64", None)]
    ways += [("float32", None)] + [(f"float32, projected to {d}", int(d)) for d in a.projections.split(",") if d]
    for name, projection in ways:
        estimate = None if name == "float64" else coreset_seconds(a.rows, min(projection or a.dim, a.dim), a.kept)
        start = time.perf_counter()
        kept = float64_coreset(bank, a.kept, a.seed) if name == "float64" else greedy_coreset(bank, a.kept, a.seed, projection)
        seconds = time.perf_counter() - start
        result["coresets"][name] = {
            "seconds": round(seconds, 2),
            "estimated_seconds": None if estimate is None else round(estimate, 2),
            "coverage_radius": round(coverage_radius(bank, bank[kept]), 4),
        }
        print(json.dumps({name: result["coresets"][name]}), flush=True)  # progress, one line per coreset
    exact = result["coresets"]["float32"]
    for entry in result["coresets"].values():
        entry["speedup_vs_float32"] = round(exact["seconds"] / entry["seconds"], 2)
        entry["radius_vs_float32"] = round(entry["coverage_radius"] / exact["coverage_radius"], 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
