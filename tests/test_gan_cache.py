"""The GAN cache: a damaged entry (truncated weights, no gan.json, another key) is moved aside and
the GAN trained again; the key changes with the training code and the world size. The encoder
cache: trained once, reused across search settings, retrained when damaged."""

import json
import logging
import re
from types import SimpleNamespace

import pytest
import torch

import anogan.scorers.latent as latent
from anogan.engine import gan_cache
from conftest import compose_config, read_scores, run_train, tiny_overrides, train_in_process


def entries(cache):
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".") and ".broken-" not in p.name)


def test_damaged_cache_entries_are_set_aside_and_retrained(tiny_cifar, tmp_path):
    overrides = tiny_overrides(tiny_cifar, tmp_path)
    run_train(overrides)
    cache = tmp_path / "gan_cache"
    (entry,) = entries(cache)
    generator = entry / "generator.pt"
    generator.write_bytes(generator.read_bytes()[:100])  # truncated

    for i, damage in enumerate(("truncated generator.pt", "no gan.json")):
        proc = run_train([*overrides, f"hydra.run.dir={tmp_path}/run{i}"])  # a new run folder each time
        log = proc.stdout + proc.stderr
        assert re.search(r"damaged GAN cache entry .* moved to .*\.broken-", log), (damage, log[-2000:])
        assert "cached as" in log
        assert json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())["gan_source"] == "trained"
        (entry,) = entries(cache)
        assert (entry / "gan.json").is_file()
        (entry / "gan.json").unlink()  # the next damage
    assert len(list(cache.glob("*.broken-*"))) == 2


def test_cache_key_covers_code_version_and_world_size(tmp_path, monkeypatch):
    cfg = compose_config(["data.root=/data", "trainer.default_root_dir=/run"])
    key, spec = gan_cache.cache_key(cfg)
    assert spec["world_size"] == 1 and len(spec["code"]) == 12
    ddp = compose_config(
        ["data.root=/data", "trainer.default_root_dir=/run", "trainer=ddp", "trainer.num_nodes=2", "trainer.accelerator=cpu"]
    )
    assert gan_cache.cache_key(ddp)[1]["world_size"] == 4 and gan_cache.cache_key(ddp)[0] != key
    source = tmp_path / "models" / "gan.py"
    source.parent.mkdir()
    source.write_text("# edited training code\n")
    monkeypatch.setattr(gan_cache, "PACKAGE_DIR", tmp_path)
    assert gan_cache.cache_key(cfg)[0] != key


