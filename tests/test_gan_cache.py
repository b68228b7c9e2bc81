"""The GAN cache: a damaged entry (truncated weights, no gan.json, another key) is moved aside and
the GAN trained again; the key changes with the training code and the world size."""

import json
import re

from anogan import gan_store
from conftest import compose_config, run_train, tiny_overrides


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
    key, spec = gan_store.cache_key(cfg)
    assert spec["world_size"] == 1 and len(spec["code"]) == 12
    ddp = compose_config(["data.root=/data", "trainer.default_root_dir=/run", "trainer=ddp", "trainer.num_nodes=2", "trainer.accelerator=cpu"])
    assert gan_store.cache_key(ddp)[1]["world_size"] == 4 and gan_store.cache_key(ddp)[0] != key
    source = tmp_path / "models" / "gan.py"
    source.parent.mkdir()
    source.write_text("# edited training code\n")
    monkeypatch.setattr(gan_store, "PACKAGE_DIR", tmp_path)
    assert gan_store.cache_key(cfg)[0] != key
