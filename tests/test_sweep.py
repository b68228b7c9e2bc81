"""A 2 x 2 sweep over alpha and latent_dim trains exactly two GANs, and a rerun trains none."""

import csv
import json

from anogan.sweep import aggregate_seeds, run_name, swept_keys
from conftest import tiny_overrides
from test_train_e2e import run_train


def sweep(tiny_cifar, log_dir, sweep_dir):
    overrides = [o for o in tiny_overrides(tiny_cifar) if not o.startswith("model.latent_dim")]
    return run_train(
        ["-m", *overrides, "mapping.alpha=0.1,0.9", "model.latent_dim=8,16", f"paths.log_dir={log_dir}", f"hydra.sweep.dir={sweep_dir}"]
    )


def test_sweep_reuses_gans_and_writes_a_summary(tiny_cifar, tmp_path):
    proc = sweep(tiny_cifar, tmp_path, tmp_path / "sweep1")
    cache = [p for p in (tmp_path / "gan_cache").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(cache) == 2  # one GAN per latent_dim
    jobs = sorted(p.name for p in (tmp_path / "sweep1").iterdir() if (p / "metrics.json").is_file())
    assert jobs == ["alpha=0.1,latent_dim=16", "alpha=0.1,latent_dim=8", "alpha=0.9,latent_dim=16", "alpha=0.9,latent_dim=8"]
    sources = [json.loads((tmp_path / "sweep1" / j / "metrics.json").read_text())["gan_source"] for j in jobs]
    assert sorted(s == "trained" for s in sources) == [False, False, True, True]
    with open(tmp_path / "sweep1" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["alpha"] for r in rows} == {"0.1", "0.9"}
    assert all(0 <= float(r["test_auroc"]) <= 1 for r in rows)
    assert "**best**" in (tmp_path / "sweep1" / "summary.md").read_text()
    assert "test_auroc" in proc.stdout  # printed at the end

    sweep(tiny_cifar, tmp_path, tmp_path / "sweep2")  # same GAN settings: nothing trained again
    sources = [json.loads(p.read_text())["gan_source"] for p in (tmp_path / "sweep2").glob("*/metrics.json")]
    assert len(sources) == 4 and all(s.startswith("cache") for s in sources)
    assert len([p for p in (tmp_path / "gan_cache").iterdir() if p.is_dir()]) == 2


def test_run_name_shows_the_swept_keys_only():
    dirname = "data.image_size=32,mapping.alpha=0.1,model.latent_dim=64"
    swept = swept_keys(["data.image_size=32", "mapping.alpha=0.1,0.5", "model.latent_dim=range(64,129,64)"])
    assert swept == {"mapping.alpha", "model.latent_dim"}
    assert run_name(dirname, swept) == "alpha=0.1,latent_dim=64"
    assert run_name("+gan.checkpoint=a/b", set()) == "checkpoint=a_b" and run_name("", set()) == "default"


def test_seed_aggregation():
    rows = [
        {"alpha": "0.1", "seed": s, "test_auroc": a, "test_ap": 0.5, "test_f1": 0.5, "job": str(s)}
        for s, a in ((0, 0.6), (1, 0.7), (2, 0.8))
    ]
    (agg,) = aggregate_seeds(rows)
    assert abs(agg["test_auroc_mean"] - 0.7) < 1e-12 and abs(agg["test_auroc_std"] - 0.1) < 1e-12 and agg["seeds"] == 3


def test_results_sweep_writes_a_per_class_table_with_published_columns(tiny_cifar, tmp_path):
    run_train(
        ["hparams_search=classes", *tiny_overrides(tiny_cifar), "data.normal_class=1,8", "seed=0",
         f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'results'}"]
    )
    with open(tmp_path / "results" / "seeds_summary.csv") as f:
        rows = {r["normal_class"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["automobile", "ship"]
    assert float(rows["automobile"]["published_anogan"]) == 0.547 and float(rows["ship"]["published_deep_svdd"]) == 0.759
    assert all(r["seeds"] == "1" and 0 <= float(r["test_auroc_mean"]) <= 1 for r in rows.values())
    assert (tmp_path / "results" / "normal_class=1,seed=0" / "metrics.json").is_file()