def test_cache_key_hashes_what_the_gan_module_imports(tmp_path, monkeypatch):
    """Issue 26 §1: an edit to models/augment.py (DiffAugment) or engine/selection.py (checkpoint selection, a
    callback the pipeline attaches to the GAN's training) trains a new GAN; an edit to a module the GAN's
    training never imports (the report) does not."""
    import shutil

    package = tmp_path / "anogan"
    shutil.copytree(gan_cache.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(gan_cache, "PACKAGE_DIR", package)
    closure = {p.relative_to(package).as_posix() for p in gan_cache.import_closure([package / "models" / "gan.py"])}
    assert {"models/gan.py", "models/dcgan.py", "models/augment.py", "utils/errors.py"} <= closure
    assert "reporting/report.py" not in closure and "cli/predict.py" not in closure
    assert "engine/selection.py" not in closure and "engine/selection.py" in gan_cache.TRAINING_CODE  # models/ does not import it
    before = gan_cache.training_code_version()
    for name in ("models/augment.py", "engine/selection.py"):
        (package / name).write_text((package / name).read_text() + "\n# edited\n")
        after = gan_cache.training_code_version()
        assert after != before, name
        before = after
    (package / "reporting/report.py").write_text((package / "reporting/report.py").read_text() + "\n# edited\n")
    assert gan_cache.training_code_version() == before


def test_cache_key_keeps_val_subset_when_selection_picks_the_epoch():
    """Issue 26 §1: checkpoint selection chooses the epoch on data.val_subset's rows, so the subset is part
    of the GAN's key when selection is on, and only then."""

    def key(*overrides):
        return gan_cache.cache_key(compose_config(["data.root=/data", "trainer.default_root_dir=/run", *overrides]))[0]

    off = ["model.selection.every_n_epochs=null"]
    assert key(*off, "data.val_subset=100") == key(*off, "data.val_subset=200")
    on = ["model.selection.every_n_epochs=5"]
    assert key(*on, "data.val_subset=100") != key(*on, "data.val_subset=200")
    assert key(*on, "data.test_subset=100") == key(*on, "data.test_subset=200")


def test_encoder_cache_key_covers_what_changes_the_encoder(tmp_path):
    """The key moves with the GAN's weights, the training images and the encoder's settings, not
    with the search settings or the evaluation subsets (a sweep over those reuses the encoder)."""

    def key(overrides=(), settings=None, g_bias=0.0):
        cfg = compose_config(["data.root=/data", "trainer.default_root_dir=/run", *overrides])
        g, d = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
        torch.nn.init.constant_(g.weight, 1.0)
        torch.nn.init.constant_(g.bias, g_bias)
        torch.nn.init.constant_(d.weight, 2.0)
        torch.nn.init.constant_(d.bias, 0.0)
        settings = settings or {"width": 8, "kappa": 1.0, "epochs": 20, "lr": 1e-4, "betas": [0.5, 0.999], "seed": 0}
        return gan_cache.encoder_cache_key(cfg, SimpleNamespace(generator=g, discriminator=d, fit_settings=lambda: settings))

    base = key()
    assert key(["data.test_subset=17", "mapping.iterations=3", "data.num_workers=3"]) == base
    assert key(g_bias=1e-3) != base
    assert key(["data.normal_class=3"]) != base
    assert key(["trainer.precision=bf16-mixed"]) != base
    assert key(settings={"width": 8, "kappa": 1.0, "epochs": 21, "lr": 1e-4, "betas": [0.5, 0.999], "seed": 0}) != base
    assert key(settings={"width": 8, "kappa": 1.0, "epochs": 20, "lr": 1e-4, "betas": [0.5, 0.999], "seed": 1}) != base


def test_encoder_is_trained_once_then_reused_and_a_damaged_entry_retrained(tiny_cifar, tmp_path, monkeypatch, caplog):
    overrides = tiny_overrides(tiny_cifar, tmp_path, mapping="encoder_search")
    train_in_process(overrides)
    (entry,) = (tmp_path / "gan_cache" / "encoders").glob("*.pt")
    first = {r["id"]: r["score"] for r in read_scores(tmp_path / "run")[0]}

    real = latent.train_encoder

    def refuse(*args, **kwargs):
        raise AssertionError("the cached encoder should have been used")

    monkeypatch.setattr(latent, "train_encoder", refuse)
    with caplog.at_level(logging.INFO, logger="anogan"):
        train_in_process([*overrides, f"hydra.run.dir={tmp_path}/run2"])  # same settings: same scores
        train_in_process([*overrides, "mapping.iterations=3", f"hydra.run.dir={tmp_path}/run3"])  # search settings only
    assert sum("reusing the cached encoder" in r.getMessage() for r in caplog.records) == 2
    assert {r["id"]: r["score"] for r in read_scores(tmp_path / "run2")[0]} == first

    monkeypatch.setattr(latent, "train_encoder", real)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="anogan"):
        train_in_process([*overrides, f"hydra.run.dir={tmp_path}/run4"])
        train_in_process([*overrides, "mapping.encoder.epochs=2", f"hydra.run.dir={tmp_path}/run5"])  # another encoder
    messages = [r.getMessage() for r in caplog.records]
    assert any("damaged encoder cache entry" in m for m in messages)
    assert sum("trained the encoder, cached as" in m for m in messages) == 2
    assert len(list((tmp_path / "gan_cache" / "encoders").glob("*.pt"))) == 2
    assert torch.load(entry, weights_only=True)["key"] == entry.stem


def test_cached_loads_or_builds_and_publishes_and_only_the_owner_locks(tmp_path):
    """gan_cache.cached, the one protocol of the GAN and encoder caches: a hit is returned without
    building; a miss is built and published by the owner (rank 0) under the key's lock; another DDP
    rank neither waits for that lock (rank 0 holds it while training with it) nor publishes."""
    import filelock

    calls = []

    def run(found, owner=True):
        return gan_cache.cached(
            "k",
            load=lambda: calls.append("load") or found,
            build=lambda: calls.append("build") or "built",
            publish=lambda value: calls.append(f"publish {value}"),
            lock_dir=tmp_path,
            owner=owner,
        )

    assert run("entry") == ("entry", True) and calls == ["load"]
    assert (tmp_path / "k.lock").exists()
    calls.clear()
    assert run(None) == ("built", False) and calls == ["load", "build", "publish built"]
    calls.clear()
    with filelock.FileLock(str(tmp_path / "k.lock"), timeout=0):  # rank 0 holds the lock, training
        assert run(None, owner=False) == ("built", False) and calls == ["load", "build"]
        with pytest.raises(filelock.Timeout):  # the lock is really held: an owner would have waited
            filelock.FileLock(str(tmp_path / "k.lock"), timeout=0).acquire()
