"""docs/guide.py (the notebook guide, jupytext percent format) executes as a notebook, end to end,
on the tiny CIFAR-10 copy with QUICK settings; its outputs are never written into the repository."""

import pytest

from conftest import REPO

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")


@pytest.mark.slow
def test_the_guide_executes(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("ANOGAN_GUIDE_DATA", str(tiny_cifar))
    monkeypatch.setenv("ANOGAN_GUIDE_QUICK", "1")
    monkeypatch.setenv("ANOGAN_GUIDE_RUN", str(tmp_path / "guide_run"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = jupytext.read(REPO / "docs" / "guide.py")
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "thresholds fitted on validation" in text and "my rule (99th percentile of validation normals)" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the examples figure and the histograms
    assert (tmp_path / "guide_run" / "scorer.pt").is_file()
