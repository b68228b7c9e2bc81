"""No unintended change of results: fixed-seed tiny runs of this checkout and of REFERENCE, the commit of
the last intended change of results, give the same scores.csv, metrics.json (times and paths aside) and
scorer.pt contents (``benchmarks/equivalence.py``, which also takes any two checkouts by hand)."""

import subprocess
import sys
import tarfile

import pytest

from conftest import REPO

# the last intended change of results: image complexity in float64 and a floor on the spread of log-scaled
# combined components (CHANGELOG); move it forward, with a changelog line, when a change of results is intended
REFERENCE = "229db46b69022882dcce2cd571546278bc771788"


def _has_reference() -> bool:
    git = subprocess.run(["git", "cat-file", "-e", f"{REFERENCE}^{{commit}}"], cwd=REPO, capture_output=True)
    return git.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _has_reference(), reason=f"the checkout has no git history holding {REFERENCE}")
def test_tiny_runs_equal_the_reference_commit(tmp_path):
    archive = tmp_path / "reference.tar"
    subprocess.run(["git", "archive", "-o", str(archive), REFERENCE], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "reference", filter="data")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from equivalence import main as compare
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert compare([str(tmp_path / "reference"), str(REPO), str(tmp_path / "work"), "latent", "dcombined"]) == 0
