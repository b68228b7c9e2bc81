"""Sweeps: a 2 x 2 sweep trains exactly two GANs (a rerun none), job folders are unique for any
override (paths, lists), summaries select on validation, Optuna and the launcher presets."""

import csv
import json
import shutil
import statistics

import pytest
import yaml
from omegaconf import OmegaConf

from anogan.reporting.sweep import job_threads, parse_optimized_metric, run_name, summarize, sweep_keys
from anogan.reporting.sweep_table import aggregate_seeds
from anogan.utils.errors import UserError
from conftest import compose_config, run_train, tiny_overrides


def sweep(tiny_cifar, log_dir, sweep_dir):
    overrides = [o for o in tiny_overrides(tiny_cifar) if not o.startswith("model.latent_dim")]
    return run_train(
        [
            "-m",
            *overrides,
            "mapping.alpha=0.1,0.9",
            "model.latent_dim=8,16",
            f"paths.log_dir={log_dir}",
            f"hydra.sweep.dir={sweep_dir}",
        ]
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
    assert (tmp_path / "sweep1" / "summary.png").read_bytes()[:4] == b"\x89PNG"  # alpha x latent_dim heatmap
    sessions = hparams_sessions(tmp_path / "sweep1")
    assert sorted(sessions) == jobs  # every job is a row of TensorBoard's HPARAMS table
    keys = {name: set(hparams) for name, (hparams, _) in sessions.items()}
    assert len({frozenset(k) for k in keys.values()}) == 1 and {"mapping/alpha", "latent_dim"} <= keys[jobs[0]]
    for name, (hparams, values) in sessions.items():
        m = json.loads((tmp_path / "sweep1" / name / "metrics.json").read_text())
        assert values["hparams/val_auroc"] == pytest.approx(m["val"]["auroc"])  # the real validation metric
        assert set(values) == {f"hparams/{s}_{k}" for s in ("val", "test") for k in ("auroc", "ap", "f1")}
        assert f"alpha={hparams['mapping/alpha']:g},latent_dim={hparams['latent_dim']:g}" == name

    sweep(tiny_cifar, tmp_path, tmp_path / "sweep2")  # same GAN settings: nothing trained again
    sources = [json.loads(p.read_text())["gan_source"] for p in (tmp_path / "sweep2").glob("*/metrics.json")]
    assert len(sources) == 4 and all(s.startswith("cache") for s in sources)
    assert len([p for p in (tmp_path / "gan_cache").iterdir() if p.is_dir()]) == 2


def hparams_sessions(sweep_dir):
    """What TensorBoard's HPARAMS tab reads from a sweep folder: per job (folder name) its session's
    hyperparameters and the values of the metrics the experiment declares."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(sweep_dir))
    mux.Reload()
    sessions = {}
    for run, tags in mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        for content in tags.values():
            plugin = plugin_data_pb2.HParamsPluginData.FromString(content)
            if plugin.HasField("session_start_info"):
                hparams = {
                    k: v.number_value if v.HasField("number_value") else v.string_value
                    for k, v in plugin.session_start_info.hparams.items()
                }
                scalars = {
                    t: mux.Scalars(run, t)[-1].value
                    for t in mux.GetAccumulator(run).Tags()["scalars"]
                    if t.startswith("hparams/")
                }
                sessions[run.split("/")[0]] = (hparams, scalars)
    return sessions


def test_run_name_shows_the_swept_keys_only():
    overrides = ["data.image_size=32", "mapping.alpha=0.1", "model.latent_dim=64"]
    swept = sweep_keys(["data.image_size=32", "mapping.alpha=0.1,0.5", "model.latent_dim=range(64,129,64)"], {"seed": "0,1"})
    assert swept == {"mapping.alpha", "model.latent_dim", "seed"}
    assert run_name(overrides, [], swept) == "alpha=0.1,latent_dim=64"
    assert run_name([], [], set()) == "default"


def test_run_names_are_unique_and_valid_for_paths_lists_and_unknown_sweeps():
    safe = lambda name: name and "/" not in name and "[" not in name and len(name) <= 90  # noqa: E731
    a, b = (run_name([f"data.root={r}"], ["data.root"], {"data.root"}) for r in ("/x/a/b", "/x/c/b"))
    assert a != b and safe(a) and safe(b) and a.startswith("root=a_b-")
    lists = [run_name([f"data.abnormal_dir={v}"], [], {"data.abnormal_dir"}) for v in ("[crack,scratch]", "crack+scratch")]
    assert lists[0] != lists[1] and lists[0].startswith("abnormal_dir=crack+scratch-") and all(map(safe, lists))
    # swept keys unknown: excluded keys are left out, but a hash of all overrides keeps jobs apart
    c, d = (run_name([f"data.root={r}", "mapping.alpha=0.1"], ["data.root"], set()) for r in ("/a", "/b"))
    assert c != d and c.startswith("alpha=0.1-")
    long = run_name([f"data.k{i}=value{i}" for i in range(20)], [], None)
    assert len(long) == 87 and safe(long)
    # two keys that end alike stay in full
    assert run_name(["data.root=x", "paths.root=y"], [], {"data.root", "paths.root"}) == "data.root=x,paths.root=y"


def test_optimized_metric_names_a_split_and_a_metric():
    assert parse_optimized_metric("val/auroc") == ("val", "auroc")
    assert parse_optimized_metric("test/ap", allow_test=True) == ("test", "ap")
    for bad in ("auroc", "train/auroc", "val/auc"):
        with pytest.raises(UserError, match="optimized_metric="):
            parse_optimized_metric(bad)
    cfg = compose_config([])
    assert cfg.optimized_metric == "val/auroc" and cfg.allow_test_objective is False


def test_a_test_metric_is_refused_as_the_sweep_objective_unless_allowed():
    """Issue 26 §5: optimized_metric=test/... picks settings on the test split; only the documented switch
    allow_test_objective=true lets it through (today: accepted silently)."""
    with pytest.raises(UserError, match=r"optimized_metric=test/auroc .*test split.*allow_test_objective=true") as err:
        parse_optimized_metric("test/auroc")
    assert "\n" not in str(err.value) and "optimized_metric=val/auroc" in str(err.value)
    cfg = compose_config(["optimized_metric=test/auroc", "allow_test_objective=true"])
    assert parse_optimized_metric(cfg.optimized_metric, cfg.allow_test_objective) == ("test", "auroc")


def test_threads_setting():
    assert job_threads(OmegaConf.create({"threads": None})) is None
    assert job_threads(OmegaConf.create({"threads": 3})) == 3
    assert job_threads(OmegaConf.create({"threads": "auto"})) >= 1  # outside a Hydra job: all usable cores
    with pytest.raises(UserError, match="threads="):
        job_threads(OmegaConf.create({"threads": 0}))


def test_launcher_presets_compose():
    local = compose_config(["launcher=local_parallel"])
    assert (
        local.hydra.launcher._target_.endswith("JoblibLauncher") and local.threads == "auto" and local.hydra.launcher.n_jobs == 2
    )
    slurm = compose_config(["launcher=slurm", "hydra.launcher.partition=gpu"])
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.partition == "gpu"
    optuna = compose_config(["hparams_search=optuna"])
    assert optuna.hydra.sweeper.direction == "maximize" and optuna.hydra.sweeper.sampler.seed == 0


def test_seed_aggregation():
    rows = [
        {"alpha": "0.1", "seed": s, "test_auroc": a, "test_ap": 0.5, "test_f1": 0.5, "job": str(s)}
        for s, a in ((0, 0.6), (1, 0.7), (2, 0.8))
    ]
    (agg,) = aggregate_seeds(rows)
    assert abs(agg["test_auroc_mean"] - 0.7) < 1e-12 and abs(agg["test_auroc_std"] - 0.1) < 1e-12 and agg["seeds"] == 3


def test_seed_aggregation_keeps_the_order_of_settings_and_exact_means():
    def row(alpha, seed, test, ap=0.5, wall=10.0, name="ship"):
        return {"alpha": alpha, "normal_class": name, "seed": seed, "test_auroc": test, "test_ap": ap, "wall_time_s": wall}

    rows = [
        row("0.9", "0", 0.1),
        row("0.1", "0", 0.7, wall=None),
        {"alpha": "0.9", "seed": "1", "job": "x", "status": "unfinished"},  # no result: left out
        row("0.9", "1", 0.2, ap=None),  # a seed without AP: the setting has no AP mean
        row("0.1", "1", 0.3, name="automobile"),  # another class: another setting
        row("0.9", "2", 0.4),
    ]
    a, b, c = aggregate_seeds(rows)
    assert [(r["alpha"], r["normal_class"], r["seeds"]) for r in (a, b, c)] == [
        ("0.9", "ship", 3),
        ("0.1", "ship", 1),
        ("0.1", "automobile", 1),
    ]
    assert a["test_auroc_mean"] == statistics.fmean([0.1, 0.2, 0.4]) and a["test_auroc_std"] == statistics.stdev([0.1, 0.2, 0.4])
    assert "test_ap_mean" not in a and b["test_ap_mean"] == 0.5 and b["test_auroc_std"] == 0.0
    assert b["wall_time_s_mean"] == 0.0 and a["wall_time_s_mean"] == 10.0  # no wall time counts as 0
    assert a["published_anogan"] == 0.758 and c["published_deep_svdd"] == 0.659
    assert list(a)[:2] == ["alpha", "normal_class"] and all(
        type(v) is float for k, v in a.items() if k.endswith(("_mean", "_std"))
    )
    assert aggregate_seeds([{"alpha": "0.1", "job": "x", "status": "unfinished"}]) == []


def test_results_sweep_writes_a_per_class_table_with_published_columns(tiny_cifar, tmp_path):
    run_train(
        [
            "hparams_search=classes",
            *tiny_overrides(tiny_cifar),
            "data.normal_class=1,8",
            "seed=0",
            f"paths.log_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path / 'results'}",
        ]
    )
    with open(tmp_path / "results" / "seeds_summary.csv") as f:
        rows = {r["normal_class"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["automobile", "ship"]
    assert float(rows["automobile"]["published_anogan"]) == 0.547 and float(rows["ship"]["published_deep_svdd"]) == 0.759
    assert all(r["seeds"] == "1" and 0 <= float(r["test_auroc_mean"]) <= 1 for r in rows.values())
    assert (tmp_path / "results" / "normal_class=1,seed=0" / "metrics.json").is_file()


def test_summary_marks_the_best_by_validation_and_shows_intervals(tmp_path):
    for name, val, test in (("a", 0.9, 0.6), ("b", 0.7, 0.8)):
        job = tmp_path / name
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"mapping.alpha={val}"]))
        (job / ".hydra" / "config.yaml").write_text("data: {}\n")
        metrics = {
            "val": {"auroc": val, "ap": 0.5, "f1": 0.5, "auroc_ci": [val - 0.05, val + 0.05]},
            "test": {"auroc": test, "ap": 0.5, "f1": 0.5, "auroc_ci": [0.69, 0.73], "ap_ci": [0.4, 0.6]},
            "test_components_auroc": {"random_baseline": 0.5, "random_baseline_interval": [0.45, 0.55]},
            "threshold": {"f1": 1.0},
        }
        (job / "metrics.json").write_text(json.dumps(metrics))
    text = summarize(tmp_path)
    best = next(line for line in text.splitlines() if line.endswith("| **best** |"))
    assert "| 0.9 |" in best  # validation 0.9 beats validation 0.7, whatever test says
    assert "0.6000 [0.69, 0.73]" in best and "0.5000 [0.45, 0.55]" in best
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["test_auroc_ci_low"]) == 0.69 and rows[0]["val_auroc"] == "0.9"


def test_run_only_overrides_are_not_settings(tmp_path):
    # A seed sweep finished in two calls, one with the parallel launcher: still one setting, 2 seeds.
    for seed, extra in ((0, []), (1, ["launcher=local_parallel", "threads=1"])):
        job = tmp_path / f"seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", *extra]))
        (job / ".hydra" / "config.yaml").write_text("data: {}\n")
        (job / "metrics.json").write_text(json.dumps({"val": {"auroc": 0.6 + seed / 10}, "test": {"auroc": 0.6}}))
    summarize(tmp_path)
    with open(tmp_path / "summary.csv") as f:
        header = next(csv.reader(f))
    assert "seed" in header and "launcher" not in header and "threads" not in header
    with open(tmp_path / "seeds_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["seeds"] == "2"


def test_seeds_summary_averages_the_difference_to_the_complexity_baseline(tmp_path):
    """Each run's test AUROC minus the complexity-only baseline's (metrics.json
    versus_complexity_baseline) is a result column, averaged over seeds with its std."""
    for seed, diff in ((0, 0.02), (1, 0.04), (2, -0.01)):
        job = tmp_path / f"seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
        (job / ".hydra" / "config.yaml").write_text("data: {}\n")
        versus = {
            "test": {
                "auroc": 0.7 + diff,
                "auroc_complexity_only": 0.7,
                "difference": diff,
                "ci": [diff - 0.03, diff + 0.03],
                "p_value": 0.2,
            }
        }
        (job / "metrics.json").write_text(
            json.dumps({"val": {"auroc": 0.6}, "test": {"auroc": 0.7 + diff}, "versus_complexity_baseline": versus})
        )
    summarize(tmp_path)
    with open(tmp_path / "summary.csv") as f:
        rows = {r["seed"]: r for r in csv.DictReader(f)}
    assert float(rows["1"]["test_auroc_minus_complexity_only"]) == 0.04
    assert abs(float(rows["2"]["test_auroc_minus_complexity_only_ci_low"]) + 0.04) < 1e-12
    with open(tmp_path / "seeds_summary.csv") as f:
        (agg,) = list(csv.DictReader(f))
    assert agg["seeds"] == "3" and abs(float(agg["test_auroc_minus_complexity_only_mean"]) - 0.05 / 3) < 1e-12
    assert abs(float(agg["test_auroc_minus_complexity_only_std"]) - statistics.stdev([0.02, 0.04, -0.01])) < 1e-12


def test_summary_shortens_long_setting_values_in_markdown_only(tmp_path):
    for i, lr in enumerate(("0.04734989304499478", "0.001")):
        job = tmp_path / f"{i}_lr"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"mapping.lr={lr}", "data.root=/a/b.c/d"]))
        (job / ".hydra" / "config.yaml").write_text("data: {}\n")
        (job / "metrics.json").write_text(json.dumps({"val": {"auroc": 0.6}, "test": {"auroc": 0.6}}))
    text = summarize(tmp_path)
    assert "| 0.04735 |" in text and "| 0.001 |" in text and "0.0473498" not in text
    with open(tmp_path / "summary.csv") as f:
        assert {r["lr"] for r in csv.DictReader(f)} == {"0.04734989304499478", "0.001"}


def test_sweep_over_paths_and_lists_writes_one_folder_per_job(tiny_cifar, tmp_path):
    """data.root is an excluded key and a path, mapping.betas a list: 2 x 2 jobs, 4 folders, run
    side by side by the local parallel launcher (names and threads in its worker processes)."""
    copy = shutil.copytree(tiny_cifar, tmp_path / "copy" / "cifar")
    overrides = [o for o in tiny_overrides(tiny_cifar) if not o.startswith("data.root")]
    run_train(
        [
            "-m",
            "launcher=local_parallel",
            *overrides,
            f"data.root={tiny_cifar},{copy}",
            "mapping.betas=[0.9,0.999],[0.5,0.99]",
            f"paths.log_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ]
    )
    jobs = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert len(jobs) == 4 and all(j.startswith("root=") and ",betas=0." in j for j in jobs), jobs
    with open(tmp_path / "sweep" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and len({(r["root"], r["betas"]) for r in rows}) == 4
    assert "torch CPU threads: 1 (threads=auto)" in (tmp_path / "sweep" / jobs[0] / "train.log").read_text()


def test_optuna_sweep_optimises_the_validation_metric(tiny_cifar, tmp_path):
    overrides = [
        o
        for o in tiny_overrides(tiny_cifar)
        if not o.startswith(("model.latent_dim", "trainer.max_epochs", "mapping.iterations"))
    ]
    run_train(
        [
            "hparams_search=optuna",
            *overrides,
            "hydra.sweeper.n_trials=3",
            "model.latent_dim=choice(8,16)",
            "trainer.max_epochs=1",
            "mapping.iterations=choice(2,3)",
            f"paths.log_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path / 'optuna'}",
        ]
    )
    found = yaml.safe_load((tmp_path / "optuna" / "optimization_results.yaml").read_text())
    with open(tmp_path / "optuna" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["job"].startswith(("0_", "1_", "2_")) for r in rows)
    assert abs(found["best_value"] - max(float(r["val_auroc"]) for r in rows)) < 1e-9  # what Optuna maximised: validation
    assert set(found["best_params"]) == {"mapping.alpha", "mapping.iterations", "mapping.lr", "model.latent_dim"}
    for row in rows:  # each trial returned its validation AUROC
        assert f"val/auroc = {float(row['val_auroc']):.4f}" in (tmp_path / "optuna" / row["job"] / "train.log").read_text()
    assert "Optuna (optimization_results.yaml)" in (tmp_path / "optuna" / "summary.md").read_text()
