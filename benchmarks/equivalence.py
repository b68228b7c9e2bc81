"""Fixed-seed tiny runs on two checkouts (e.g. before and after a refactoring); compare their outputs.

    git worktree add --detach /tmp/before <commit>      # the checkout to compare against
    python benchmarks/equivalence.py /tmp/before . /tmp/equivalence [mapping ...]

Run it with this checkout's src on PYTHONPATH (its tests/conftest.py provides the tiny data and
overrides). For each scorer mapping (default: every scorer of the tests) it writes the tests' tiny CIFAR-10 copy,
runs `train.py <the tests' tiny overrides> seed=0` in each checkout (its own src on PYTHONPATH, its own
GAN cache), then compares: scores.csv byte for byte, metrics.json minus timings and paths, and every
tensor and value of scorer.pt (its creation time aside: a scorer file records when it was made, and
torch.save writes a random serialization id, so its bytes differ between any two runs). Exit 0 when all
are identical.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

VOLATILE = (  # keys of run-dependent values (times, paths, versions), left out of the comparison
    "created",
    "time",
    "seconds",
    "path",
    "dir",
    "date",
    "host",
    "git",
    "version",
    "python",
    "torch",
    "cuda",
    "cpu",
    "device",
    "hardware",
)


def clean(obj, key=""):
    if isinstance(obj, dict):
        return {k: clean(v, k) for k, v in obj.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj


def same(a, b, where="scorer.pt"):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) or [where]
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [f"{where}: keys {sorted(set(a) ^ set(b)) if isinstance(b, dict) else type(b)}"]
        out = []
        for k in a:
            if any(w in str(k).lower() for w in VOLATILE):
                continue
            r = same(a[k], b[k], f"{where}.{k}")
            out += [] if r is True else r
        return out if out else True
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            r = same(x, y, f"{where}[{i}]")
            out += [] if r is True else r
        return out if out else True
    return True if a == b else [f"{where}: {a!r} != {b!r}"]


def run(checkout: Path, data: Path, out: Path, mapping: str) -> Path:
    from conftest import tiny_overrides  # the new checkout's tests (the config keys are the same in both)

    overrides = tiny_overrides(data, out, mapping) + ["seed=0"]
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, str(checkout / "train.py"), *overrides], cwd=checkout, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        sys.exit(f"{checkout} {mapping}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    runs = sorted((out / "run").glob("**/metrics.json"))
    return runs[-1].parent


def main(argv):
    old, new, work = (Path(a).resolve() for a in argv[:3])
    mappings = argv[3:] or ["latent", "encoder", "encoder_search", "transformations", "dfeatures", "dlogit", "dcombined"]
    sys.path.insert(0, str(new / "tests"))
    from conftest import write_tiny_cifar

    data = write_tiny_cifar(work / "cifar")
    bad = 0
    for mapping in mappings:
        a = run(old, data, work / f"old_{mapping}", mapping)
        b = run(new, data, work / f"new_{mapping}", mapping)
        checks = {
            "scores.csv": (a / "scores.csv").read_bytes() == (b / "scores.csv").read_bytes(),
            "metrics.json": clean(json.loads((a / "metrics.json").read_text()))
            == clean(json.loads((b / "metrics.json").read_text())),
            "scorer.pt": same(torch.load(a / "scorer.pt", weights_only=True), torch.load(b / "scorer.pt", weights_only=True)),
        }
        for name, ok in checks.items():
            print(f"{mapping:10} {name:12} {'identical' if ok is True else 'DIFFERENT ' + str(ok)[:500]}")
            bad += ok is not True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
