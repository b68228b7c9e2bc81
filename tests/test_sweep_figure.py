"""The sweep as a picture: summary.png over two swept keys (heatmap with intervals), one key (error
bars), none for three; the selected metric follows optimized_metric; seeds are averaged."""

import ast
import json
from pathlib import Path

import yaml

import anogan.reporting
from anogan.reporting.sweep import summarize
from anogan.reporting.sweep_figure import selected_column, sweep_figure
from anogan.reporting.sweep_table import collect


def _job(root, name, overrides, val, ci=None, optimized="val/auroc"):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {}, "optimized_metric": optimized}))
    if val is not None:
        metrics = {"val": {"auroc": val, "ap": val / 2, "f1": 0.5}, "test": {"auroc": 0.6, "ap": 0.5, "f1": 0.5}}
        if ci:
            metrics["val"]["auroc_ci"] = ci
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_two_swept_keys_give_a_heatmap_with_each_cells_value_and_interval(tmp_path):
    grid = {("0.1", "64"): 0.61, ("0.1", "128"): 0.72, ("0.9", "64"): 0.55, ("0.9", "128"): None}  # one unfinished
    for (alpha, latent), val in grid.items():
        ci = [val - 0.05, val + 0.04] if val else None
        _job(tmp_path, f"a{alpha}l{latent}", [f"mapping.alpha={alpha}", f"model.latent_dim={latent}"], val, ci)
    fig = sweep_figure(collect(tmp_path), "val_auroc")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.1", "0.9"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "128"]  # numeric order, not text order
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0.610\n[0.56, 0.65]", "0.720\n[0.67, 0.76]", "0.550\n[0.50, 0.59]", "no result"]
    best = [p for p in ax.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(best) == 1 and best[0].get_xy() == (0.5, -0.5)  # the 0.72 cell: row 0.1, column 128
    text = summarize(tmp_path)
    png = tmp_path / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![the selected metric per swept setting](summary.png)" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_the_figure_follows_optimized_metric_and_one_key_gives_error_bars(tmp_path):
    for alpha, val in (("0.5", 0.8), ("0.1", 0.7), ("0.9", 0.6)):
        _job(tmp_path, f"a{alpha}", [f"mapping.alpha={alpha}"], val, optimized="val/ap")
    assert selected_column(tmp_path) == "val_ap"
    fig = sweep_figure(collect(tmp_path), selected_column(tmp_path))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.5", "0.9"]
    assert [t.get_text() for t in ax.texts] == ["0.350", "0.400", "0.300"]  # val/ap = val auroc / 2 here
    assert ax.get_ylabel() == "val_ap"


def test_seeds_are_averaged_and_three_keys_draw_nothing(tmp_path):
    for seed, val in ((0, 0.6), (1, 0.8)):
        for alpha in ("0.1", "0.9"):
            _job(tmp_path / "s", f"a{alpha}s{seed}", [f"mapping.alpha={alpha}", f"seed={seed}"], val, [val - 0.1, val + 0.1])
    fig = sweep_figure(collect(tmp_path / "s"), "val_auroc")
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.700", "0.700"]  # mean over the two seeds
    assert fig.axes[0].get_ylabel() == "val_auroc (mean over seeds)"
    for i, keys in enumerate([(1, 1, 1), (1, 2, 1)]):
        _job(tmp_path / "three", f"j{i}", [f"a={keys[0]}", f"b={keys[1]}", f"c={i}"], 0.5)
    _job(tmp_path / "three", "j2", ["a=2", "b=1", "c=0"], 0.5)
    assert sweep_figure(collect(tmp_path / "three"), "val_auroc") is None
    summarize(tmp_path / "three")
    assert not (tmp_path / "three" / "summary.png").exists()


def test_the_sweep_modules_import_one_way():
    """sweep (names, summaries, the callback) -> sweep_figure -> sweep_table (the rows): no circle."""
    folder = Path(anogan.reporting.__file__).parent

    def imported(module):
        tree = ast.parse((folder / f"{module}.py").read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return {n.rsplit(".", 1)[-1] for n in names if n.startswith("anogan.reporting.")}

    assert imported("sweep") == {"sweep_figure", "sweep_table"}
    assert imported("sweep_figure") == {"sweep_table"}
    assert imported("sweep_table") == set()
